"""What BaseCache gives every backend: errors, timeouts, signing, memoize, NullCache, laziness."""

from __future__ import annotations

import hashlib
import hmac
import importlib
import inspect
import logging
import pickle
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from interpreter import run_python

import cacheplug
from cacheplug import (
    BaseCache,
    CacheplugError,
    ConfigurationError,
    FileSystemCache,
    NullCache,
    PluginError,
    PluginLoadWarning,
    SerializationError,
    SimpleCache,
)
from cacheplug.core.memoize import Memoized
from cacheplug.core.signing import PayloadSigner
from cacheplug.core.timeouts import Timeout, normalize_timeout
from cacheplug.testing import CacheContract, CacheFactory


def test_error_tree() -> None:
    assert issubclass(ConfigurationError, CacheplugError)
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(PluginError, CacheplugError)
    assert issubclass(SerializationError, CacheplugError)
    assert issubclass(SerializationError, pickle.PickleError)
    assert issubclass(PluginLoadWarning, UserWarning)


def test_public_names_are_exported() -> None:
    for name in cacheplug.__all__:
        assert getattr(cacheplug, name) is not None, name
    assert sorted(dir(cacheplug)) == sorted(cacheplug.__all__)
    with pytest.raises(AttributeError):
        _ = cacheplug.NoSuchThing


def loaded_after(statements: str, watched: list[str]) -> list[str]:
    """Which of ``watched`` (and which ``cacheplug.*`` modules) a fresh interpreter has loaded."""
    code = (
        f"import sys; {statements}; "
        f"print(','.join([m for m in {watched!r} if m in sys.modules] + "
        f"[m for m in sys.modules if m.startswith('cacheplug.')]))"
    )
    return [name for name in run_python(code).strip().split(",") if name]


def test_import_is_cheap() -> None:
    heavy = ["importlib.metadata", "msgpack", "orjson", "pluggy", "redis", "pymemcache"]
    assert loaded_after("import cacheplug", heavy) == []


def test_simple_cache_use_does_not_load_engine_drivers() -> None:
    loaded = loaded_after(
        "from cacheplug import from_url; from_url('simple://').set('k', 1)",
        ["redis", "pymemcache"],
    )
    assert "cacheplug.backends.simple" in loaded
    assert not {"redis", "pymemcache"} & set(loaded)


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [(None, 300), (0, 0), (5, 5), (2.5, 2.5), (-1, -1), (timedelta(minutes=2), 120)],
)
def test_normalize_timeout(timeout: Any, expected: float) -> None:
    assert normalize_timeout(timeout, 300) == expected


@pytest.mark.parametrize("timeout", ["5", True, [5], object()])
def test_normalize_timeout_rejects_non_numbers(timeout: Any) -> None:
    with pytest.raises(TypeError, match="timeout must be None, 0"):
        normalize_timeout(timeout, 300)


@pytest.mark.parametrize("default_timeout", [-1, "300"])
def test_bad_default_timeout(default_timeout: Any) -> None:
    with pytest.raises((ConfigurationError, TypeError), match="timeout"):
        SimpleCache(default_timeout=default_timeout)


def test_base_cache_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        BaseCache()  # type: ignore[abstract]


# -- signing -------------------------------------------------------------------------------


