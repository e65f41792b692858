"""Review of memoize / get_or_set as a demanding and a hostile user: which calls share a key,
which get two, keys across processes and engines, re-entry, failing factories.

Each finding's test failed before its fix."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st
from interpreter import run_python
from servers import MemcachedServer, RedisServer

from cacheplug import (
    BaseCache,
    FileSystemCache,
    MemcachedCache,
    NullCache,
    RedisCache,
    SimpleCache,
)

WAIT = 10.0  # seconds any wait of these tests gives up after


# -- one call, one key: however it is spelled -----------------------------------------------------

_memo = SimpleCache()


@_memo.memoize()
def _mixed(a: Any, b: Any = 0, *rest: Any, c: Any = 1, **extra: Any) -> tuple[Any, ...]:
    return (a, b, rest, c, extra)


_PLAIN = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.none(), st.booleans())


@settings(max_examples=150, deadline=None)
@given(
    a=_PLAIN,
    b=st.one_of(st.just(0), _PLAIN),
    c=st.one_of(st.just(1), _PLAIN),
    extra=st.dictionaries(st.sampled_from(["x", "y", "zz"]), _PLAIN, max_size=3),
    spelling=st.integers(0, 7),
)
def test_every_spelling_of_one_call_has_one_key(
    a: Any, b: Any, c: Any, extra: dict[str, Any], spelling: int
) -> None:
    """Positional or keyword, a default given or left out, ``**kwargs`` in any order: one key,
    so ``invalidate`` spelled another way than the call removes its entry."""
    canonical = _mixed.cache_key(a, b, c=c, **extra)
    kwargs: dict[str, Any] = dict(reversed(list(extra.items())))
    args: tuple[Any, ...]
    if spelling & 1:
        args, kwargs["b"] = (), b
        kwargs["a"] = a
    else:
        args = (a,) if b == 0 and type(b) is int and spelling & 2 else (a, b)
    if not (c == 1 and type(c) is int and spelling & 4):
        kwargs["c"] = c
    assert _mixed.cache_key(*args, **kwargs) == canonical


def test_invalidate_spelled_otherwise_removes_the_entry() -> None:
    cache = SimpleCache()
    calls: list[tuple[Any, ...]] = []

    @cache.memoize()
    def scale(x: int, factor: int = 2, *, offset: int = 0) -> int:
        calls.append((x, factor, offset))
        return x * factor + offset

    assert scale(3) == 6
    assert scale.invalidate(x=3, offset=0, factor=2) is True
    assert scale(3, 2) == 6 and len(calls) == 2
    assert scale.invalidate(3, factor=2) is True
    assert scale.invalidate(3) is False  # already gone
    assert scale(x=3) == 6 and len(calls) == 3

    @cache.memoize()
    def only_keywords(*, a: int, b: int = 1) -> int:
        calls.append((a, b))
        return a + b

    assert only_keywords(a=1) == only_keywords(b=1, a=1) == 2
    assert len(calls) == 4
    assert only_keywords.invalidate(b=1, a=1) is True
    # *args and **kwargs: an extra positional is not the same call as one keyword
    keys = {_mixed.cache_key(1, 2, 3), _mixed.cache_key(1, 2, (3,)), _mixed.cache_key(1, 2, x=3)}
    assert len(keys) == 3


# -- methods, class methods, decorated functions ---------------------------------------------------


def test_class_methods_of_subclasses_keep_their_own_results() -> None:
    cache = SimpleCache()

    class Base:
        kind = "base"

        @cache.memoize()
        @classmethod
        def describe(cls, n: int) -> str:
            return f"{cls.kind}{n}"

    class Sub(Base):
        kind = "sub"

    assert (Base.describe(1), Sub.describe(1), Sub().describe(1), Base().describe(1)) == (
        "base1",
        "sub1",
        "sub1",
        "base1",
    )
    assert Base.describe.cache_key(1) != Sub.describe.cache_key(1)


def test_methods_of_instances_with_equal_reprs_share_as_documented() -> None:
    cache = SimpleCache()

    @dataclass
    class Account:
        name: str
        visits: int = 0

        @cache.memoize()
        def greeting(self) -> str:
            self.visits += 1
            return f"hi {self.name}"

    first, second = Account("ann"), Account("ann")
    assert first.greeting() == second.greeting() == "hi ann"
    assert (first.visits, second.visits) == (1, 0)  # the second was served the first's result
    assert Account("bob").greeting() == "hi bob"


def test_a_function_redefined_under_one_name_shares_unless_given_a_key_prefix() -> None:
    """Documented: the code is not part of the key; ``key_prefix`` tells versions apart."""
    cache = SimpleCache()

    def area(side: int) -> int:
        return side * side

    old = cache.memoize()(area)

    def area(side: int) -> int:  # type: ignore[no-redef]
        return 4 * side

    new = cache.memoize()(area)
    versioned = cache.memoize(key_prefix="area-v2")(area)
    assert (old(3), new(3), versioned(3)) == (9, 9, 12)


def _times(n: int) -> Callable[[Callable[[int], int]], Callable[[int], int]]:
    def decorate(func: Callable[[int], int]) -> Callable[[int], int]:
        @functools.wraps(func)
        def wrapper(x: int) -> int:
            return func(x) * n

        return wrapper

    return decorate


def _double(func: Callable[[int], int]) -> Callable[[int], int]:
    @functools.wraps(func)
    def wrapper(x: int) -> int:
        return func(x) * 2

    return wrapper


def _negate(func: Callable[[int], int]) -> Callable[[int], int]:
    @functools.wraps(func)
    def wrapper(x: int) -> int:
        return -func(x)

    return wrapper


def _identity(x: int) -> int:
    return x


def test_wrappers_of_one_decorator_made_with_other_values_keep_their_results() -> None:
    cache = SimpleCache()
    assert [cache.memoize()(_times(n)(_identity))(5) for n in (2, 3)] == [10, 15]


def test_wrappers_of_one_function_made_by_two_decorators_keep_their_results() -> None:
    cache = SimpleCache()
    doubled = cache.memoize()(_double(_identity))
    negated = cache.memoize()(_negate(_identity))
    assert (doubled(5), negated(5)) == (10, -5)


def test_closures_reached_through_a_helper_or_a_partial_keep_their_results() -> None:
    cache = SimpleCache()

    def make(n: int) -> Callable[[int], int]:
        def scale(x: int) -> int:
            return x * n

        @cache.memoize()
        def scaled(x: int) -> int:
            return scale(x)

        return scaled

    def multiplier(n: int) -> Callable[[int], int]:
        def times(x: int) -> int:
            return x * n

        return times

    assert (make(2)(10), make(3)(10)) == (20, 30)
    twice = cache.memoize()(functools.partial(multiplier(2), 10))
    thrice = cache.memoize()(functools.partial(multiplier(3), 10))
    assert (twice(), thrice()) == (20, 30)


def test_memoize_applied_twice_on_one_cache_calls_once() -> None:
    cache = SimpleCache()
    calls: list[int] = []

    @cache.memoize()
    @cache.memoize()
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    assert (square(4), square(4)) == (16, 16)
    assert calls == [4]
    # each wrapper has its own entry: the outer one's invalidate leaves the inner one's
    assert square.invalidate(4) and square(4) == 16 and calls == [4]
    inner: Any = square.uncached
    assert square.invalidate(4) and inner.invalidate(4)
    assert square(4) == 16 and calls == [4, 4]


def _keys_by_hash_seed(code: str) -> set[str]:
    """What ``code`` prints, run by interpreters with four string-hash seeds."""
    return {run_python(code, env={**os.environ, "PYTHONHASHSEED": str(seed)}) for seed in range(4)}


def test_functions_defined_in_main_have_one_key_in_every_process() -> None:
    code = (
        "from cacheplug import SimpleCache\n"
        "cache = SimpleCache()\n"
        "@cache.memoize()\n"
        "def f(tags, opts):\n"
        "    return 1\n"
        "print(f.cache_key(frozenset({'alpha', 'beta', 'gamma'}), {'x': {'p', 'q'}, 'y': 2}))\n"
    )
    keys = _keys_by_hash_seed(code)
    assert len(keys) == 1
    assert keys.pop().startswith("memoize:__main__.f:")


# -- arguments whose repr abbreviates, rounds, fails or is huge ------------------------------------


def test_numpy_arrays_that_differ_keep_their_results() -> None:
    cache = SimpleCache()

    @cache.memoize()
    def total(values: Any) -> float:
        return float(values.sum())

    long_one = np.arange(10_000)
    changed = long_one.copy()
    changed[5_000] = -1_000_000
    assert total(long_one) == 49_995_000
    assert total(changed) == float(changed.sum())
    assert total.cache_key(np.array([0.1234567891])) != total.cache_key(np.array([0.1234567892]))


def test_long_compiled_patterns_that_differ_keep_their_results() -> None:
    cache = SimpleCache()

    @cache.memoize()
    def matches(pattern: re.Pattern[str], text: str) -> bool:
        return pattern.fullmatch(text) is not None

    text = "a" * 300 + "b"
    assert matches(re.compile("a" * 300 + "b"), text) is True
    assert matches(re.compile("a" * 300 + "c"), text) is False


def test_an_int_too_long_for_a_repr_is_an_argument_like_any_other() -> None:
    cache = SimpleCache()

    @cache.memoize()
    def remainder(n: int) -> int:
        return n % 7

    big = 10**5000
    assert remainder(big) == remainder(big) == big % 7
    assert remainder.cache_key(big) != remainder.cache_key(big + 1)


def test_an_argument_whose_repr_raises_raises_that_error_and_caches_nothing() -> None:
    cache = SimpleCache()

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("repr failed")

    @cache.memoize()
    def echo(value: Any) -> str:
        return "ran"

    with pytest.raises(RuntimeError, match="repr failed"):
        echo(Broken())
    assert len(cache) == 0
    assert echo(1) == "ran"


def test_a_builtin_without_a_signature_is_keyed_on_its_arguments_as_given() -> None:
    # inspect.signature(max) raises ValueError: memoize raised it at decoration
    cache = SimpleCache()
    biggest = cache.memoize()(max)
    assert biggest(1, 5) == biggest(1, 5) == 5
    assert biggest(3, 2) == 3
    assert biggest([4, 9]) == 9
    assert biggest(1, 5, key=abs) == 5
    assert cache.stats()["hits"] == 1 and len(cache) == 4
    assert biggest.cache_key(1, 5) != biggest.cache_key(5, 1)
    assert biggest.invalidate(1, 5) is True
    assert biggest.invalidate(1, 5) is False


def test_a_one_megabyte_argument_hits_and_differs_from_its_neighbour() -> None:
    cache = SimpleCache()
    calls: list[int] = []

    @cache.memoize()
    def size(text: str) -> int:
        calls.append(1)
        return len(text)

    text = "x" * (1 << 20)
    assert size(text) == size(text) == 1 << 20
    assert size(text[:-1] + "y") == 1 << 20
    assert len(calls) == 2
    assert size.invalidate(text) is True


_DATACLASS_KEY = """
from collections import namedtuple
from dataclasses import dataclass
from cacheplug import SimpleCache

