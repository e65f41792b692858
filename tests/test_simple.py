"""SimpleCache: the contract, plus what only an in-memory LRU cache promises."""

from __future__ import annotations

import array
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import FakeClock

from cacheplug import ConfigurationError, SerializationError, SimpleCache, get_serializer
from cacheplug.testing import CacheContract, CacheFactory


@pytest.fixture(params=["pickle", "json", "msgpack"])
def serializer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestSimpleCacheContract(CacheContract):
    @pytest.fixture
    def cache_factory(self, clock: FakeClock, serializer: str) -> Iterator[CacheFactory]:
        def make(**kwargs: Any) -> SimpleCache:
            kwargs.setdefault("serializer", serializer)
            return SimpleCache(clock=clock, **kwargs)

        yield make

    @pytest.fixture
    def advance(self, clock: FakeClock) -> Callable[[float], None]:
        return clock.advance


def test_threshold_is_never_exceeded() -> None:
    cache = SimpleCache(threshold=10)
    for i in range(100):
        cache.set(f"k{i}", i)
        assert len(cache) <= 10
    assert cache.stats()["evictions"] == 90


def test_least_recently_used_goes_first() -> None:
    cache = SimpleCache(threshold=3)
    cache.set_many({"a": 1, "b": 2, "c": 3})
    cache.get("a")  # a is now the most recently used
    cache.set("d", 4)
    assert cache.get_many("a", "b", "c", "d") == [1, None, 3, 4]


@pytest.mark.parametrize(
    "touch",
    [
        lambda cache: cache.set("a", 10),
        lambda cache: cache.set("a", 10, timeout=0),
        lambda cache: cache.set_many({"a": 10}),
        lambda cache: cache.inc("a"),
    ],
    ids=["set", "set-forever", "set_many", "inc"],
)
def test_writing_a_key_makes_it_the_most_recently_used(touch: Any) -> None:
    cache = SimpleCache(threshold=3)
    cache.set_many({"a": 1, "b": 2, "c": 3})
    touch(cache)  # a is rewritten in place, and now the most recently used
    cache.set("d", 4)
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get_many("c", "d") == [3, 4]


def test_expired_entries_go_before_live_ones(clock: FakeClock) -> None:
    cache = SimpleCache(threshold=3, clock=clock)
    cache.set("old-but-live", 1, timeout=0)
    cache.set("short", 2, timeout=5)
    cache.set("live", 3, timeout=100)
    clock.advance(10)
    cache.set("new", 4)
    assert cache.get_many("old-but-live", "short", "live", "new") == [1, None, 3, 4]


def test_never_expiring_entries_are_not_preferred_victims(clock: FakeClock) -> None:
    cache = SimpleCache(threshold=2, clock=clock)
    cache.set("forever", 1, timeout=0)
    cache.set("expiring", 2, timeout=100)
    cache.get("forever")  # recently used: the expiring entry is the LRU victim
    cache.set("new", 3)
    assert cache.get_many("forever", "expiring", "new") == [1, None, 3]


def test_overwriting_with_later_expiry_keeps_entry_alive(clock: FakeClock) -> None:
    cache = SimpleCache(threshold=2, clock=clock)
    cache.set("a", 1, timeout=5)
    cache.set("a", 2, timeout=50)  # the old expiry record must not evict it
    cache.set("b", 3, timeout=50)
    clock.advance(10)
    cache.set("c", 4)  # full: no entry is expired, so the LRU one ("a") goes
    assert cache.get_many("a", "b", "c") == [None, 3, 4]
    cache.set("a", 5, timeout=50)
    clock.advance(45)
    cache.set("d", 6)  # b expired at 60 is gone first, a (expires 105) stays
    assert cache.get_many("a", "b", "c", "d") == [5, None, None, 6]