class Record:
    """A custom object: it always goes through the serializer."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and other.name == self.name

    __hash__ = None  # type: ignore[assignment]


@settings(max_examples=300, deadline=None)
@given(secret=st.binary(min_size=1, max_size=200), data=st.binary(max_size=300))
def test_payload_signer_is_hmac_sha256(secret: bytes, data: bytes) -> None:
    assert PayloadSigner(secret).sign(data) == hmac.digest(secret, data, "sha256")


def test_signed_entries_round_trip() -> None:
    cache = SimpleCache(secret="s3cret")
    cache.set("k", Record("ada"))
    assert cache.get("k") == Record("ada")


@pytest.mark.parametrize("serializer", ["pickle", "json", "msgpack"])
def test_signed_entries_of_every_serializer_verify(serializer: str) -> None:
    value = {"id": 1, "tags": ["a", "b"], "profile": {"age": 36}}  # nested: serialized
    writer = SimpleCache(secret="one", serializer=serializer)
    reader = SimpleCache(secret="two", serializer=serializer)
    writer.set("k", value)
    assert writer.get("k") == value
    reader._cache["k"] = writer._cache["k"]
    assert reader.get("k") is None
    assert reader.stats()["errors"] == 1
    with pytest.raises(TypeError, match="unreadable"):
        reader.inc("k")
    with pytest.raises(TypeError, match="'k'"):
        writer.inc("k")  # readable, but not an integer
    assert writer.get("k") == value


def test_entry_signed_with_another_secret_is_a_miss() -> None:
    writer, reader = SimpleCache(secret="one"), SimpleCache(secret="two")
    writer.set("k", Record("ada"))
    # Move the stored entry, as a shared store would, into the other cache.
    reader._cache["k"] = writer._cache["k"]
    assert reader.get("k") is None
    assert reader.stats()["errors"] == 1


def test_tampered_entry_is_a_miss_and_never_unpickled(tmp_path: Any) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    cache = SimpleCache(secret="s3cret")
    cache.set("k", Record("ada"))
    expires, codec, (signature, _) = cache._cache["k"]
    cache._cache["k"] = (expires, codec, (signature, pickle.dumps(Exploit())))
    assert cache.get("k") is None
    assert not marker.exists()
    assert cache.stats()["errors"] == 1
    # Without a signature check the same bytes do run: the test above can fail.
    unsigned = SimpleCache()
    unsigned.set("k", Record("ada"))
    expires, codec, _ = unsigned._cache["k"]
    unsigned._cache["k"] = (expires, codec, pickle.dumps(Exploit()))
    unsigned.get("k")
    assert marker.exists()


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEPLUG_SECRET", "from-env")
    cache = SimpleCache()
    cache.set("k", Record("x"))
    signature, data = cache._cache["k"][2]
    assert data == pickle.dumps(Record("x"), pickle.HIGHEST_PROTOCOL)
    assert signature == hmac.digest(b"from-env", data, "sha256")


def test_secret_never_in_repr() -> None:
    cache = SimpleCache(secret="hunter2-secret")
    assert "hunter2" not in repr(cache)
    assert "hunter2" not in str(cache)
    assert "signed=True" in repr(cache)


def test_unreadable_entry_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    writer, reader = SimpleCache(secret="one"), SimpleCache(secret="two")
    writer.set("k", Record("ada"))
    reader._cache["k"] = writer._cache["k"]
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        for _ in range(5):
            assert reader.get("k") is None
    assert len(caplog.records) == 1
    assert "unreadable entry 'k'" in caplog.records[0].getMessage()
    assert reader.stats()["errors"] == 5


# -- memoize --------------------------------------------------------------------------------


def test_stacked_memoize_keeps_each_its_own_cache() -> None:
    """A local cache in front of a shared one: the outer wrapper took the inner one's cache."""
    local, shared = SimpleCache(), SimpleCache()
    calls: list[int] = []

    @local.memoize(timeout=5, key_prefix="local")
    @shared.memoize(timeout=300)
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    assert (double(1), double(1)) == (2, 2)
    assert calls == [1]
    inner: Memoized[[int], int] = double.uncached  # type: ignore[assignment]
    assert (double.cache, double.timeout, inner.cache) == (local, 5, shared)
    assert (len(local), len(shared)) == (1, 1)
    assert double.cache_key(1).startswith("local")
    shared.clear()
    assert double(1) == 2 and calls == [1]  # the local entry answers
    local.clear()
    assert double(1) == 2 and calls == [1, 1]
    assert double.invalidate(1) and local.get(double.cache_key(1)) is None
    assert shared.get(inner.cache_key(1)) == 2