@dataclass(frozen=True)
class Query:
    tags: frozenset

cache = SimpleCache()

@cache.memoize(key_prefix="q")
def search(query):
    return 1

TAGS = frozenset({"alpha", "beta", "gamma", "delta", "epsilon"})
print(search.cache_key(Query(TAGS)), search.cache_key(namedtuple("Pair", "left right")(TAGS, 1)))
"""


def test_a_dataclass_holding_a_set_of_strings_has_one_key_in_every_process() -> None:
    assert len(_keys_by_hash_seed(_DATACLASS_KEY)) == 1


_LAMBDA_KEY = """
from cacheplug import SimpleCache

cache = SimpleCache()
known = cache.memoize()(lambda word: word in {"alpha", "beta", "gamma", "delta", "epsilon"})
print(known.cache_key("beta"))
"""


def test_a_lambda_with_a_set_literal_has_one_key_in_every_process() -> None:
    assert len(_keys_by_hash_seed(_LAMBDA_KEY)) == 1


# -- get_or_set: timeouts, failing factories, threads ----------------------------------------------


def test_get_or_set_timeouts_zero_negative_and_none(clock: FakeClock) -> None:
    cache = SimpleCache(default_timeout=10, clock=clock)
    assert cache.get_or_set("forever", lambda: 1, 0) == 1
    assert cache.get_or_set("expired", lambda: 1, -1) == 1  # returned, not kept
    assert cache.get_or_set("default", lambda: 1) == 1
    clock.advance(11)
    assert cache.get_or_set("forever", lambda: 2, 0) == 1
    assert cache.get_or_set("expired", lambda: 2, -1) == 2
    assert cache.get_or_set("default", lambda: 2) == 2
    assert cache.has("expired") is False


def test_a_factory_interrupted_by_a_base_exception_releases_its_waiters() -> None:
    """KeyboardInterrupt in the first thread's factory: the waiting thread runs its own."""
    cache = SimpleCache()
    started, release = threading.Event(), threading.Event()
    results: list[Any] = []
    errors: list[BaseException] = []

    def interrupted() -> str:
        started.set()
        assert release.wait(WAIT)
        raise KeyboardInterrupt

    def first() -> None:
        try:
            cache.get_or_set("k", interrupted)
        except BaseException as err:  # the thread reports what it got
            errors.append(err)

    leader = threading.Thread(target=first)
    leader.start()
    assert started.wait(WAIT)
    waiter = threading.Thread(target=lambda: results.append(cache.get_or_set("k", lambda: "v")))
    waiter.start()
    release.set()
    leader.join(WAIT)
    waiter.join(WAIT)
    assert [type(err) for err in errors] == [KeyboardInterrupt]
    assert results == ["v"]
    assert cache._flights == {}  # the single-flight slot is gone
    assert cache.get_or_set("k", lambda: "other") == "v"


