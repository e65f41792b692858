"""A service running for weeks: per-thread, per-key and per-outage state stays bounded, and
no descriptor, socket or thread outlives the cache that made it (session 18 review)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock
from servers import MemcachedServer, RedisCluster, RedisServer, _free_port

import cacheplug
from cacheplug import (
    BaseCache,
    FileSystemCache,
    MemcachedCache,
    RedisCache,
    SimpleCache,
    from_url,
)
from cacheplug.backends import _filesystem_locks
from cacheplug.backends._redis_dead_server import DeadServer
from cacheplug.core._memoize_keys import REMEMBERED_KEYS

PACKAGE_DIR = os.path.dirname(cacheplug.__file__)
TESTS_DIR = os.path.dirname(__file__)
WAIT = 10.0  # seconds; any bounded wait here that takes this long means something is broken


def _sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _thread_names() -> list[str]:
    return sorted(thread.name for thread in threading.enumerate())


@contextmanager
def _package_growth(warm_up: Callable[[], None]) -> Iterator[list[int]]:
    """Bytes allocated by lines of the cacheplug package, still held once the block is over and
    garbage collected, beyond what they held after ``warm_up`` ran (traced too, so the
    entries the block replaces count as freed); the one-item list it yields is filled on exit."""
    grown = [0]
    only_package = [tracemalloc.Filter(True, os.path.join(PACKAGE_DIR, "*"))]
    tracemalloc.start()
    try:
        warm_up()
        gc.collect()
        before = tracemalloc.take_snapshot().filter_traces(only_package)
        yield grown
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(only_package)
    finally:
        tracemalloc.stop()
    grown[0] = sum(stat.size_diff for stat in after.compare_to(before, "lineno"))


def _in_thread_batches(total: int, batch: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` for i in range(total), each in a thread of its own, ``batch`` at a time."""
    for start in range(0, total, batch):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(start, start + batch)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
            assert not thread.is_alive()


def _short_request(cache: BaseCache, memoized: Callable[[int], int], i: int) -> None:
    assert cache.set(f"thread:{i}", i) in (True, False)
    cache.get(f"thread:{i}")
    cache.get_or_set(f"shared:{i % 7}", lambda: i)
    memoized(i % 5)


# -- per-thread state ---------------------------------------------------------------------------


def test_ten_thousand_short_lived_threads_leave_no_per_thread_state() -> None:
    cache = SimpleCache(threshold=200)

    @cache.memoize(timeout=60)
    def square(n: int) -> int:
        return n * n

    def request(i: int) -> None:
        _short_request(cache, square, i)
        # an error of this thread's own: the per-thread tally gets an entry too
        cache._errors += 1

    names = _thread_names()
    with _package_growth(lambda: _in_thread_batches(1_000, 100, request)) as grown:
        _in_thread_batches(9_000, 100, request)
    assert _thread_names() == names
    assert cache._flights == {}
    assert len(cache) <= 200
    assert len(cache._expiries) <= 2 * len(cache) + 64
    # 9,000 dead threads' tallies would hold ~1 MiB
    assert grown[0] < 32 * 1024, f"cacheplug kept {grown[0] / 1024:.0f} KiB"