def test_memoize_keys_are_stable_and_distinct() -> None:
    cache = SimpleCache()

    @cache.memoize()
    def f(a: int, b: str = "x") -> str:
        return f"{a}{b}"

    assert f.cache_key(1) == f.cache_key(1, "x") == f.cache_key(a=1, b="x")
    assert f.cache_key(1) != f.cache_key(2)
    assert f.cache_key(1).startswith("memoize:test_base.")
    assert f.__name__ == "f"
    assert f.uncached(3) == "3x"


def test_memoize_key_is_the_digest_of_the_bound_arguments_repr() -> None:
    @SimpleCache().memoize()
    def f(a: int, b: object = None) -> int:
        return a

    text = repr(sorted({"a": 1, "b": ["x", {"y": 2}]}.items())).encode()
    digest = hashlib.blake2b(text, digest_size=16).hexdigest()
    assert f.cache_key(1, ["x", {"y": 2}]).endswith(f":{digest}")


def test_memoize_equal_sets_and_dicts_in_any_order_are_one_call() -> None:
    cache, calls = SimpleCache(), []

    @cache.memoize()
    def f(tags: object, options: object = None) -> int:
        calls.append(tags)
        return len(calls)

    first = f({"b", "a", "c"}, {"x": 1, "y": frozenset({3, 1})})
    assert f({"c", "a", "b"}, {"y": frozenset({1, 3}), "x": 1}) == first
    assert f(["b", "a"]) != f(["a", "b"])  # lists keep their order
    assert f({"a": 1}) != f(frozenset({"a"})) != f({"a"})
    loop: list[object] = [1]
    loop.append(loop)
    assert f(loop) == f(loop)
    assert len(calls) == 7  # the two lists, three distinct kinds, the loop once


_SET_KEY = """
from cacheplug import SimpleCache

@SimpleCache().memoize()
def f(words):
    return len(words)

print(f.cache_key({"alpha", "beta", "gamma", "delta", "epsilon"}))
"""


def test_memoize_keys_of_string_sets_are_the_same_in_every_process() -> None:
    # str hashes, and so the iteration order of a set of str, differ from process to process
    import os

    keys = {
        run_python(_SET_KEY, env={**os.environ, "PYTHONHASHSEED": str(seed)}) for seed in range(6)
    }
    assert len(keys) == 1


class _NoRepr:
    def __init__(self, uid: int) -> None:
        self.uid = uid


@dataclass
class _Box:
    inner: object


@pytest.mark.parametrize(
    ("argument", "shown"),
    [
        (_NoRepr(1), "_NoRepr object at 0x"),
        (lambda: 1, "<function "),
        ([1, (2, {"k": _NoRepr(3)})], "_NoRepr object at 0x"),
        (_Box(_NoRepr(4)), "_Box(inner=<"),
    ],
    ids=["object", "function", "nested", "inside-a-dataclass"],
)
def test_memoize_refuses_arguments_shown_by_address(argument: object, shown: str) -> None:
    cache, calls = SimpleCache(), []

    @cache.memoize()
    def f(value: object) -> int:
        calls.append(value)
        return 1

    with pytest.raises(TypeError, match=f"argument 'value' is shown as .*{re.escape(shown)}"):
        f(argument)
    assert calls == []


def test_memoize_refuses_methods_of_classes_without_repr() -> None:
    # Without the check, instances at a reused address got each other's results.
    class Account:
        def __init__(self, uid: int) -> None:
            self.uid = uid

        @SimpleCache().memoize()
        def balance(self) -> int:
            return self.uid

    with pytest.raises(TypeError, match=r"Account\.balance\(\): argument 'self' .*__repr__"):
        Account(1).balance()


def test_memoize_accepts_text_that_looks_like_an_address() -> None:
    @SimpleCache().memoize()
    def f(value: object) -> int:
        return 1

    assert f("<Foo object at 0x7f00aa>") == 1
    assert f([b"<x at 0x1>", {"<y at 0x2>": ("<z at 0x3>",)}]) == 1
    looping: list[object] = ["<a at 0x4>"]
    looping.append(looping)
    assert f(looping) == 1