def test_threads_missing_one_key_of_a_file_cache_call_once(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path)
    calls: list[int] = []
    gate = threading.Event()

    @cache.memoize(timeout=60)
    def slow(x: int) -> list[int]:
        calls.append(x)
        assert gate.wait(WAIT)
        return [x]

    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(slow(7))) for _ in range(4)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(WAIT)
    assert results == [[7]] * 4
    assert calls == [7]
    # another cache on that directory (another process) reads the same key
    other = FileSystemCache(tmp_path)
    assert other.get(slow.cache_key(7)) == [7]
    assert cache.stats()["misses"] == 1 and cache.stats()["hits"] == 3


def test_async_and_threads_on_one_cache_each_make_one_call_per_loop() -> None:
    cache = SimpleCache()
    calls: list[int] = []

    @cache.memoize()
    async def load(n: int) -> int:
        calls.append(n)
        await asyncio.sleep(0)
        return n * 10

    async def many() -> list[int]:
        return list(await asyncio.gather(*(load(1) for _ in range(5))))

    results: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda: results.append(asyncio.run(many()))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert results == [[10] * 5] * 3
    assert 1 <= len(calls) <= 3  # at most one call per event loop
    wrapper: Any = load
    assert wrapper._flights == {}


def test_an_async_call_retrying_itself_by_recursion_does_not_hang() -> None:
    cache = SimpleCache()
    attempts: list[str] = []

    @cache.memoize()
    async def fetch(url: str) -> str:
        attempts.append(url)
        if len(attempts) == 1:
            return await fetch(url)  # a retry
        return "page"

    async def main() -> str:
        return await asyncio.wait_for(fetch("u"), 2)

    assert asyncio.run(main()) == "page"