@pytest.mark.parametrize("engine", ["file", "redis", "memcached"])
def test_short_lived_threads_on_an_engine_leave_pools_bounded(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    cache: BaseCache
    if engine == "file":
        cache = FileSystemCache(tmp_path, threshold=100)
    elif engine == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        cache = RedisCache(server.host, server.port, key_prefix="resources-threads:")
    else:
        memcached: MemcachedServer = request.getfixturevalue("memcached_server")
        cache = MemcachedCache([memcached.address], key_prefix="resources-threads:")

    @cache.memoize(timeout=60)
    def square(n: int) -> int:
        return n * n

    _short_request(cache, square, 0)
    sockets, descriptors, names = _sockets(), _descriptors(), _thread_names()
    _in_thread_batches(2_000, 50, lambda i: _short_request(cache, square, i))
    assert _thread_names() == names
    assert cache._flights == {}
    # at most one idle connection per thread of a batch, never one per thread ever run
    assert _sockets() <= sockets + 50
    assert _descriptors() <= descriptors + 50
    if engine == "file":
        assert _filesystem_locks.turns == {}
        assert isinstance(cache, FileSystemCache)
        assert not cache._lock_fds
        assert len(os.listdir(tmp_path)) <= 100 + 1  # the entries and the prefix's lock file
    cache.close()
    assert _sockets() <= sockets
    assert _descriptors() <= descriptors


# -- per-key state --------------------------------------------------------------------------------


def test_unique_key_misses_leave_single_flight_tables_empty() -> None:
    cache = SimpleCache(threshold=100)
    for i in range(200_000):
        assert cache.get_or_set(f"unique:{i}", partial(int, i)) is not None
    assert cache._flights == {}

    @cache.memoize(timeout=60)
    def double(n: int) -> int:
        return 2 * n

    for i in range(180_000):
        double(i)

    def warm_up() -> None:  # the cache is full already: the traced run replaces its entries
        for i in range(180_000, 185_000):
            double(i)

    with _package_growth(warm_up) as grown:
        for i in range(185_000, 200_000):
            double(i)
    assert cache._flights == {}
    assert len(double._keys) <= REMEMBERED_KEYS
    assert len(cache) <= 100
    assert len(cache._expiries) <= 2 * len(cache) + 64
    assert grown[0] < 16 * 1024, f"cacheplug kept {grown[0] / 1024:.0f} KiB"


def test_async_memoize_of_unique_arguments_leaves_no_flight() -> None:
    cache = SimpleCache(threshold=500)

    @cache.memoize(timeout=60)
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return 2 * n

    async def main() -> None:
        for i in range(20_000):
            assert await double(i) == 2 * i
        # tasks sharing a flight, and tasks whose call fails
        assert await asyncio.gather(*(double(i % 50) for i in range(2_000))) == [
            2 * (i % 50) for i in range(2_000)
        ]

    asyncio.run(main())
    asyncio.run(main())  # a second event loop: the first one's flights are gone too
    assert double._flights == {}  # type: ignore[attr-defined]
    assert cache._flights == {}


def test_expiry_heap_stays_proportional_to_entries_under_overwrites(clock: FakeClock) -> None:
    cache = SimpleCache(threshold=1000, clock=clock)
    for round_ in range(100):
        for i in range(1_000):
            # each overwrite expires sooner than the last: its old heap record cannot serve
            assert cache.set(f"k{i}", round_, timeout=10_000 - round_ * 50 - i % 7)
        for i in range(0, 1_000, 3):
            cache.set(f"gone{round_}:{i}", i, timeout=1)
        clock.advance(2)
        assert len(cache._expiries) <= 2 * len(cache) + 64
    assert len(cache) <= 1000


def test_filesystem_bookkeeping_stays_bounded_under_unique_keys(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path, threshold=200)
    descriptors = _descriptors()
    for i in range(1_000):
        cache.get_or_set(f"unique:{i}", partial(int, i))
        cache.set(f"set:{i}", i)
        cache.add(f"add:{i}", i)
        cache.inc(f"count:{i % 10}")
    assert cache._flights == {}
    assert _filesystem_locks.turns == {}
    assert not cache._lock_fds
    assert _descriptors() == descriptors
    assert len(os.listdir(tmp_path)) <= 200 + 1  # the entries and the prefix's lock file
    # a prefix used and cleared leaves no file behind (docs/backends.md)
    for i in range(200):
        prefixed = FileSystemCache(tmp_path, threshold=10, key_prefix=f"request{i}:")
        prefixed.set("k", i)
        assert prefixed.clear()
    assert len(os.listdir(tmp_path)) <= 200 + 1


# -- descriptors, sockets, threads -----------------------------------------------------------------


def _use(cache: BaseCache) -> None:
    cache.set("resources:k", 1)
    cache.get("resources:k")
    cache.get_or_set("resources:made", lambda: 2)
    cache.inc("resources:count")
    cache.get_many("resources:k", "resources:made")
    cache.delete("resources:k")


def _url(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if engine == "file":
        return f"file://{tmp_path}?threshold=50"
    fixture = {"redis": "redis_server", "memcached": "memcached_server", "cluster": "redis_cluster"}
    server: RedisServer | MemcachedServer | RedisCluster = request.getfixturevalue(fixture[engine])
    return server.url


@pytest.mark.parametrize(
    ("engine", "cycles"), [("file", 500), ("redis", 500), ("memcached", 500), ("cluster", 50)]
)
def test_caches_from_urls_closed_or_dropped_leave_no_descriptor_or_thread(
    engine: str, cycles: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = _url(engine, request, tmp_path)
    warm = from_url(url)
    _use(warm)
    warm.close()
    del warm
    gc.collect()
    sockets, descriptors, names = _sockets(), _descriptors(), _thread_names()
    for close in (True, False):
        for _ in range(cycles):
            cache = from_url(url)
            cache.set("resources:k", 1)  # a connection taken, and one in a pipeline
            cache.get_many("resources:k", "resources:other")
            assert _thread_names() == names  # cacheplug starts no thread of its own
            if close:
                cache.close()
            del cache
        gc.collect()
        assert _sockets() == sockets
        assert _descriptors() == descriptors


_DROP_SCRIPT = textwrap.dedent(
    """
    import gc, sys
    sys.path.insert(0, {tests!r})
    from cacheplug import from_url
    from test_resources_review import _use
    for url in sys.argv[1:]:
        for close in (True, False):
            for i in range(20):
                cache = from_url(url)
                _use(cache)
                if close:
                    cache.close()
                del cache
            gc.collect()
    print("done")
    """
)


def test_dropped_caches_raise_no_resource_warning(
    redis_server: RedisServer, memcached_server: MemcachedServer, tmp_path: Path
) -> None:
    urls = [f"file://{tmp_path}", redis_server.url, memcached_server.url]
    script = _DROP_SCRIPT.format(tests=TESTS_DIR)
    run = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", script, *urls],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.stdout.strip() == "done", run.stderr
    assert "ResourceWarning" not in run.stderr, run.stderr


# -- outages ---------------------------------------------------------------------------------------


@pytest.fixture
def quiet_cacheplug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, "cacheplug")


def _pool_sizes(cache: RedisCache) -> list[int]:
    sizes = []
    for client in (cache._client, cache._once_client):
        real = client.real if isinstance(client, DeadServer) else client
        pool = real.connection_pool
        sizes.append(len(pool._available_connections) + len(pool._in_use_connections))
    return sizes


@pytest.mark.usefixtures("quiet_cacheplug")
@pytest.mark.parametrize("engine", ["redis", "memcached"])
def test_outage_and_recovery_cycles_keep_pools_and_log_state_bounded(
    engine: str, request: pytest.FixtureRequest
) -> None:
    server: RedisServer | MemcachedServer = request.getfixturevalue(f"fresh_{engine}_server")
    cache = from_url(f"{server.url}?dead_timeout=0&key_prefix=outage:")
    _use(cache)
    sockets = _sockets()
    for cycle in range(200 if engine == "redis" else 100):
        server.kill()
        assert cache.get(f"outage:{cycle}") is None
        assert cache.set(f"outage:{cycle}", cycle) is False
        server.start()
        assert cache.set(f"outage:{cycle}", cycle) is True
    assert _sockets() <= sockets
    assert set(cache._last_logged) <= {"backend"}
    assert set(cache._held_back) <= {"backend"}
    if isinstance(cache, RedisCache):
        assert max(_pool_sizes(cache)) <= 1
    else:
        assert isinstance(cache, MemcachedCache)
        assert all(len(each._idle) <= 1 for each in cache._servers)
    cache.close()


@pytest.mark.usefixtures("quiet_cacheplug")
def test_a_refusing_server_keeps_pools_and_log_state_bounded() -> None:
    port = _free_port()  # nothing listens there: every connection is refused
    caches: list[BaseCache] = [
        RedisCache("127.0.0.1", port, dead_timeout=0),
        MemcachedCache([("127.0.0.1", port)], dead_timeout=0),
    ]
    sockets = _sockets()
    for i in range(1_000):
        for cache in caches:
            assert cache.set(f"refused:{i}", i) is False
            assert cache.get(f"refused:{i}") is None
            assert cache.inc(f"refused-count:{i}") is None
            assert cache.get_or_set(f"refused-made:{i}", lambda: 1) == 1
    assert _sockets() <= sockets
    for cache in caches:
        # one rate-limited log line of one kind, whatever the keys and errors
        assert set(cache._last_logged) == {"backend"}
        assert set(cache._held_back) <= {"backend"}
        assert cache._flights == {}
    redis_cache = caches[0]
    assert isinstance(redis_cache, RedisCache)
    assert max(_pool_sizes(redis_cache)) <= 1
    memcached_cache = caches[1]
    assert isinstance(memcached_cache, MemcachedCache)
    assert all(len(each._idle) <= 1 for each in memcached_cache._servers)


def _dead_layers(client: Any) -> int:
    layers = 0
    while isinstance(client, DeadServer):
        client = client.real
        layers += 1
    return layers


@pytest.mark.usefixtures("quiet_cacheplug")
def test_outages_seen_by_reads_do_not_stack_dead_server_stand_ins(
    fresh_redis_server: RedisServer,
) -> None:
    server = fresh_redis_server
    cache = RedisCache(server.host, server.port, dead_timeout=0.01, key_prefix="stack:")
    assert cache.set("k", 1)
    for _ in range(5):
        server.kill()
        assert cache.get("k") is None  # the outage: both clients stand aside
        server.start()
        deadline = time.monotonic() + WAIT
        while not cache.set("k", 1):  # the dead time (10 ms) is over, then the write succeeds
            assert time.monotonic() < deadline
            time.sleep(0.005)
    assert _dead_layers(cache._client) == 0
    assert _dead_layers(cache._once_client) <= 1
    server.kill()
    assert cache.get("k") is None
    assert _dead_layers(cache._once_client) == 1
    assert cache.inc("n") is None  # a dead server, whichever client asks
    cache.close()  # closing a cache during an outage raises nothing
