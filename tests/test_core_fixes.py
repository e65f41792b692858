"""Review fixes on the in-memory backends: truthiness, a negative default timeout, NullCache's
counters, the recency of a stored None, and copies by pickle (a ``spawn`` child included)."""

from __future__ import annotations

import copy
import multiprocessing
import pickle
from typing import Any, ClassVar

import pytest
from conftest import FakeClock

from cacheplug import NullCache, SerializationError, SimpleCache

SPAWN = multiprocessing.get_context("spawn")
WAIT = 60.0
SERIALIZERS = ["pickle", "json", "msgpack"]


# -- 1. a cache is always truthy ---------------------------------------------------------------


def test_an_empty_simple_cache_is_truthy_so_or_keeps_it() -> None:
    app_cache = SimpleCache()
    assert len(app_cache) == 0
    assert bool(app_cache) is True
    assert (app_cache or SimpleCache()) is app_cache


class _SizedCache(NullCache):
    """A third-party backend that counts its entries (none)."""

    def __len__(self) -> int:
        return 0


def test_every_backend_is_truthy_even_one_defining_len() -> None:
    for cache in (_SizedCache(), NullCache()):
        assert bool(cache) is True, f"an empty {type(cache).__name__} is falsy"


# -- 2. a negative default_timeout, reassigned, stores nothing on set --------------------------


def _full_cache(clock: FakeClock) -> SimpleCache:
    cache = SimpleCache(threshold=2, clock=clock)
    cache.set("a", 1)
    cache.set("b", 2)
    return cache


def test_set_with_a_negative_default_timeout_is_born_expired_and_evicts_nothing(
    clock: FakeClock,
) -> None:
    by_default, explicit = _full_cache(clock), _full_cache(clock)
    by_default.default_timeout = -1
    assert by_default.set("c", 3) is True
    assert explicit.set("c", 3, timeout=-1) is True
    for cache in (by_default, explicit):
        assert cache.has("c") is False
        assert cache.get_many("a", "b") == [1, 2], "a live entry was evicted for a dead one"
        assert len(cache) == 2
    assert by_default.stats() == explicit.stats()
    assert by_default.stats()["evictions"] == 0


def test_overwrite_with_a_negative_default_timeout_removes_the_key(clock: FakeClock) -> None:
    cache = _full_cache(clock)
    cache.default_timeout = -0.5
    assert cache.set("a", {"x": 1}) is True
    assert len(cache) == 1, "a dead entry took the place of the old one"
    assert cache.has("a") is False


# -- 3. NullCache counts and refuses counts as SimpleCache does --------------------------------


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_null_cache_counts_inc_and_dec_as_sets_as_simple_cache_does(serializer: str) -> None:
    null, simple = NullCache(serializer=serializer), SimpleCache(serializer=serializer)
    for cache in (null, simple):
        assert cache.inc("n", 3) == 3
        cache.dec("m", 2)
    assert null.stats()["sets"] == simple.stats()["sets"] == 2


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@pytest.mark.parametrize("delta", [2**64, 2**70, -(2**63) - 1])
def test_null_cache_refuses_a_count_the_serializer_cannot_hold(serializer: str, delta: int) -> None:
    for cache in (SimpleCache(serializer=serializer), NullCache(serializer=serializer)):
        with pytest.raises(OverflowError, match="cannot store it"):
            cache.inc("n", delta)
        with pytest.raises(OverflowError, match="cannot store it"):
            cache.dec("n", -delta)
        assert cache.stats()["sets"] == 0, type(cache).__name__
        assert cache.inc("n", 2**64 - 1) == 2**64 - 1  # the largest they hold still counts


# -- 4. reading a stored None is no use for LRU ------------------------------------------------


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_get_of_a_stored_none_does_not_make_it_recently_used(serializer: str) -> None:
    cache = SimpleCache(threshold=3, serializer=serializer)
    cache.set_many({"none": None, "b": 1, "c": 2})
    misses = cache.stats()["misses"]
    assert cache.get("none") is None
    assert cache.stats()["misses"] == misses + 1
    cache.set("d", 3)
    assert cache.has("none") is False, "reading a stored None kept it over older entries"
    assert cache.get_many("b", "c", "d") == [1, 2, 3]


class _NoNoneSerializer:
    """A serializer that cannot encode None."""

    def dumps(self, value: Any) -> bytes:
        if value is None:
            raise ValueError("None is not storable here")
        return pickle.dumps(value)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