def test_a_sync_call_retrying_itself_by_recursion_returns() -> None:
    cache = SimpleCache()
    attempts: list[str] = []

    @cache.memoize()
    def fetch(url: str) -> str:
        attempts.append(url)
        if len(attempts) == 1:
            return fetch(url)
        return "page"

    assert fetch("u") == "page" and fetch("u") == "page"
    assert attempts == ["u", "u"]


# -- keys that cross a process or an engine --------------------------------------------------------


def _hostile_prefix() -> str:
    return "name with spaces\n\t\u00e9" + "x" * 300


def test_memoized_keys_on_memcached_keep_long_and_spaced_calls_apart(
    memcached_server: MemcachedServer,
) -> None:
    servers = [f"{memcached_server.host}:{memcached_server.port}"]
    with (
        MemcachedCache(servers, key_prefix="s17 memo:") as cache,
        MemcachedCache(servers, key_prefix="s17 memo:") as other,
    ):
        cache.clear()
        calls: list[str] = []

        def shout(text: str) -> str:
            calls.append(text)
            return text.upper()

        first = cache.memoize(key_prefix=_hostile_prefix())(shout)
        again = other.memoize(key_prefix=_hostile_prefix())(shout)
        texts = ["a b", "a_b", "a\nb", "é" * 200, "a b" + " " * 250]
        assert [first(t) for t in texts] == [t.upper() for t in texts]
        assert [again(t) for t in texts] == [t.upper() for t in texts]  # hits, not calls
        assert calls == texts
        assert again.invalidate(texts[0]) is True
        assert first(texts[0]) == "A B" and len(calls) == len(texts) + 1