def test_memoize_rejects_bad_timeout() -> None:
    with pytest.raises(TypeError):
        SimpleCache().memoize(timeout="soon")  # type: ignore[arg-type]


def test_memoize_does_not_cache_none() -> None:
    cache, calls = SimpleCache(), []

    @cache.memoize()
    def nothing() -> None:
        calls.append(1)

    nothing()
    nothing()
    assert len(calls) == 2


def test_memoized_lambdas_of_one_module_keep_their_own_results() -> None:
    # Every lambda's qualname is "<lambda>": without more, double(3) was served square(3).
    cache = SimpleCache()
    square = cache.memoize()(lambda x: x * x)
    double = cache.memoize()(lambda x: 2 * x)
    assert (square(3), double(3), square(3)) == (9, 6, 9)
    assert square.cache_key(3) != double.cache_key(3)
    assert square.cache_key(3) == cache.memoize()(lambda x: x * x).cache_key(3)


def test_memoized_closures_keep_the_results_of_what_they_close_over() -> None:
    # One qualified name for every function these make: greet("ann") was served "hello ann"
    # after make_greeter("bye"), and every function cached() wrapped shared one entry per call.
    cache = SimpleCache()

    def make_greeter(greeting: str) -> Memoized[[str], str]:
        @cache.memoize()
        def greet(name: str) -> str:
            return f"{greeting} {name}"

        return greet

    def cached(func: Callable[[int], int]) -> Callable[[int], int]:
        @cache.memoize()
        def wrapper(x: int) -> int:
            return func(x)

        return wrapper

    def increment(x: int) -> int:
        return x + 1

    assert make_greeter("hello")("ann") == "hello ann"
    assert make_greeter("bye")("ann") == "bye ann"
    assert [cached(increment)(3), cached(lambda x: -x)(3), cached(abs)(-3)] == [4, -3, 3]
    # the same closure made again shares its entries; an object shown by address is left out
    assert make_greeter("bye").cache_key("x") == make_greeter("bye").cache_key("x")
    lock = threading.Lock()

    @cache.memoize()
    def guarded(x: int) -> int:
        with lock:
            return x * 2

    assert guarded(2) == 4

    class Unshowable:
        def __repr__(self) -> str:
            raise RuntimeError("not connected")

    unshowable = Unshowable()

    @cache.memoize()
    def uses(x: int) -> int:
        return x if unshowable else 0

    assert uses(5) == 5


def test_memoized_recursive_closure() -> None:
    cache, calls = SimpleCache(), []

    def make() -> Callable[[int], int]:
        @cache.memoize()
        def fib(n: int) -> int:
            calls.append(n)
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        return fib

    assert make()(20) == 6765
    assert len(calls) == 21


def test_memoize_keyword_arguments_in_any_order_are_one_call() -> None:
    cache, calls = SimpleCache(), []

    @cache.memoize()
    def search(text: str, **filters: int) -> int:
        calls.append(filters)
        return len(calls)

    assert search("a", year=2020, page=1) == search("a", page=1, year=2020) == 1
    # invalidating the same call, written the other way round, forgets the cached result
    assert search.invalidate("a", page=1, year=2020) is True
    assert search("a", year=2020, page=1) == 2


def test_memoize_on_static_and_class_methods_either_way_round() -> None:
    class Maths:
        calls = 0

        def __repr__(self) -> str:
            return "Maths()"

        @staticmethod
        def _count(result: int) -> int:
            Maths.calls += 1
            return result

        @SimpleCache().memoize()
        @staticmethod
        def twice(x: int) -> int:
            return Maths._count(2 * x)

        @SimpleCache().memoize()
        @classmethod
        def named(cls, x: int) -> str:
            return f"{cls.__name__}:{Maths._count(x)}"

        @staticmethod
        @SimpleCache().memoize()
        def thrice(x: int) -> int:
            return Maths._count(3 * x)

        @classmethod
        @SimpleCache().memoize()
        def tagged(cls, x: int) -> str:
            return f"{cls.__name__}-{Maths._count(x)}"

    maths = Maths()
    assert Maths.twice(2) == maths.twice(2) == 4
    assert Maths.thrice(2) == maths.thrice(2) == 6
    assert Maths.named(5) == maths.named(5) == "Maths:5"
    assert Maths.tagged(5) == maths.tagged(5) == "Maths-5"
    assert Maths.calls == 4  # each computed once, whether called on the class or an instance
    assert maths.twice.invalidate(2) is True
    assert maths.named.invalidate(5) is True
    assert Maths.named.uncached(7) == maths.named.uncached(7) == "Maths:7"
    assert Maths.calls == 6


