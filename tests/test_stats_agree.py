"""stats() means the same on every backend: one operation, one count, wherever it runs.

Each step below prepares a fresh cache, then makes one call and checks how that call moved
``stats()``: the same on SimpleCache, FileSystemCache, RedisCache (one server and a cluster)
and MemcachedCache, plain, with a ``key_prefix`` and with a ``secret``. What each counter
counts is what docs/contract.md and docs/backends.md say: a lookup is one hit or one miss
(``get_or_set`` and ``memoize`` count one per call), an unreadable entry is a miss and an
error, a write that stores (also one born expired) is a set, a delete that answers True is a
delete, ``has`` and ``clear`` count nothing, and an engine failure is an error, not a miss.
``evictions`` and ``size`` are left out: only SimpleCache and FileSystemCache know them.

Expired entries: SimpleCache and FileSystemCache run on a fake clock; on Redis the entry is
given a 1 ms lifetime by the server (PEXPIRE), on memcached it is written with an exptime in
the past; both engines then hold an entry they no longer serve, as after a real expiry.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock
from servers import MemcachedServer, RedisCluster, RedisServer

from cacheplug import BaseCache, FileSystemCache, MemcachedCache, RedisCache, SimpleCache

BACKENDS = ("simple", "file", "redis", "redis-cluster", "memcached")
ENGINES = ("redis", "redis-cluster", "memcached")
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "prefixed": {"key_prefix": "stats:"},
    "signed": {"secret": "not-a-real-secret"},
}
COUNTERS = ("hits", "misses", "sets", "deletes", "errors")
SHORT = 10  # seconds an entry that is made to expire lives on the fake clock
WAIT = 5.0  # bound of every wait for a server


def _refuse_to_load() -> None:
    raise ValueError("this stored value cannot be read back")


class Unreadable:
    """A value every serializer here writes and no ``loads`` reads back: unpickling it raises."""

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return _refuse_to_load, ()


@dataclass
class Harness:
    """A fresh cache of one backend, and a way to make its entries expire."""

    backend: str
    cache: BaseCache
    clock: FakeClock | None

    def set_expired(self, key: str, value: Any = "old") -> None:
        """Leave an entry under ``key`` that has expired, as after its lifetime ran out."""
        if self.clock is not None:
            assert self.cache.set(key, value, timeout=SHORT)
            self.clock.advance(2 * SHORT)
        elif self.backend == "memcached":
            assert self.cache.set(key, value, timeout=-1)  # an exptime in the past
        else:
            assert self.cache.set(key, value, timeout=0)
            assert isinstance(self.cache, RedisCache)
            client = self.cache._write_client
            name = self.cache.key_prefix + key
            client.pexpire(name, 1)
            deadline = time.monotonic() + WAIT
            while client.pttl(name) != -2:  # bounded: the server's clock, not ours
                assert time.monotonic() < deadline, f"{name!r} did not expire"
        assert not self.cache.has(key)

    def counts(self) -> dict[str, int]:
        stats = self.cache.stats()
        return {name: stats[name] for name in COUNTERS}


def build(backend: str, options: dict[str, Any], request: pytest.FixtureRequest) -> Harness:
    clock: FakeClock | None = None
    cache: BaseCache
    if backend == "simple":
        clock = FakeClock()
        cache = SimpleCache(clock=clock, **options)
    elif backend == "file":
        clock = FakeClock(time.time())
        root: Path = request.getfixturevalue("tmp_path")
        cache = FileSystemCache(str(root / "cache"), clock=clock, **options)
    elif backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        cache = RedisCache(server.host, server.port, **options)
    elif backend == "redis-cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cache = RedisCache(startup_nodes=cluster.nodes, **options)
    else:
        memcached: MemcachedServer = request.getfixturevalue("memcached_server")
        cache = MemcachedCache([f"{memcached.host}:{memcached.port}"], **options)
    return Harness(backend, cache, clock)


def key() -> str:
    return f"k-{uuid.uuid4().hex}"


# -- steps: each prepares its entries and returns the one call whose counts are checked ------------

Step = Callable[[Harness], Callable[[], Any]]
STEPS: dict[str, tuple[Step, dict[str, int]]] = {}


def step(expected: dict[str, int]) -> Callable[[Step], Step]:
    """Register a step with the counters its call moves (the others stay)."""

    def register(func: Step) -> Step:
        STEPS[func.__name__] = (func, expected)
        return func

    return register


@step({"hits": 1})
def get_hit(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.set(k, [1, 2])
    return lambda: h.cache.get(k)


@step({"misses": 1})
def get_miss(h: Harness) -> Callable[[], Any]:
    k = key()
    return lambda: h.cache.get(k)


@step({"misses": 1})
def get_expired(h: Harness) -> Callable[[], Any]:
    k = key()
    h.set_expired(k)
    return lambda: h.cache.get(k)


@step({"misses": 1, "errors": 1})
def get_unreadable(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.set(k, Unreadable())
    return lambda: h.cache.get(k)


@step({"misses": 1})
def get_stored_none(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.set(k, None)  # reads like a miss (docs/contract.md), so it counts as one
    return lambda: h.cache.get(k)


@step({"hits": 1, "misses": 3})
def get_many_stored_none(h: Harness) -> Callable[[], Any]:
    k, none = key(), key()
    h.cache.set_many({k: [1], none: None})
    return lambda: h.cache.get_many(none, k, key(), none)


def _many_entries(h: Harness) -> tuple[str, str, str, str]:
    """A hit, a miss, an unreadable entry and an expired one."""
    hit, miss, bad, old = key(), key(), key(), key()
    h.cache.set(hit, {"nested": [1]})
    h.cache.set(bad, Unreadable())
    h.set_expired(old)
    return hit, miss, bad, old


@step({"hits": 3, "misses": 5, "errors": 2})
def get_many_mixed(h: Harness) -> Callable[[], Any]:
    hit, miss, bad, old = _many_entries(h)
    return lambda: h.cache.get_many(hit, miss, hit, bad, old, miss, hit, bad)


@step({"hits": 2, "misses": 2})
def get_many_readable(h: Harness) -> Callable[[], Any]:
    hit, miss, _, old = _many_entries(h)
    return lambda: h.cache.get_many(hit, miss, hit, old)


@step({"hits": 3, "misses": 5, "errors": 2})
def get_dict_mixed(h: Harness) -> Callable[[], Any]:
    hit, miss, bad, old = _many_entries(h)
    return lambda: h.cache.get_dict(hit, miss, hit, bad, old, miss, hit, bad)


@step({})
def get_many_nothing(h: Harness) -> Callable[[], Any]:
    return h.cache.get_many


@step({"sets": 1})
def set_new(h: Harness) -> Callable[[], Any]:
    k = key()
    return lambda: h.cache.set(k, [1])


@step({"sets": 1})
def set_over(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.set(k, [1])
    return lambda: h.cache.set(k, [2])


@step({"sets": 1})
def set_born_expired_over(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.set(k, [1])
    return lambda: h.cache.set(k, [2], timeout=-1)


@step({"sets": 1})
def set_born_expired_new(h: Harness) -> Callable[[], Any]:
    k = key()
    return lambda: h.cache.set(k, [2], timeout=-1)


@step({"sets": 1})
def add_new(h: Harness) -> Callable[[], Any]:
    k = key()
    return lambda: h.cache.add(k, [1])


@step({})
def add_present(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.set(k, [1])
    return lambda: h.cache.add(k, [2])


@step({"sets": 1})
def add_over_expired(h: Harness) -> Callable[[], Any]:
    k = key()
    h.set_expired(k)
    return lambda: h.cache.add(k, [2])


@step({"sets": 1})
def add_born_expired_new(h: Harness) -> Callable[[], Any]:
    k = key()
    return lambda: h.cache.add(k, [1], timeout=-1)


@step({})
def add_born_expired_present(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.set(k, [1])
    return lambda: h.cache.add(k, [2], timeout=-1)


@step({"sets": 3})
def set_many_three(h: Harness) -> Callable[[], Any]:
    a, b = key(), key()
    h.cache.set(a, [0])
    return lambda: h.cache.set_many({a: [1], b: [2], key(): 3})


@step({"sets": 2})
def set_many_born_expired(h: Harness) -> Callable[[], Any]:
    a = key()
    h.cache.set(a, [0])
    return lambda: h.cache.set_many({a: [1], key(): [2]}, timeout=-1)


@step({"deletes": 1})
def delete_present(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.set(k, [1])
    return lambda: h.cache.delete(k)


@step({})
def delete_missing(h: Harness) -> Callable[[], Any]:
    k = key()
    return lambda: h.cache.delete(k)


@step({})
def delete_expired(h: Harness) -> Callable[[], Any]:
    k = key()
    h.set_expired(k)
    return lambda: h.cache.delete(k)


@step({"deletes": 1})
def delete_unreadable(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.set(k, Unreadable())
    return lambda: h.cache.delete(k)


@step({"deletes": 2})
def delete_many_mixed(h: Harness) -> Callable[[], Any]:
    a, b, old = key(), key(), key()
    h.cache.set_many({a: [1], b: [2]})
    h.set_expired(old)
    return lambda: h.cache.delete_many(a, a, key(), old, b, b)


@step({})
def has_each(h: Harness) -> Callable[[], Any]:
    present, bad, old = key(), key(), key()
    h.cache.set(present, [1])
    h.cache.set(bad, Unreadable())
    h.set_expired(old)
    return lambda: [h.cache.has(k) for k in (present, bad, old, key())]


@step({})
def clear_all(h: Harness) -> Callable[[], Any]:
    h.cache.set_many({key(): [1], key(): 2})
    return h.cache.clear


@step({"sets": 1})
def inc_new(h: Harness) -> Callable[[], Any]:
    k = key()
    return lambda: h.cache.inc(k, 5)


@step({"sets": 1})
def inc_existing(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.set(k, 2)
    return lambda: h.cache.inc(k)


@step({"sets": 1})
def inc_over_expired(h: Harness) -> Callable[[], Any]:
    k = key()
    h.set_expired(k, 40)
    return lambda: h.cache.inc(k)


@step({"sets": 1})
def dec_existing(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.inc(k, 3)
    return lambda: h.cache.dec(k, 7)


@step({})
def inc_refused(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.set(k, "text")

    def call() -> None:
        with pytest.raises(TypeError):
            h.cache.inc(k)

    return call


@step({"hits": 1})
def get_or_set_hit(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.set(k, [1])
    return lambda: h.cache.get_or_set(k, lambda: pytest.fail("factory ran on a hit"))


@step({"misses": 1, "sets": 1})
def get_or_set_miss(h: Harness) -> Callable[[], Any]:
    k = key()
    return lambda: h.cache.get_or_set(k, lambda: [1])


@step({"misses": 1, "sets": 1})
def get_or_set_expired(h: Harness) -> Callable[[], Any]:
    k = key()
    h.set_expired(k)
    return lambda: h.cache.get_or_set(k, lambda: [1])


@step({"misses": 1, "errors": 1, "sets": 1})
def get_or_set_unreadable(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.set(k, Unreadable())
    return lambda: h.cache.get_or_set(k, lambda: [1])


@step({"misses": 1, "sets": 1})
def get_or_set_stored_none(h: Harness) -> Callable[[], Any]:
    k = key()
    h.cache.set(k, None)
    return lambda: h.cache.get_or_set(k, lambda: [1])


@step({"misses": 1})
def get_or_set_factory_raises(h: Harness) -> Callable[[], Any]:
    k = key()

    def factory() -> Any:
        raise LookupError("no value")

    def call() -> None:
        with pytest.raises(LookupError):
            h.cache.get_or_set(k, factory)

    return call


@step({"misses": 1})
def get_or_set_none(h: Harness) -> Callable[[], Any]:
    k = key()
    return lambda: h.cache.get_or_set(k, lambda: None)


def _memoized(h: Harness, returns: Any) -> Callable[[int], Any]:
    prefix = key()  # one function per step: a cache that outlives the step keeps no result

    @h.cache.memoize(key_prefix=prefix)
    def compute(n: int) -> Any:
        return returns

    return compute


@step({"misses": 1, "sets": 1})
def memoize_first_call(h: Harness) -> Callable[[], Any]:
    compute = _memoized(h, [1])
    return lambda: compute(1)


@step({"hits": 1})
def memoize_second_call(h: Harness) -> Callable[[], Any]:
    compute = _memoized(h, [1])
    compute(1)
    return lambda: compute(1)


@step({"misses": 1, "errors": 1, "sets": 1})
def memoize_unreadable(h: Harness) -> Callable[[], Any]:
    compute = _memoized(h, [1])
    h.cache.set(compute.cache_key(1), Unreadable())  # type: ignore[attr-defined]
    return lambda: compute(1)


@step({"misses": 1})
def memoize_none(h: Harness) -> Callable[[], Any]:
    compute = _memoized(h, None)
    return lambda: compute(1)


@step({"misses": 1, "errors": 1, "sets": 1, "hits": 1})
def memoize_async_unreadable_waiter(h: Harness) -> Callable[[], Any]:
    prefix = key()

    @h.cache.memoize(key_prefix=prefix)
    async def compute(n: int) -> Any:
        await asyncio.sleep(0)  # the other task finds the call in progress and waits
        return [n]

    h.cache.set(compute.cache_key(1), Unreadable())  # type: ignore[attr-defined]

    async def both() -> list[Any]:
        return list(await asyncio.gather(compute(1), compute(1)))

    return lambda: asyncio.run(both())


@step({"deletes": 1})
def memoize_invalidate(h: Harness) -> Callable[[], Any]:
    compute = _memoized(h, [1])
    compute(1)
    return lambda: compute.invalidate(1)  # type: ignore[attr-defined]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    ("step_name", "backend"),
    [pytest.param(name, backend, id=f"{name}-{backend}") for name in STEPS for backend in BACKENDS],
)
def test_one_call_moves_the_same_counters(
    step_name: str, backend: str, variant: str, request: pytest.FixtureRequest
) -> None:
    prepare, expected = STEPS[step_name]
    h = build(backend, VARIANTS[variant], request)
    with h.cache:
        call = prepare(h)
        before = h.counts()
        call()
        after = h.counts()
    moved = {name: after[name] - before[name] for name in COUNTERS if after[name] != before[name]}
    assert moved == expected


# -- an outage: every call counts errors, never a lookup or a write ------------------------------

OUTAGE_CALLS: dict[str, tuple[Callable[[BaseCache], Any], int]] = {
    "get": (lambda c: c.get("a"), 1),
    "get_many": (lambda c: c.get_many("a", "b", "a"), 1),
    "get_dict": (lambda c: c.get_dict("a", "b"), 1),
    "set": (lambda c: c.set("a", [1]), 1),
    "set born expired": (lambda c: c.set("a", [1], timeout=-1), 1),
    "add": (lambda c: c.add("a", [1]), 1),
    "set_many": (lambda c: c.set_many({"a": [1], "b": 2}), 1),
    "delete": (lambda c: c.delete("a"), 1),
    "delete_many": (lambda c: c.delete_many("a", "b", "a"), 1),
    "has": (lambda c: c.has("a"), 1),
    "clear": (lambda c: c.clear(), 1),
    "inc": (lambda c: c.inc("n"), 1),
    "dec": (lambda c: c.dec("n"), 1),
    # one failed lookup, one more under the single-flight lock, and the failed write
    "get_or_set": (lambda c: c.get_or_set("a", lambda: [1]), 3),
    "get_or_set None": (lambda c: c.get_or_set("a", lambda: None), 2),
}


@pytest.fixture(params=["redis", "memcached"])
def stopped_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, int]]:
    """An engine that was started and then stopped: its port refuses connections."""
    server = RedisServer() if request.param == "redis" else MemcachedServer()
    with server:
        address = server.host, server.port
    yield request.param, *address


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_outage_counts_one_error_per_failed_call(
    stopped_server: tuple[str, str, int], variant: str
) -> None:
    engine, host, port = stopped_server
    options = VARIANTS[variant]
    cache: BaseCache
    if engine == "redis":
        cache = RedisCache(host, port, **options)
    else:
        cache = MemcachedCache([f"{host}:{port}"], **options)
    moved: dict[str, dict[str, int]] = {}
    with cache:
        for name, (call, _) in OUTAGE_CALLS.items():
            before = cache.stats()
            call(cache)
            after = cache.stats()
            moved[name] = {k: after[k] - before[k] for k in COUNTERS if after[k] != before[k]}
    assert moved == {name: {"errors": errors} for name, (_, errors) in OUTAGE_CALLS.items()}


# -- many threads on one cache: every lookup counted once --------------------------------------

THREADS = 8
ROUNDS = 150


def _lookups(cache: BaseCache, hit: str, bad: str, shared: list[str], worker: int) -> int:
    """Lookups of every kind, racing the other threads on the same keys; how many were made."""
    made = 0
    for i in range(ROUNDS):
        cache.get(hit)
        cache.get(bad)  # an unreadable entry: a miss and an error
        cache.get_many(hit, f"none-{worker}-{i}", hit)
        made += 5
        k = shared[i % len(shared)]
        # single-flight: a miss for one thread, hits for the others
        cache.get_or_set(k, lambda: [worker])
        made += 1
        if i % 3 == worker % 3:
            cache.delete(k)  # the next get_or_set of k misses again
    return made


@pytest.mark.parametrize("backend", ["simple", "file", "redis", "memcached"])
def test_threads_count_each_lookup_once(backend: str, request: pytest.FixtureRequest) -> None:
    import sys

    h = build(backend, {"key_prefix": f"threads-{uuid.uuid4().hex}:"}, request)
    cache = h.cache
    hit, bad = key(), key()
    cache.set(hit, [1])
    cache.set(bad, Unreadable())
    shared = [key() for _ in range(4)]
    made = [0] * THREADS
    seen_negative: list[dict[str, int]] = []
    done = threading.Event()

    def work(worker: int) -> None:
        made[worker] = _lookups(cache, hit, bad, shared, worker)

    def watch() -> None:
        while not done.is_set():
            stats = cache.stats()
            if min(stats.values()) < 0:
                seen_negative.append(stats)
            done.wait(0.001)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so counts race as on a busy server
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
        watcher = threading.Thread(target=watch)
        watcher.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        done.set()
        watcher.join(5)
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads)
    stats = cache.stats()
    cache.close()
    assert not seen_negative
    assert stats["hits"] + stats["misses"] == sum(made), stats