def test_memoized_results_on_redis_are_shared_by_processes_with_other_hash_seeds(
    redis_server: RedisServer,
) -> None:
    code = f"""
from cacheplug import RedisCache
cache = RedisCache(port={redis_server.port}, key_prefix="s17memo:")

@cache.memoize(timeout=60, key_prefix="tagged")
def tagged(tags, options):
    return sorted(tags) + sorted(options)

print(tagged.cache_key(*ARGS))
print(tagged(*ARGS))
"""
    args = "ARGS = ({'alpha', 'beta', 'gamma', 'delta'}, {'x': 1, 'y': {'p', 'q'}})\n"
    with RedisCache(port=redis_server.port, key_prefix="s17memo:") as cache:
        cache.clear()
        child_key, _ = run_python(
            args + code, env={**os.environ, "PYTHONHASHSEED": "7"}
        ).splitlines()

        @cache.memoize(timeout=60, key_prefix="tagged")
        def tagged(tags: set[str], options: dict[str, Any]) -> list[str]:
            raise AssertionError("the other process's result must answer")

        gamma_first = {"gamma", "delta", "alpha", "beta"}
        assert tagged.cache_key(gamma_first, {"y": {"q", "p"}, "x": 1}) == child_key
        assert tagged(gamma_first, {"y": {"q", "p"}, "x": 1}) == [
            "alpha",
            "beta",
            "delta",
            "gamma",
            "x",
            "y",
        ]


@pytest.mark.parametrize("make", ["simple", "file"])
def test_get_or_set_on_a_factory_returning_none_calls_again_and_stores_nothing(
    make: str, tmp_path: Path
) -> None:
    cache: BaseCache = SimpleCache() if make == "simple" else FileSystemCache(tmp_path)
    calls: list[int] = []

    def nothing() -> None:
        calls.append(1)

    assert cache.get_or_set("k", nothing) is None
    assert cache.get_or_set("k", nothing) is None
    assert calls == [1, 1] and cache.has("k") is False
    assert cache.stats()["misses"] == 2


# -- second review: bound objects, partials, subclasses, sentinels, waiters -----------------------


def test_builtin_bound_methods_of_different_objects_keep_their_results() -> None:
    # only types.MethodType named its object: every str.format, dict.get, Pattern.sub... of any
    # object had one key
    cache = SimpleCache()
    greet, part = cache.memoize()("Hello, {}!".format), cache.memoize()("Goodbye, {}!".format)
    assert (greet("Ann"), part("Ann")) == ("Hello, Ann!", "Goodbye, Ann!")
    digits, spaces = cache.memoize()(re.compile(r"\d").sub), cache.memoize()(re.compile(r"\s").sub)
    assert (digits("_", "a 1"), spaces("_", "a 1")) == ("a _", "a_1")
    price, stock = cache.memoize()({"tea": 3}.get), cache.memoize()({"tea": 0}.get)
    assert (price("tea"), stock("tea")) == (3, 0)
    plus_one, plus_two = cache.memoize()((1).__add__), cache.memoize()((2).__add__)
    assert (plus_one(5), plus_two(5)) == (6, 7)
    tea = cache.memoize()(functools.partial({"tea": 4}.get, "tea"))
    assert tea() == 4
    # a method memoized in its class body, memoized again through its instance
    first, second = _Priced("EUR"), _Priced("USD")
    assert (cache.memoize()(first.price)(1), cache.memoize()(second.price)(1)) == (
        "1 EUR",
        "1 USD",
    )
    assert cache.memoize()(len)("ab") == 2  # a builtin of a module: keyed by its name alone