def test_memoized_method_has_its_uncached_method() -> None:
    class Repo:
        def __repr__(self) -> str:
            return "Repo()"

        @SimpleCache().memoize()
        def load(self, key: str) -> str:
            """Load it."""
            return f"loaded {key}"

    assert Repo().load.uncached("x") == "loaded x"
    assert Repo.load.__name__ == "load"
    # what frameworks read off a bound method (Flask names an endpoint after __name__)
    bound = Repo().load
    assert (bound.__name__, bound.__module__, bound.__doc__) == ("load", __name__, "Load it.")
    assert bound.__qualname__.endswith("Repo.load")
    assert list(inspect.signature(bound).parameters) == ["key"]


@SimpleCache().memoize()
def cube(x: int) -> int:
    return x**3


@dataclass
class Shelf:
    name: str

    @SimpleCache().memoize()
    def label(self, n: int) -> str:
        return f"{self.name}{n}"


def test_memoized_functions_pickle_by_reference() -> None:
    # Process pools pickle what they run: the wrapper took the cache, and its locks, along.
    assert pickle.loads(pickle.dumps(cube)) is cube
    method = pickle.loads(pickle.dumps(Shelf("a").label))
    assert method(1) == "a1"
    assert method.cache_key(1) == Shelf("a").label.cache_key(1)


def run_within(seconds: float, work: Any) -> list[Any]:
    """``work()``'s result in a list, or an empty list when it did not return in time (a hang)."""
    done, result = threading.Event(), []

    def run() -> None:
        result.append(work())
        done.set()

    threading.Thread(target=run, daemon=True).start()
    done.wait(seconds)
    return result


def test_get_or_set_factory_may_use_its_own_key_again() -> None:
    # The per-key lock was not re-entrant: these hung forever.
    cache = SimpleCache()
    nested = run_within(10, lambda: cache.get_or_set("k", lambda: cache.get_or_set("k", f) * 2))
    assert nested == [2]
    backend = DictBackend({})  # inc from the base class takes the same per-key lock
    assert run_within(10, lambda: backend.get_or_set("n", lambda: backend.inc("n", 5))) == [5]


def f() -> int:
    return 1


@pytest.mark.parametrize("make", [SimpleCache, lambda: DictBackend({}), NullCache])
def test_get_or_set_counts_a_miss_once(make: Any) -> None:
    # The check again under the per-key lock counted every miss twice: hit ratios were wrong.
    cache = make()
    square = cache.memoize()(lambda x: x * x)
    assert [square(1), square(1), square(2)] == [1, 1, 4]
    stats = cache.stats()
    expected = {"hits": 1, "misses": 2} if not isinstance(cache, NullCache) else {"misses": 3}
    assert {name: stats[name] for name in expected} == expected


class TextSerializer:
    """A serializer returning str, as the ``json`` module does: it can store nothing."""

    def dumps(self, value: Any) -> str:
        return repr(value)

    def loads(self, data: bytes) -> Any:
        return data


@pytest.mark.parametrize("backend", ["simple", "file"])
def test_inc_with_a_serializer_that_stores_nothing_says_why(backend: str, tmp_path: Any) -> None:
    # inc reported every SerializationError as an overflow: "cannot count 'n' to 1".
    cache = SimpleCache() if backend == "simple" else FileSystemCache(tmp_path)
    cache.serializer = TextSerializer()
    with pytest.raises(SerializationError, match="returned str, not bytes"):
        cache.inc("missing")
    assert cache.has("missing") is False


