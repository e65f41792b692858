"""A cache kept for weeks: no state grows without bound, nothing keeps dropped objects alive."""

from __future__ import annotations

import gc
import inspect
import logging
import os
import resource
import signal
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock
from servers import MemcachedServer, RedisServer

import cacheplug
from cacheplug import (
    BaseCache,
    FileSystemCache,
    MemcachedCache,
    RedisCache,
    SimpleCache,
    from_url,
)
from cacheplug.core.hookspecs import RegisterFn
from cacheplug.core.plugins import register_plugin, reset_plugins


@pytest.fixture
def fresh_plugins() -> Iterator[None]:
    reset_plugins()
    yield
    reset_plugins()


def _register_fresh_backend() -> weakref.ref[type[SimpleCache]]:
    """Register a backend class made for this call only (as a reloaded plugin module does)
    under ``fresh://``, build a cache from its URL; a weak reference to the class."""

    class FreshCache(SimpleCache):
        pass

    class FreshPlugin:
        @cacheplug.hookimpl
        def cacheplug_register_backends(self, register: RegisterFn) -> None:
            register("fresh", FreshCache)

    register_plugin(FreshPlugin(), "fresh-plugin")
    assert type(from_url("fresh://?threshold=5", default_timeout=1)) is FreshCache
    return weakref.ref(FreshCache)


def _forget_getattr_static_cache() -> None:
    """Empty the cache of MROs that ``inspect.getattr_static`` keeps on CPython 3.12 before
    gh-118013: it holds the last 128 classes looked at, and pluggy looks at every plugin."""
    cached = getattr(inspect, "_shadowed_dict_from_mro_tuple", None)
    if cached is not None:
        cached.cache_clear()


@pytest.mark.usefixtures("fresh_plugins")
def test_from_url_keeps_no_backend_class_of_a_forgotten_plugin_alive() -> None:
    classes = []
    for _ in range(20):
        reset_plugins()
        classes.append(_register_fresh_backend())
    reset_plugins()
    _forget_getattr_static_cache()
    gc.collect()
    alive = [ref for ref in classes if ref() is not None]
    assert not alive, f"{len(alive)} of 20 backend classes outlived their plugin registry"


@contextmanager
def _only_reference_counting() -> Iterator[None]:
    """No cycle collection meanwhile: what is dropped is freed at once or stays, as between
    two of the rare full collections of a service with a large heap."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def _use(cache: BaseCache) -> None:
    """One of every call that holds a connection or a lock."""
    assert cache.set("long-running", 1) in (True, False)
    cache.get("long-running")
    cache.get_many("long-running", "other")
    cache.add("long-running-add", 1)
    cache.inc("long-running-count")
    cache.get_or_set("long-running-made", lambda: 1)
    cache.delete("long-running-add")


def test_expiry_bookkeeping_stays_bounded_under_every_mix(clock: FakeClock) -> None:
    cache = SimpleCache(threshold=200, default_timeout=30, clock=clock)
    for i in range(60_000):
        key = f"k{(i * 7919) % 500}"
        match i % 9:
            case 0:
                cache.set(key, i, timeout=1 + i % 50)  # later or earlier than before
            case 1:
                cache.set(key, i, timeout=0)
            case 2:
                cache.delete(key)
            case 3:
                with suppress(TypeError):
                    cache.inc(key)
            case 4:
                cache.add(key, i, timeout=i % 3 * 20)
            case 5:
                cache.set_many({key: i, f"m{i % 300}": i}, timeout=i % 40)
            case 6:
                cache.set(key, i, timeout=-1)
            case 7:
                cache.get(key)
            case _:
                cache.set(key, [i], timeout=5 + i % 11)
        clock.advance(0.003)
        assert len(cache) <= 200
    assert len(cache._expiries) <= 2 * len(cache) + 64
    assert cache._flights == {}


def test_dropped_caches_are_freed_without_the_cycle_collector(
    tmp_path: Path, memcached_server: MemcachedServer
) -> None:
    makers: list[Callable[[], BaseCache]] = [
        lambda: SimpleCache(threshold=10),
        lambda: from_url("null://"),
        lambda: FileSystemCache(tmp_path, threshold=10),
        lambda: MemcachedCache([memcached_server.address], key_prefix="long-running:"),
    ]
    with _only_reference_counting():
        sockets = _open_sockets()
        dropped = []
        for make in makers * 3:
            cache = make()
            _use(cache)
            dropped.append(weakref.ref(cache))
            del cache
        assert [ref() for ref in dropped] == [None] * len(dropped)
        assert _open_sockets() <= sockets


def test_memoize_applied_per_request_keeps_no_wrapper() -> None:
    cache = SimpleCache()

    def request(n: int) -> tuple[int, weakref.ref[Any]]:
        @cache.memoize(timeout=60)
        def handler(x: int) -> int:
            return x * 2

        return handler(n % 10), weakref.ref(handler)

    with _only_reference_counting():
        wrappers = [request(n) for n in range(300)]
        assert [value for value, _ in wrappers] == [n % 10 * 2 for n in range(300)]
        assert [ref() for _, ref in wrappers] == [None] * 300
    assert len(cache) == 10  # one entry per argument, shared by every request's wrapper


@pytest.mark.parametrize("engine", ["redis", "memcached"])
def test_outages_and_recoveries_leave_no_connection_behind(
    engine: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, "cacheplug")
    server: RedisServer | MemcachedServer = request.getfixturevalue(f"fresh_{engine}_server")
    cache: BaseCache
    if isinstance(server, RedisServer):
        cache = RedisCache(server.host, server.port, dead_timeout=0, key_prefix="outage:")
    else:
        cache = MemcachedCache([server.address], dead_timeout=0, key_prefix="outage:")
    _use(cache)
    sockets = _open_sockets()
    for cycle in range(12):
        if cycle == 0:  # a graceful stop (memcached's takes a second) closes pooled connections
            server.restart()
            _use(cache)
        server.kill()
        for _ in range(3):
            _use(cache)
            assert cache.get("long-running") is None
        server.start()
        _use(cache)
        assert cache.get("long-running") == 1
    assert _open_sockets() <= sockets
    cache.close()


@contextmanager
def _files_limited_to(size: int) -> Iterator[None]:
    """Writes past ``size`` bytes of a file fail with EFBIG, as on a full disk, for this
    process only."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_failed_writes_leave_no_descriptor_or_temp_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, "cacheplug")
    cache = FileSystemCache(tmp_path, threshold=50)
    _use(cache)
    files = sorted(os.listdir(tmp_path))
    descriptors = _open_files()
    big = b"x" * 100_000
    with _files_limited_to(50_000):
        for i in range(200):
            assert cache.set(f"big{i}", big) is False
            assert cache.add(f"big-add{i}", big) is False
            assert cache.set_many({f"many{i}": big, "long-running": 2}) == ["long-running"]
            _use(cache)
    assert _open_files() == descriptors
    assert sorted(os.listdir(tmp_path)) == files
    assert cache.set("after", big) is True
    assert cache.get("after") == big