_methods_cache = SimpleCache()


@dataclass
class _Priced:
    currency: str

    @_methods_cache.memoize()
    def price(self, n: int) -> str:
        return f"{n} {self.currency}"

    def plain_price(self, n: int) -> str:
        return f"{n} {self.currency}"


def test_a_memoized_bound_method_or_partial_follows_its_object_as_it_changes() -> None:
    # the object's repr, and a partial's arguments, were read once at decoration: changed
    # objects were served the results of their old state
    cache = SimpleCache()
    prices = _Priced("EUR")
    price = cache.memoize()(prices.plain_price)
    assert price(1) == prices.price(1) == "1 EUR"
    prices.currency = "USD"
    assert price(1) == prices.price(1) == "1 USD"
    prices.currency = "EUR"
    assert price.cache_key(1) == cache.memoize()(_Priced("EUR").plain_price).cache_key(1)
    stock = {"tea": 1}
    level = cache.memoize()(stock.get)
    assert level("tea") == 1
    stock["tea"] = 0
    assert level("tea") == 0
    items = [1, 2]
    total = cache.memoize()(functools.partial(sum, items))
    assert total() == 3
    items.append(3)
    assert total() == 6
    assert total(10) == 16  # the call's own arguments follow the bound ones, as in the call


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # numpy.matrix
def test_a_numpy_subclass_is_keyed_apart_from_an_array_of_the_same_items() -> None:
    cache = SimpleCache()

    @cache.memoize(key_prefix="square")
    def square(x: Any) -> Any:
        return (x * x).tolist()  # elementwise for an array, a matrix product for a matrix

    items = [[1, 2], [3, 4]]
    matrix = np.asmatrix(np.array(items))
    assert (square(np.array(items)), square(matrix)) == ([[1, 4], [9, 16]], [[7, 10], [15, 22]])
    # a plain array keeps the key it had
    assert square.cache_key(np.array(items)) == "square:5aef0f8f921b325825bd4bf810d1c4ba"


def test_a_callable_object_with_an_async_call_gets_the_async_wrapper() -> None:
    # its calls raised TypeError: iscoroutinefunction is False for such an object before 3.12
    cache = SimpleCache()
    calls: list[str] = []

    @dataclass
    class Fetcher:
        base: str

        async def __call__(self, path: str) -> str:
            calls.append(path)
            await asyncio.sleep(0)
            return self.base + path

    fetch = cache.memoize()(Fetcher("https://api/"))
    users = cache.memoize()(functools.partial(Fetcher("https://other/"), "users"))
    assert inspect.iscoroutinefunction(fetch) and inspect.iscoroutinefunction(users)

    async def main() -> list[str]:
        return [await fetch("users"), await fetch("users"), await users(), await users()]

    assert asyncio.run(main()) == ["https://api/users"] * 2 + ["https://other/users"] * 2
    assert calls == ["users", "users"]


_MISSING = object()

_SENTINEL_KEY = """
from cacheplug import SimpleCache

_MISSING = object()
cache = SimpleCache()

@cache.memoize(key_prefix="setting")
def setting(name, default=_MISSING):
    return name

print(setting.cache_key("colour"))
"""


def test_a_sentinel_default_is_keyed_as_the_default() -> None:
    # every call leaving it out raised TypeError, blaming an argument it never passed
    cache = SimpleCache()
    calls: list[str] = []

    @cache.memoize()
    def setting(name: str, default: Any = _MISSING) -> str:
        calls.append(name)
        return f"value of {name}" if default is _MISSING else str(default)

    assert setting("colour") == setting("colour") == "value of colour"
    assert setting("colour", _MISSING) == setting(default=_MISSING, name="colour")
    assert calls == ["colour"]
    assert setting("colour", "red") == "red"
    with pytest.raises(TypeError, match="argument 'default' is shown as <object object at 0x"):
        setting("colour", object())  # another object shown by its address: refused as before
    assert run_python(_SENTINEL_KEY) == run_python(_SENTINEL_KEY)  # one key in every process