def test_a_serializer_refusing_none_still_refuses_set_of_none() -> None:
    cache = SimpleCache(serializer=_NoNoneSerializer())
    cache.set("k", 1)
    with pytest.raises(SerializationError, match="None is not storable here"):
        cache.set("k", None)
    assert cache.get("k") == 1


# -- 5. copies by pickle -----------------------------------------------------------------------


class _RebootedClock(FakeClock):
    """A fake clock whose pickled copy starts near zero, as a monotonic clock on another machine
    does; each instance is noted so a test can move the copy's clock."""

    made: ClassVar[list[_RebootedClock]] = []

    def __init__(self, start: float = 1_000_000.0) -> None:
        super().__init__(start)
        self.made.append(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_RebootedClock, (5.0,))


def test_null_cache_pickles_with_its_options() -> None:
    cache = NullCache(default_timeout=60, key_prefix="app:", serializer="json", secret="s3cret")
    cache.set("k", 1)
    clone = pickle.loads(pickle.dumps(cache))
    assert type(clone) is NullCache and repr(clone) == repr(cache)
    assert clone.ignore_delete_many_errors is True
    assert clone.stats() == dict.fromkeys(cache.stats(), 0)
    assert clone.inc("n", 2) == 2 and clone.stats()["sets"] == 1


def test_simple_cache_pickles_with_its_live_entries_and_their_time_left() -> None:
    clock = _RebootedClock()
    cache = SimpleCache(threshold=3, clock=clock, key_prefix="app:", serializer="json")
    cache.set("forever", {"a": [1, 2]}, timeout=0)
    cache.set("short", "s", timeout=10)
    cache.set("gone", "g", timeout=1)
    clock.advance(4)  # short has 6 s left, gone expired
    clone = pickle.loads(pickle.dumps(cache))
    clone_clock = _RebootedClock.made[-1]
    assert clone_clock is not clock and clone_clock() == 5.0
    assert repr(clone) == repr(cache) and clone.threshold == 3
    assert clone.stats() == {**dict.fromkeys(cache.stats(), 0), "size": 2}
    assert clone.get_many("forever", "short", "gone") == [{"a": [1, 2]}, "s", None]
    clone_clock.advance(5.9)
    assert clone.has("short") is True
    clone_clock.advance(0.2)
    assert clone.has("short") is False
    assert clone.has("forever") is True


def test_a_simple_cache_copy_keeps_lru_order_secret_and_is_independent() -> None:
    cache = SimpleCache(threshold=3, secret="s3cret", serializer="msgpack")
    cache.set_many({"a": [1], "b": [2], "c": [3]})
    cache.get("a")  # b is now the least recently used
    clone = copy.deepcopy(cache)
    assert clone.get("a") == [1]  # signed entries still verify: the secret came along
    clone.set("d", [4])
    assert clone.get_many("a", "b", "c", "d") == [[1], None, [3], [4]]
    assert cache.get_many("a", "b", "c", "d") == [[1], [2], [3], None]
    assert clone.inc("n") == 1 and cache.has("n") is False


def _child_uses_its_copies(simple: SimpleCache, null: NullCache, results: Any) -> None:
    got = simple.get("from parent")
    simple.set("from child", "x")
    results.put((got, simple.inc("visits"), simple.get("from child"), simple.stats()))
    results.put((null.set("k", 1), null.get("k"), null.inc("n", 4), null.stats()))


def test_a_spawned_child_gets_working_copies_of_simple_and_null_caches() -> None:
    simple, null = SimpleCache(secret="s3cret"), NullCache(serializer="json")
    simple.set("from parent", {"hello": "world"})
    simple.inc("visits")
    results = SPAWN.Queue()
    child = SPAWN.Process(target=_child_uses_its_copies, args=(simple, null, results))
    child.start()
    try:
        got, visits, own, stats = results.get(timeout=WAIT)
        assert (got, visits, own) == ({"hello": "world"}, 2, "x")
        assert (stats["hits"], stats["sets"], stats["size"]) == (2, 2, 3)
        assert results.get(timeout=WAIT) == (
            True,
            None,
            4,
            {"hits": 0, "misses": 1, "sets": 2, "deletes": 0, "errors": 0, "evictions": 0},
        )
    finally:
        child.join(timeout=WAIT)
    assert child.exitcode == 0
    assert simple.has("from child") is False  # the child's copy is its own
    assert simple.inc("visits") == 2
