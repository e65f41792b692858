"""Review of user-written serializers on every backend: what a misbehaving ``dumps`` or
``loads`` makes of each call, cachelib's serializer objects, a serializer reassigned between
calls, and the fast paths (SimpleCache's unpickled builtins, Redis' and Memcached's counters)
against the serializer's own round trip."""

from __future__ import annotations

import ast
import logging
import pickle
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from servers import MemcachedServer, RedisServer

from cacheplug import (
    BaseCache,
    FileSystemCache,
    JSONSerializer,
    MemcachedCache,
    MsgpackSerializer,
    PickleSerializer,
    RedisCache,
    SerializationError,
    SimpleCache,
)

BACKENDS = ["simple", "filesystem", "redis", "memcached"]
SECRETS = [None, "s3cret"]

Factory = Callable[..., BaseCache]


@pytest.fixture(params=BACKENDS)
def make(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Callable[..., BaseCache]]:
    """A factory of fresh caches of one backend, each under its own key_prefix."""
    made: list[BaseCache] = []

    def factory(**kwargs: Any) -> BaseCache:
        prefix = uuid.uuid4().hex[:8] + ":"
        cache: BaseCache
        if request.param == "simple":
            cache = SimpleCache(**kwargs)
        elif request.param == "filesystem":
            cache = FileSystemCache(str(tmp_path / prefix[:-1]), **kwargs)
        elif request.param == "redis":
            server: RedisServer = request.getfixturevalue("redis_server")
            cache = RedisCache(port=server.port, key_prefix=prefix, **kwargs)
        else:
            mc: MemcachedServer = request.getfixturevalue("memcached_server")
            cache = MemcachedCache([f"{mc.host}:{mc.port}"], key_prefix=prefix, **kwargs)
        made.append(cache)
        return cache

    yield factory
    for cache in made:
        cache.close()


class Pickling:
    """A foreign serializer on pickle whose ``dumps`` output passes through ``out``."""

    def __init__(self, out: Callable[[bytes], Any] = bytes) -> None:
        self.out = out

    def dumps(self, value: Any) -> Any:
        return self.out(pickle.dumps(value))

    def loads(self, data: bytes) -> Any:
        assert type(data) is bytes
        return pickle.loads(data)


class Raising:
    """Raises ``error`` from ``dumps`` or ``loads`` (``where``), else pickles."""

    def __init__(self, error: BaseException, where: str) -> None:
        self.error, self.where = error, where

    def dumps(self, value: Any) -> bytes:
        if self.where == "dumps":
            raise self.error
        return pickle.dumps(value)

    def loads(self, data: bytes) -> Any:
        if self.where == "loads":
            raise self.error
        return pickle.loads(data)


class Text:
    """A serializer of text: ``str(value)`` encoded, read back as ``str``."""

    name = "text"

    def dumps(self, value: Any) -> bytes:
        return str(value).encode()

    def loads(self, data: bytes) -> Any:
        return data.decode()


class Literal:
    """``repr`` text read back with ``ast.literal_eval``; counts its calls (not thread-safe:
    ``+=`` on an attribute from many threads), as user-written serializers often do."""

    def __init__(self) -> None:
        self.calls = 0

    def dumps(self, value: Any) -> bytes:
        self.calls += 1
        return repr(value).encode()

    def loads(self, data: bytes) -> Any:
        self.calls += 1
        return ast.literal_eval(data.decode())


class Ctrl(BaseException):
    """A BaseException of the user's own, as KeyboardInterrupt or SystemExit are."""


def _works(cache: BaseCache) -> None:
    """The cache still does its job with the default serializer."""
    cache.serializer = PickleSerializer()
    assert cache.set("after", {"still": [1, 2]}) is True
    assert cache.get("after") == {"still": [1, 2]}
    assert cache.inc("after-count") == 1