@pytest.mark.parametrize("first_timeout", [100, 0], ids=["later", "never"])
def test_overwriting_with_earlier_expiry_makes_entry_the_first_victim(
    clock: FakeClock, first_timeout: int
) -> None:
    cache = SimpleCache(threshold=3, clock=clock)
    cache.set("a", 1, timeout=first_timeout)
    cache.set("b", 2, timeout=100)
    cache.set("c", 3, timeout=100)
    cache.set("a", 4, timeout=5)  # now "a" expires first; "b" is the least recently used
    clock.advance(10)
    cache.set("d", 5)
    assert cache.get_many("a", "b", "c", "d") == [None, 2, 3, 5]
    assert cache.stats()["evictions"] == 1


def test_expiry_bookkeeping_stays_bounded_under_overwrites(clock: FakeClock) -> None:
    cache = SimpleCache(threshold=100, clock=clock)
    for i in range(20_000):
        cache.set(f"k{i % 50}", i, timeout=1 + (i % 7))
        clock.advance(0.001)
    assert len(cache._expiries) <= 2 * len(cache) + 64


def test_eviction_scales_to_large_caches() -> None:
    cache = SimpleCache(threshold=50_000)
    cache.set_many({f"k{i}": i for i in range(50_000)})
    for i in range(5_000):
        cache.set(f"new{i}", i)
    assert len(cache) == 50_000
    assert cache.get("k4999") is None
    assert cache.get("k5000") == 5000


def test_mutating_after_set_does_not_change_cache() -> None:
    cache = SimpleCache()
    value: dict[str, Any] = {"flat": 1}
    cache.set("flat", value)
    value["flat"] = 2
    nested: dict[str, Any] = {"list": [1], "obj": {"deep": [1]}}
    cache.set("nested", nested)
    nested["obj"]["deep"].append(2)
    assert cache.get("flat") == {"flat": 1}
    assert cache.get("nested") == {"list": [1], "obj": {"deep": [1]}}


class Bytes(bytes):
    pass


def types_of(value: Any) -> Any:
    """The type of ``value`` and, for containers, of everything inside, in order."""
    if isinstance(value, dict):
        return dict, [(types_of(k), types_of(v)) for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return type(value), [types_of(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return type(value), sorted(repr(types_of(item)) for item in value)
    return type(value)


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": "x"},
        [1, 2, 3],
        {1, 2},
        (1, "a"),
        frozenset({1}),
        {"nested": [{"x": 1}]},
        ([1], [2]),
        {"set": {1, 2}, "bytes": b"\x00"},
        # bytes-like objects inside containers keep their own type
        {"buffer": bytearray(b"xy"), "n": [1]},
        [array.array("i", [1, 2])],
        ([bytearray(b"a")], {"k": Bytes(b"q")}),
        {"rows": [[b"m", bytearray(b"z")]]},
        [Bytes(b"sub")],
    ],
    ids=repr,
)
def test_builtin_containers_round_trip_exactly(value: Any) -> None:
    cache = SimpleCache()
    cache.set("key", value)
    got = cache.get("key")
    assert got == value
    assert types_of(got) == types_of(value)
    if isinstance(got, (dict, list, set)):
        assert got is not cache.get("key")


def test_shared_references_survive() -> None:
    cache = SimpleCache()
    inner = [1]
    cache.set("key", [inner, inner])
    got = cache.get("key")
    assert got[0] is got[1]


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def test_custom_objects_are_copied() -> None:
    cache = SimpleCache()
    point = Point(1)
    cache.set("p", {"point": point})
    point.x = 2
    assert cache.get("p")["point"].x == 1


def test_dict_holding_an_unpicklable_value_raises_and_keeps_old_value() -> None:
    cache = SimpleCache()
    cache.set("key", {"rows": [1]})
    with pytest.raises(SerializationError, match="lock"):
        cache.set("key", {"rows": [1], "guard": threading.Lock()})
    assert cache.get("key") == {"rows": [1]}


@pytest.mark.parametrize(("writer", "reader"), [("json", "pickle"), ("pickle", "json")])
def test_entry_written_by_another_serializer_is_a_counted_miss(writer: str, reader: str) -> None:
    cache = SimpleCache(serializer=writer)
    cache.set("key", {"rows": [1, 2]})  # nested: stored as the serializer's bytes
    cache.serializer = get_serializer(reader)
    assert cache.get("key") is None
    assert cache.stats()["errors"] == 1


@pytest.mark.parametrize("threshold", [-1, "10", 1.5, True])
def test_bad_threshold_is_configuration_error(threshold: Any) -> None:
    with pytest.raises(ConfigurationError, match="threshold"):
        SimpleCache(threshold=threshold)


def test_unknown_serializer_name_lists_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="known serializers: json, msgpack, pickle"):
        SimpleCache(serializer="yaml")