def _in_flight(cache: BaseCache, key: str) -> int:
    """How many threads are in the single flight of ``key``: making its call or waiting."""
    flight = cache._flights.get(key)
    return 0 if flight is None else int(flight[1])


def _until(condition: Callable[[], bool]) -> None:
    pause, deadline = threading.Event(), time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "the other threads never came"
        pause.wait(0.001)


def _at_once(threads: int, call: Callable[[], Any]) -> list[Any]:
    """What ``call`` returned (or raised) in each of ``threads`` threads started together."""
    results: list[Any] = []

    def work() -> None:
        try:
            results.append(call())
        except Exception as err:  # the thread reports what it got
            results.append(err)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT)
    assert not any(worker.is_alive() for worker in workers)
    return results


@pytest.mark.parametrize("where", ["NullCache", "a None result", "an outage"])
def test_threads_waiting_are_handed_a_result_the_cache_did_not_keep(where: str) -> None:
    # each waiting thread called the function itself, one after another: 8 threads of a
    # 0.25 s function took 2 s in an outage, on NullCache, or for a None result
    threads = 6
    cache: BaseCache
    if where == "an outage":
        with RedisServer() as server:  # stopped: its port refuses connections
            host, port = server.host, server.port
        cache = RedisCache(host, port)
    else:
        cache = NullCache() if where == "NullCache" else SimpleCache()
    calls: list[int] = []

    def render(n: int) -> list[int] | None:
        calls.append(n)
        if len(calls) == 1:
            _until(lambda: _in_flight(cache, key) == threads)
        return None if where == "a None result" else [n]

    if where == "a None result":
        key = "k"
        results = _at_once(threads, lambda: cache.get_or_set(key, lambda: render(1)))
    else:
        memoized = cache.memoize()(render)
        key = memoized.cache_key(1)
        results = _at_once(threads, lambda: memoized(1))
    assert calls == [1]
    if where == "a None result":
        assert results == [None] * threads
    else:
        assert results == [[1]] * threads
        assert len({id(result) for result in results}) == threads  # each its own copy
    assert cache._flights == {}


class _CountedCopies:
    """A result that counts its deep copies."""

    copies = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        _CountedCopies.copies += 1
        return _CountedCopies()


def test_a_result_the_cache_kept_is_not_copied_for_the_threads_waiting() -> None:
    """Waiters read a kept result from the cache: copying it for them too cost every waiting
    thread a deep copy under the lock (+30% on a 200k-item result), for nothing."""
    cache, threads = SimpleCache(), 6
    calls: list[int] = []

    def build() -> _CountedCopies:
        calls.append(1)
        _until(lambda: _in_flight(cache, "k") == threads)
        return _CountedCopies()

    _CountedCopies.copies = 0
    results = _at_once(threads, lambda: cache.get_or_set("k", build))
    assert calls == [1]
    assert all(isinstance(result, _CountedCopies) for result in results)
    assert _CountedCopies.copies == 0  # SimpleCache pickles it; nobody deep-copies it
    assert cache._flights == {}


class _Uncopyable:
    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        raise TypeError("cannot be copied")


def test_after_an_exception_each_waiting_thread_calls_and_hands_on_its_result() -> None:
    cache = NullCache()
    threads = 4
    calls: list[int] = []

    @cache.memoize()
    def load(n: int) -> Any:
        calls.append(n)
        if len(calls) == 1:
            _until(lambda: _in_flight(cache, load.cache_key(n)) == threads)
            if n == 1:
                raise LookupError("first try")
        return _Uncopyable() if n == 2 else [n]

    results = _at_once(threads, lambda: load(1))
    assert len(calls) == 2  # the failed call, then one of the waiters' for all the others
    assert [type(r).__name__ for r in results].count("LookupError") == 1
    assert [r for r in results if not isinstance(r, Exception)] == [[1]] * (threads - 1)
    # a result that cannot be copied is not handed: each waiter makes its own
    calls.clear()
    results = _at_once(threads, lambda: load(2))
    assert calls == [2] * threads
    assert [type(result) for result in results] == [_Uncopyable] * threads