BAD_OUTPUTS = {
    "str": lambda data: data.decode("latin-1"),
    "None": lambda data: None,
    "object": lambda data: object(),
    "list": list,
    "int": len,
}


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("output", list(BAD_OUTPUTS))
def test_dumps_returning_no_bytes_raises_and_stores_nothing(
    make: Factory, output: str, secret: str | None
) -> None:
    cache = make(secret=secret)
    cache.set("k", [0])
    cache.serializer = Pickling(BAD_OUTPUTS[output])
    calls: list[Callable[[], Any]] = [
        lambda: cache.set("k", [1]),
        lambda: cache.set("k", {"flat": 1}),
        lambda: cache.add("new", [1]),
        lambda: cache.set_many({"k": [1], "other": [2]}),
        lambda: cache.get_or_set("fresh", lambda: [3]),
        lambda: cache.memoize()(lambda n: [n])(4),
    ]
    for call in calls:
        with pytest.raises(SerializationError, match="Pickling"):
            call()
    for key in ("new", "other", "fresh"):
        assert not cache.has(key), key
    cache.serializer = PickleSerializer()
    assert cache.get("k") == [0]
    _works(cache)


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_bytes_like_dumps_output_from_a_reused_buffer_is_copied(
    make: Factory, kind: type, secret: str | None
) -> None:
    # A serializer that hands out its own buffer and overwrites it on the next call
    buffer = bytearray()

    def reuse(data: bytes) -> Any:
        buffer[:] = data
        return buffer if kind is bytearray else memoryview(buffer)

    cache = make(secret=secret, serializer=Pickling(reuse))
    cache.set("a", ["first", 1])
    cache.set_many({"b": ["second", 2], "c": ("third", 3)})
    assert cache.add("d", {"fourth": [4]}) is True
    assert cache.get_or_set("e", lambda: ["fifth"]) == ["fifth"]
    expected = [["first", 1], ["second", 2], ("third", 3), {"fourth": [4]}, ["fifth"]]
    assert cache.get_many("a", "b", "c", "d", "e") == expected
    _works(cache)


@pytest.mark.parametrize(
    "error",
    [TypeError("t"), ValueError("v"), RecursionError("deep"), KeyError("k"), MemoryError("m")],
    ids=lambda e: type(e).__name__,
)
def test_dumps_raising_is_a_serialization_error_chained_to_it(
    make: Factory, error: Exception
) -> None:
    cache = make()
    cache.set("k", [0])
    cache.serializer = Raising(error, "dumps")
    for call in (
        lambda: cache.set("k", [1]),
        lambda: cache.add("k2", [1]),
        lambda: cache.set_many({"k": [1]}),
        lambda: cache.get_or_set("k3", lambda: [1]),
    ):
        with pytest.raises(SerializationError, match="Raising cannot encode") as info:
            call()
        assert info.value.__cause__ is error
        assert isinstance(info.value, pickle.PickleError)
    cache.serializer = PickleSerializer()
    assert cache.get("k") == [0]
    assert not cache.has("k2") and not cache.has("k3")
    _works(cache)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), Ctrl()], ids=["KeyboardInterrupt", "own"])