def test_cachelib_style_positional_constructor() -> None:
    cache = SimpleCache(10, 60)
    assert (cache.threshold, cache.default_timeout) == (10, 60)


def test_threads_hammering_keep_threshold_and_counts() -> None:
    cache = SimpleCache(threshold=64)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        barrier.wait()
        try:
            for i in range(2_000):
                cache.set(f"t{n}:{i % 100}", i)
                cache.get(f"t{(n + 1) % 8}:{i % 100}")
                cache.inc("shared")
                assert len(cache) <= 64
        except BaseException as err:
            errors.append(err)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert len(cache) <= 64
    # "shared" is used on every iteration, so LRU never evicts it: no increment is lost.
    assert cache.get("shared") == 8 * 2_000


@pytest.mark.parametrize("secret", [None, "s3cret"], ids=["unsigned", "signed"])
@pytest.mark.parametrize("serializer", ["pickle", "json", "msgpack"])
def test_inc_on_a_stored_none_names_the_type(serializer: str, secret: str | None) -> None:
    cache = SimpleCache(serializer=serializer, secret=secret)
    cache.set("k", None)
    with pytest.raises(TypeError, match="'k': it holds a NoneType, not an int"):
        cache.inc("k")
    cache.set("k", {"nested": [1]})
    with pytest.raises(TypeError, match="'k': it holds a dict, not an int"):
        cache.inc("k")
    assert cache.get("k") == {"nested": [1]}


def test_born_expired_writes_count_as_sets_in_set_and_set_many() -> None:
    one, many = SimpleCache(), SimpleCache()
    for cache in (one, many):
        cache.set("a", 1)
    one.set("a", 2, timeout=-1)
    one.set("b", 2, timeout=-1)
    assert many.set_many({"a": 2, "b": 2}, timeout=-1) == ["a", "b"]
    assert one.stats()["sets"] == many.stats()["sets"] == 3
    assert one.get_many("a", "b") == many.get_many("a", "b") == [None, None]


@pytest.mark.parametrize("third", ["json", get_serializer("json"), None])
def test_a_serializer_given_third_says_to_pass_it_by_keyword(third: Any) -> None:
    # cachelib's third argument is ignore_delete_many_errors: a serializer must not vanish there
    with pytest.raises(TypeError, match="pass serializer= by keyword"):
        SimpleCache(500, 300, third)


@pytest.fixture
def switch_often() -> Iterator[None]:
    """Switch threads as often as CPython allows, so races show up in a short run."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("switch_often")
def test_get_or_set_stats_add_up_under_threads() -> None:
    # A thread that waited for another's factory takes back the miss of its first look; another
    # thread detected its own miss by comparing the misses counter before and after, so that
    # take-back hid it and the miss counted twice (9 runs in 10 came out wrong).
    threads, calls = 8, 1_500
    for _ in range(5):
        cache = SimpleCache(threshold=calls)
        barrier = threading.Barrier(threads)

        def work(cache: SimpleCache, barrier: threading.Barrier) -> None:
            barrier.wait()
            for i in range(calls):
                cache.get_or_set(f"k{i}", int)

        workers = [threading.Thread(target=work, args=(cache, barrier)) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        stats = cache.stats()
        assert (stats["hits"] + stats["misses"], stats["misses"]) == (threads * calls, calls)
