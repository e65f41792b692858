"""Bounded stress: threads and processes sharing a cache on every backend lose nothing."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cacheplug import (
    BaseCache,
    FileSystemCache,
    MemcachedCache,
    RedisCache,
    SimpleCache,
    get_serializer,
)

THREADS = 8
OPS = 4_000


def test_mixed_workload_loses_no_increment() -> None:
    # 190 keys + 9 counters fit: LRU eviction must not be what loses a counter here.
    cache = SimpleCache(threshold=200, default_timeout=0)
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []
    expected = [0] * THREADS
    shared = [0] * THREADS
    sizes: list[int] = []

    def work(n: int) -> None:
        rng = random.Random(n)
        barrier.wait()
        try:
            for i in range(OPS):
                op = rng.randrange(6)
                key = f"k{rng.randrange(190)}"
                if op == 0:
                    cache.set(key, {"n": n, "i": i})
                elif op == 1:
                    value = cache.get(key)
                    # set writes {"n", "i"} dicts, add writes [n, i] lists: never anything else
                    assert value is None or (
                        set(value) == {"n", "i"} if isinstance(value, dict) else len(value) == 2
                    )
                elif op == 2:
                    cache.add(key, [n, i])
                elif op == 3:
                    cache.delete(key)
                elif op == 4:
                    cache.inc(f"counter:{n}")
                    expected[n] += 1
                else:
                    cache.inc("counter:shared", 2)
                    shared[n] += 2
                sizes.append(len(cache))
        except BaseException as err:
            errors.append(err)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    assert max(sizes) <= 200
    for n in range(THREADS):
        assert cache.get(f"counter:{n}") == expected[n]
    assert cache.get("counter:shared") == sum(shared) > 0


def test_shared_counter_exact_under_contention() -> None:
    cache = SimpleCache(threshold=50)
    barrier = threading.Barrier(THREADS)

    def work() -> None:
        barrier.wait()
        for i in range(OPS):
            cache.inc("hot")
            cache.set(f"filler:{threading.get_ident()}:{i % 10}", i)
            cache.dec("cold", 1)

    workers = [threading.Thread(target=work) for _ in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert cache.get("hot") == THREADS * OPS
    assert cache.get("cold") == -THREADS * OPS
    assert len(cache) <= 50


# -- every backend -------------------------------------------------------------------------------

MakeCache = Callable[..., BaseCache]
_prefixes = itertools.count()


def unique_prefix() -> str:
    return f"stress{os.getpid()}-{next(_prefixes)}:"


@pytest.fixture(params=["simple", "filesystem", "redis", "cluster", "memcached"])
def make_cache(request: pytest.FixtureRequest, tmp_path: Path) -> MakeCache:
    """Builds caches of one backend that share one store (SimpleCache: none to share)."""
    kind = request.param
    if kind == "simple":
        return SimpleCache
    if kind == "filesystem":
        return lambda **kwargs: FileSystemCache(str(tmp_path), **kwargs)
    if kind == "memcached":
        server = request.getfixturevalue("memcached_server")
        return lambda **kwargs: MemcachedCache([f"{server.host}:{server.port}"], **kwargs)
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        return lambda **kwargs: RedisCache(host=server.host, port=server.port, **kwargs)
    nodes = request.getfixturevalue("redis_cluster").nodes
    return lambda **kwargs: RedisCache(startup_nodes=nodes, **kwargs)


def engine_only(make_cache: MakeCache) -> None:
    if make_cache is SimpleCache:
        pytest.skip("a SimpleCache is one process's store")


def run_threads(count: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run ``work(n)`` in ``count`` threads started together; the exceptions they raised."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        barrier.wait()
        try:
            work(n)
        except BaseException as err:
            errors.append(err)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    return errors


def lookups(cache: BaseCache, before: dict[str, int]) -> tuple[int, int]:
    after = cache.stats()
    return after["hits"] - before["hits"], after["misses"] - before["misses"]


def held_until_all_missed(cache: BaseCache, misses: int, result: Any) -> Callable[[], Any]:
    """A factory that waits (bounded) until ``misses`` are counted, so every caller contends."""
    calls: list[int] = []

    def factory() -> Any:
        calls.append(1)
        pause, deadline = threading.Event(), time.monotonic() + 2
        while cache.stats()["misses"] < misses and time.monotonic() < deadline:
            pause.wait(0.001)
        return result

    factory.calls = calls  # type: ignore[attr-defined]
    return factory


def test_get_or_set_and_memoize_count_one_lookup_per_call(make_cache: MakeCache) -> None:
    # A thread that waited for another's factory counted a miss and then a hit: 15 lookups for 8.
    cache = make_cache(key_prefix=unique_prefix())
    before = cache.stats()
    factory = held_until_all_missed(cache, before["misses"] + THREADS, {"v": 1})
    results: list[Any] = []
    assert run_threads(THREADS, lambda n: results.append(cache.get_or_set("k", factory))) == []
    assert results == [{"v": 1}] * THREADS
    assert factory.calls == [1]  # type: ignore[attr-defined]
    assert lookups(cache, before) == (THREADS - 1, 1)  # a miss is a call that ran the factory

    before = cache.stats()
    computed = held_until_all_missed(cache, before["misses"] + THREADS, 49)
    square = cache.memoize()(lambda x: computed())
    assert run_threads(THREADS, lambda n: results.append(square(7))) == []
    assert results[THREADS:] == [49] * THREADS
    assert computed.calls == [1]  # type: ignore[attr-defined]
    assert lookups(cache, before) == (THREADS - 1, 1)


def test_get_or_set_with_a_failing_factory(make_cache: MakeCache) -> None:
    cache = make_cache(key_prefix=unique_prefix())
    before = cache.stats()
    calls: list[int] = []

    def factory() -> int:
        calls.append(1)
        raise LookupError("no value")

    errors = run_threads(THREADS, lambda n: cache.get_or_set("k", factory))
    # nothing was stored, so every waiter computes in turn and sees its own failure
    assert [type(err) for err in errors] == [LookupError] * THREADS
    assert len(calls) == THREADS
    assert lookups(cache, before) == (0, THREADS)
    assert cache._flights == {}  # no per-key lock left behind
    assert cache.get_or_set("k", lambda: 5) == 5
    assert cache.get("k") == 5


def test_add_has_one_winner_per_key_among_threads(make_cache: MakeCache) -> None:
    cache = make_cache(key_prefix=unique_prefix())
    winners: dict[int, list[int]] = {}

    def work(n: int) -> None:
        for i in range(40):
            if cache.add(f"k{i}", n):
                winners.setdefault(i, []).append(n)

    assert run_threads(THREADS, work) == []
    assert sorted(winners) == list(range(40))
    assert all(len(won) == 1 for won in winners.values()), winners
    assert [cache.get(f"k{i}") for i in range(40)] == [winners[i][0] for i in range(40)]


def _count_and_race(cache: BaseCache, rounds: int, keys: int, wins: Any) -> None:
    """In a child process: 4 threads inc and dec, and race for ``add`` on ``keys`` keys."""
    won: list[tuple[int, int]] = []

    def work(n: int) -> None:
        for i in range(rounds):
            cache.inc("up")
            cache.dec("down", 3)
            if i < keys and cache.add(f"add{i}", f"{os.getpid()}/{n}"):
                won.append((i, n))

    errors = run_threads(4, work)
    wins.put([(i, f"{os.getpid()}/{n}") for i, n in won])
    if errors:
        raise errors[0]


@pytest.mark.parametrize(
    "options",
    [{}, {"key_prefix": "p"}, {"key_prefix": "s", "secret": "k3y", "serializer": "json"}],
    ids=["plain", "prefix", "prefix-secret-json"],
)
def test_inc_dec_and_add_from_two_processes(make_cache: MakeCache, options: dict[str, Any]) -> None:
    engine_only(make_cache)
    options = {**options, "key_prefix": options.get("key_prefix", "") + unique_prefix()}
    cache = make_cache(**options)
    cache.get("warm")  # the children inherit connections the parent has used
    rounds, keys = 100, 30
    context = multiprocessing.get_context("fork")
    wins = context.Queue()
    children = [
        context.Process(target=_count_and_race, args=(cache, rounds, keys, wins)) for _ in range(2)
    ]
    for child in children:
        child.start()
    won = [item for _ in children for item in wins.get(timeout=60)]
    for child in children:
        child.join(timeout=60)
    assert [child.exitcode for child in children] == [0, 0]
    assert cache.get("up") == 2 * 4 * rounds
    assert cache.get("down") == -3 * 2 * 4 * rounds
    assert sorted(i for i, _ in won) == list(range(keys))  # one winner per key
    assert all(cache.get(f"add{i}") == who for i, who in won)


def test_many_calls_interleaved_with_clear_stay_in_their_prefix(make_cache: MakeCache) -> None:
    engine_only(make_cache)
    base = unique_prefix()
    mine, neighbour = make_cache(key_prefix=base + "a:"), make_cache(key_prefix=base + "b:")
    kept = {f"n{i}": i for i in range(30)}
    assert sorted(neighbour.set_many(kept)) == sorted(kept)
    done = threading.Event()
    seen: list[Any] = []

    def work(n: int) -> None:
        if n == 0:
            while not done.is_set():
                assert mine.clear() is True
            return
        try:
            for j in range(25):
                keys = [f"k{n}.{i}" for i in range(8)]
                mine.set_many(dict.fromkeys(keys, j))
                seen.extend(value for value in mine.get_many(*keys) if value not in (None, j))
                mine.delete_many(*keys[::2])
        finally:
            if n == 1:
                done.set()  # thread 1 ends last or close to it; bounded either way

    assert run_threads(4, work) == []
    assert seen == []
    assert neighbour.get_dict(*kept) == kept


def test_reassigning_key_prefix_and_serializer_under_load(make_cache: MakeCache) -> None:
    # cachelib users reassign these at start-up; if it happens under load, a reader gets the
    # value it wrote or a miss, never another value, and nothing raises
    base = unique_prefix()
    cache = make_cache(key_prefix=base)
    serializers = [get_serializer(name) for name in ("pickle", "json", "msgpack")]
    done = threading.Event()
    wrong: list[Any] = []

    def work(n: int) -> None:
        if n == 0:
            for j in range(60):
                cache.key_prefix = f"{base}{j % 3}"
                cache.serializer = serializers[j % 3]
                done.wait(0.002)
            done.set()
            return
        i = 0
        while not done.is_set():
            i += 1
            key = f"k{n}.{i % 4}"
            cache.set(key, {"n": n, "i": i})
            values = [cache.get(key), *cache.get_many(key, f"k{n}.0")]
            wrong.extend(v for v in values if v is not None and v.get("n") != n)
            cache.add(f"{key}a", [n])
            cache.has(key)
            cache.delete(f"{key}a")

    assert run_threads(4, work) == []
    assert wrong == []


def test_an_unreadable_entry_counts_as_a_miss(make_cache: MakeCache) -> None:
    # MemcachedCache counted it as a hit (and an error); the other backends as a miss
    engine_only(make_cache)
    prefix = unique_prefix()
    make_cache(key_prefix=prefix).set_many({"a": {"x": 1}, "b": [1]})
    reader = make_cache(key_prefix=prefix, serializer="json")
    assert [reader.get("a"), *reader.get_many("a", "b", "c")] == [None] * 4
    stats = reader.stats()
    assert (stats["hits"], stats["misses"], stats["errors"]) == (0, 4, 3)