def test_base_exceptions_of_a_serializer_reach_the_caller(make: Factory, error: Any) -> None:
    # Not an unreadable payload: the user interrupting the call, never turned into a miss
    cache = make()
    cache.set("k", [[0]])  # nested: SimpleCache pickles it too
    cache.serializer = Raising(error, "dumps")
    with pytest.raises(type(error)):
        cache.set("k", [1])
    cache.serializer = Raising(error, "loads")
    with pytest.raises(type(error)):
        cache.get("k")
    cache.serializer = PickleSerializer()
    assert cache.get("k") == [[0]]
    _works(cache)


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize(
    "error",
    [KeyError("k"), RecursionError("deep"), MemoryError("m"), ValueError("v"), AttributeError()],
    ids=lambda e: type(e).__name__,
)
def test_loads_raising_is_a_logged_counted_miss(
    make: Factory, error: Exception, secret: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make(secret=secret)
    cache.set("k", [1, [2]])
    cache.set("t", (1, [2]))
    loader = Raising(error, "loads")
    cache.serializer = loader
    errors = cache.stats()["errors"]
    with caplog.at_level(logging.WARNING, "cacheplug"):
        assert cache.get("k") is None
        assert cache.get_many("k", "t") == [None, None]
        assert cache.get_dict("k", "t") == {"k": None, "t": None}
    assert cache.stats()["errors"] == errors + 5
    lines = [r for r in caplog.records if r.name == "cacheplug"]
    assert len(lines) == 1 and "read as a miss" in lines[0].getMessage()
    assert cache.has("k") is True
    assert cache.add("k", "x") is False
    with pytest.raises(TypeError, match="unreadable"):
        cache.inc("k")
    assert cache.get_or_set("k", lambda: "fresh") == "fresh"  # and stored again
    assert cache.has("k") is True
    _works(cache)


@pytest.mark.parametrize("secret", SECRETS)
def test_loads_returning_none_reads_as_a_stored_none(make: Factory, secret: str | None) -> None:
    class Forgetful(Pickling):
        def loads(self, data: bytes) -> Any:
            return None

    cache = make(secret=secret, serializer=Forgetful())
    cache.set("k", [1])
    errors = cache.stats()["errors"]
    assert cache.get("k") is None
    assert cache.get_many("k", "missing") == [None, None]
    assert cache.has("k") is True and cache.add("k", [2]) is False
    with pytest.raises(TypeError):
        cache.inc("k")
    calls: list[int] = []
    assert cache.get_or_set("k", lambda: calls.append(1) or [5]) == [5]
    assert calls == [1]
    assert cache.stats()["errors"] == errors  # the serializer's answer, not an unreadable entry
    _works(cache)


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize(
    "name", [None, "", 42, "\x00", "\udc80", "a" * 10_000, "pickle", "json"], ids=repr
)
def test_serializers_with_odd_names_work(make: Factory, name: Any, secret: str | None) -> None:
    class Named(Pickling):
        pass

    serializer = Named()
    if name is not None:
        serializer.name = name  # type: ignore[attr-defined]
    cache = make(secret=secret, serializer=serializer)
    assert cache.set("k", [1]) is True
    assert cache.get("k") == [1]
    assert cache.get_many("k") == [[1]]
    assert cache.inc("n") == 1
    assert "serializer=" in repr(cache)


def test_with_a_secret_a_nameless_serializers_entries_never_reach_another_one(
    make: Factory,
) -> None:
    class First(Pickling):
        pass

    class Second(Pickling):
        def loads(self, data: bytes) -> Any:
            raise AssertionError("reached loads")

    cache = make(secret="s3cret", serializer=First())
    cache.set("k", [1])
    cache.serializer = Second()
    assert cache.get("k") is None
    assert cache.get_many("k") == [None]
    with pytest.raises(TypeError, match="unreadable"):
        cache.inc("k")
    cache.serializer = First()
    assert cache.get("k") == [1]


@pytest.mark.parametrize("secret", SECRETS)
def test_thread_unsafe_serializers_under_eight_threads(make: Factory, secret: str | None) -> None:
    first, second = Literal(), Literal()
    cache = make(secret=secret, serializer=first)
    failures: list[str] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait(timeout=10)
        for i in range(40):
            key = f"t{n}-{i}"
            value = {"n": n, "i": i, "items": [n, (i,)]}
            try:
                cache.set(key, value)
                got = cache.get(key)
                # a reassignment by another thread may make it a miss, never another value
                if got is not None and got != value:
                    failures.append(f"{key}: {got!r}")
                if n == 0 and i % 5 == 0:
                    cache.serializer = second if cache.serializer is first else first
            except Exception as err:  # any exception is a failure here
                failures.append(f"{key}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    cache.serializer = first
    assert cache.set("end", [1]) is True and cache.get("end") == [1]


CACHELIB = ["SimpleSerializer", "RedisSerializer", "FileSystemSerializer", "UWSGISerializer"]


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("name", CACHELIB)
def test_cachelib_serializer_objects(make: Factory, name: str, secret: str | None) -> None:
    import cachelib.serializers

    cache = make(secret=secret)
    cache.serializer = getattr(cachelib.serializers, name)()
    value = {"x": (1, 2), "b": b"\x00", "s": {3}}
    assert cache.set("v", value) is True
    assert cache.set_many({"s": "12", "n": 7, "big": 2**70}) == ["s", "n", "big"]
    assert cache.inc("n") == 8
    assert cache.get_many("v", "s", "n", "big", "missing") == [value, "12", 8, 2**70, None]
    assert cache.get_dict("v", "n") == {"v": value, "n": 8}
    assert cache.add("v", 1) is False and cache.has("v")
    assert cache.get_or_set("g", lambda: [1]) == [1] == cache.get("g")
    with pytest.raises(SerializationError):
        cache.set("bad", lambda: 1)  # cachelib's dumps raises for it (or returns None)
    with pytest.raises(TypeError):
        cache.inc("v")
    _works(cache)


@pytest.mark.parametrize(
    "serializer",
    [JSONSerializer(), MsgpackSerializer(), Literal(), Text()],
    ids=["json", "msgpack", "literal", "text"],
)
@pytest.mark.parametrize("secret", SECRETS)
def test_fast_paths_read_what_the_serializer_reads(
    make: Factory, serializer: Any, secret: str | None, request: pytest.FixtureRequest
) -> None:
    # After cache.serializer = X, a flat dict, a list, text and floats read back as X's own
    # round trip would give them, whatever SimpleCache or the engines keep them as.
    cache = make(secret=secret)
    cache.set("before", {"flat": 1})
    cache.serializer = serializer
    values: list[Any] = [{"a": 1, "b": "x"}, ["x", 2.5], ("t", 1), "123", "-7", "1.5", "", "x"]
    for i, value in enumerate(values):
        key = f"v{i}"
        try:
            expected = serializer.loads(serializer.dumps(value))
        except Exception:  # outside this serializer's domain
            with pytest.raises(SerializationError):
                cache.set(key, value)
            continue
        assert cache.set(key, value) is True
        assert cache.get(key) == expected, (key, value)
        assert type(cache.get(key)) is type(expected), (key, value)
    keys = [f"v{i}" for i in range(len(values))]
    assert cache.get_many(*keys) == [cache.get(key) for key in keys]


def test_simple_cache_flat_values_go_through_another_serializer() -> None:
    # With pickle, flat builtins skip it; with json they must meet json's refusals
    cache = SimpleCache()
    assert cache.set("k", {1: "int key"}) is True
    cache.serializer = JSONSerializer()
    with pytest.raises(SerializationError):
        cache.set("k", {1: "int key"})
    with pytest.raises(SerializationError):
        cache.set("nan", float("nan"))
    assert cache.set("t", ("a", 1)) is True
    assert cache.get("t") == ["a", 1]
    assert cache.get("k") == {1: "int key"}  # kept as pickle's fast path stored it


@pytest.mark.parametrize("secret", SECRETS)
def test_counters_read_as_ints_after_a_reassignment(
    make: Factory, secret: str | None, request: pytest.FixtureRequest
) -> None:
    if "filesystem" in request.node.callspec.id:
        pytest.skip("FileSystemCache stores counters through the serializer of the moment")
    cache = make(secret=secret)
    assert cache.inc("n", 5) == 5
    for serializer in (JSONSerializer(), MsgpackSerializer(), Text(), Literal()):
        cache.serializer = serializer
        value = cache.get("n")
        assert value == 5 and type(value) is int, serializer
        assert cache.get_many("n") == [5]
    assert cache.inc("n") == 6
    assert cache.get("n") == 6


@pytest.mark.parametrize("secret", SECRETS)
def test_serializer_reassigned_between_set_and_get_or_inc(
    make: Factory, secret: str | None, request: pytest.FixtureRequest
) -> None:
    cache = make(secret=secret)
    cache.set("list", [1, 2])
    cache.serializer = JSONSerializer()
    got = cache.get("list")
    if isinstance(cache, SimpleCache):
        assert got == [1, 2]  # kept unpickled: the same value, never another one
    else:
        assert got is None  # pickle's bytes are no JSON (and, signed, name pickle)
    with pytest.raises(TypeError):
        cache.inc("list")
    # json's text of 5, read by msgpack, is msgpack's 53 (docs/contract.md) unless signed
    cache.set("five", 5.0)
    cache.serializer = MsgpackSerializer()
    assert cache.get("five") in ((None,) if secret else (None, 5.0, 5))
    cache.serializer = PickleSerializer()
    assert cache.get("list") == [1, 2]
    _works(cache)


@pytest.mark.parametrize("secret", SECRETS)
def test_a_serializers_digits_are_not_taken_for_a_counter(
    make: Factory, secret: str | None, request: pytest.FixtureRequest
) -> None:
    cache = make(secret=secret, serializer=Text())
    for text in ("12", "-7", "007", "12\n", "12\n\n", "-", "1.5"):
        cache.set("s", text)
        assert cache.get("s") == text, text
        assert cache.get_many("s", "missing") == [text, None], text
        assert cache.get_dict("s") == {"s": text}, text
        with pytest.raises(TypeError):
            cache.inc("s")
        assert cache.get("s") == text, text
    assert cache.inc("fresh") == 1