@pytest.mark.parametrize("timeout", ["60", True])
def test_get_or_set_refuses_a_bad_timeout_before_calling_the_factory(timeout: Any) -> None:
    calls: list[int] = []
    with pytest.raises(TypeError, match="timeout"):
        SimpleCache().get_or_set("k", lambda: calls.append(1), timeout)
    assert calls == []


# -- NullCache ---------------------------------------------------------------------------------


class TestNullCache:
    @pytest.fixture
    def cache(self) -> NullCache:
        return NullCache()

    def test_stores_nothing(self, cache: NullCache) -> None:
        assert cache.set("k", 1) is True
        assert cache.get("k") is None
        assert cache.has("k") is False
        assert cache.add("k", 1) is True
        assert cache.delete("k") is False
        assert cache.clear() is True

    def test_many(self, cache: NullCache) -> None:
        assert cache.set_many({"a": 1, "b": 2}) == ["a", "b"]
        assert cache.get_many("a", "b") == [None, None]
        assert cache.get_dict("a") == {"a": None}
        assert cache.delete_many("a") == []

    def test_counters_start_over(self, cache: NullCache) -> None:
        assert cache.inc("n", 5) == 5
        assert cache.dec("n", 2) == -2

    def test_still_validates(self, cache: NullCache) -> None:
        with pytest.raises(TypeError):
            cache.set(1, "v")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            cache.set("k", "v", timeout="never")  # type: ignore[arg-type]
        with pytest.raises(SerializationError):
            cache.set("k", (i for i in range(1)))

    def test_get_or_set_always_computes(self, cache: NullCache) -> None:
        calls: list[int] = []

        def factory() -> str:
            calls.append(1)
            return "v"

        assert cache.get_or_set("k", factory) == "v"
        assert cache.get_or_set("k", factory) == "v"
        assert len(calls) == 2


class DictBackend(BaseCache):
    """The smallest possible backend: only the six abstract methods, no clock."""

    def __init__(self, store: dict[str, bytes], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store

    def _k(self, key: str) -> str:
        if not isinstance(key, str):
            raise TypeError(f"cache key must be str, got {type(key).__name__}")
        return self.key_prefix + key

    def get(self, key: str) -> Any:
        payload = self.store.get(self._k(key))
        value = None if payload is None else self._decode_or_miss(key, payload)
        if value is None:  # missing, a stored None or unreadable: a miss (contract.md)
            self._misses += 1
        else:
            self._hits += 1
        return value

    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        seconds = normalize_timeout(timeout, self.default_timeout)
        payload = self._encode(value, key)
        if seconds < 0:
            self.store.pop(self._k(key), None)
        else:
            self.store[self._k(key)] = payload
        self._sets += 1
        return True

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        return False if self.has(key) else self.set(key, value, timeout)

    def delete(self, key: str) -> bool:
        existed = self.store.pop(self._k(key), None) is not None
        self._deletes += existed
        return existed

    def has(self, key: str) -> bool:
        return self._k(key) in self.store

    def clear(self) -> bool:
        for key in [k for k in self.store if k.startswith(self.key_prefix)]:
            del self.store[key]
        return True


class TestBaseCacheDefaults(CacheContract):
    """The base class's defaults (inc, *_many, get_or_set, memoize) honour the contract."""

    shared_store = True

    @pytest.fixture
    def cache_factory(self) -> Iterator[CacheFactory]:
        store: dict[str, bytes] = {}
        yield lambda **kwargs: DictBackend(store, **kwargs)


def test_default_inc_on_a_stored_none_is_type_error() -> None:
    # get() cannot tell a stored None from a miss: the default counted it from 0.
    cache = DictBackend({})
    cache.set("k", None)
    with pytest.raises(TypeError, match="'k': it holds a NoneType, not an int"):
        cache.inc("k")
    assert cache.has("k") and cache.get("k") is None
    assert cache.inc("fresh", 2) == 2


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_default_inc_beyond_what_the_serializer_holds_is_overflow_error(serializer: str) -> None:
    """contract.md: a count the backend cannot hold raises OverflowError and the value stays;
    the default inc, which a plugin backend inherits, raised SerializationError."""
    cache = DictBackend({}, serializer=serializer)
    assert cache.set("n", 2**64 - 1) is True
    with pytest.raises(OverflowError, match=f"cannot count 'n' to {2**64}: {serializer} cannot"):
        cache.inc("n")
    assert cache.get("n") == 2**64 - 1
    assert cache.set("low", -(2**63)) is True
    with pytest.raises(OverflowError):
        cache.dec("low")
    assert cache.get("low") == -(2**63)


def test_backend_errors_log_one_line_a_minute_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = DictBackend({})
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        for operation in ("get", "set", "inc", "get", "delete"):
            cache._backend_error(operation, ConnectionError("refused"))
        assert [r.getMessage() for r in caplog.records] == [
            "DictBackend.get failed, answering as the contract says: ConnectionError: refused"
        ]
        cache._last_logged["backend"] -= 61  # a minute later
        cache._backend_error("set", ConnectionError("refused"))
    assert len(caplog.records) == 2
    assert (
        caplog.records[1]
        .getMessage()
        .endswith("(4 more like this since the last such message, not logged)")
    )
    assert cache.stats()["errors"] == 6


def test_memoized_is_still_exported_by_core_base() -> None:
    # its home before memoize moved to core/memoize.py: imports of it there must keep working
    from cacheplug.core import base

    assert "Memoized" in base.__all__
    assert base.Memoized is Memoized
    with pytest.raises(AttributeError, match="no attribute 'Memoised'"):
        getattr(base, "Memoised")  # noqa: B009


@pytest.mark.parametrize(
    ("home", "names"),
    [
        ("arguments", ["check_delta", "check_key", "check_mapping", "checked_counter"]),
        ("options", ["LONGEST_SOCKET_TIMEOUT", "check_bool", "check_picklable", "check_seconds"]),
        (
            "signing",
            [
                "SECRET_ENV",
                "SIGNATURE_SIZE",
                "SIGNED_MARK",
                "CacheSigner",
                "PayloadSigner",
                "entry_binding",
                "signing_context",
            ],
        ),
        ("timeouts", ["LONGEST_TIMEOUT", "Timeout", "check_default_timeout", "normalize_timeout"]),
    ],
)
def test_names_moved_out_of_core_base_are_still_exported_by_it(home: str, names: list[str]) -> None:
    # backends and plugins import them from base, where they were defined before
    from cacheplug.core import base

    moved = importlib.import_module(f"cacheplug.core.{home}")
    for name in names:
        assert name in base.__all__, name
        assert getattr(base, name) is getattr(moved, name), name


def test_memoize_on_a_partial_names_it_the_same_in_every_process() -> None:
    import functools

    def add(a: int, b: int) -> int:
        return a + b

    cache = SimpleCache()
    plus_one = cache.memoize()(functools.partial(add, 1))
    assert plus_one(2) == 3
    # the partial's own repr shows an address: keys were different in each process
    assert " at 0x" not in plus_one.cache_key(2)
    assert plus_one.cache_key(2).startswith("memoize:test_base.")
    assert plus_one.cache_key(2) != cache.memoize()(functools.partial(add, 2)).cache_key(2)
    with pytest.raises(TypeError, match=r"argument 'b' is shown as <object object at 0x"):
        plus_one(object())  # raised AttributeError ('Memoized' has no '__qualname__')
    with pytest.raises(TypeError, match="the arguments it binds are shown by a memory address"):
        cache.memoize()(functools.partial(add, object()))
    code = (
        "import functools, json\n"
        "from cacheplug import SimpleCache\n"
        "by_name = SimpleCache().memoize()(functools.partial(json.dumps, sort_keys=True))\n"
        "print(by_name.cache_key([2]))\n"
    )
    assert run_python(code) == run_python(code)
