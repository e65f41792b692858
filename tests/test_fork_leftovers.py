"""Forks at moments the earlier fork work left open: a cache still being built by another
thread, a redis-py blocking pool a parent thread waits on, and clients passed in as ``host``.

Each fork happens in this process, with a parent thread holding what the case needs; the child
answers from the forking thread (a new thread could get the ident of the parent thread that
holds an RLock) within ``CHILD_WAIT``, and the parent waits for it within ``PARENT_WAIT``, then
kills it. Nothing waits without a bound.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import FORKS_BESIDE_A_THREAD
from servers import MemcachedServer, RedisCluster, RedisServer

from cacheplug import MemcachedCache, RedisCache, SimpleCache

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILD_WAIT = 3.0  # seconds the child has for its calls before it reports a hang
PARENT_WAIT = 2 * CHILD_WAIT  # seconds the parent waits for the child before killing it
HUNG, RAISED, KILLED = "hung", "raised", "killed"


def fork_and_ask(call: Callable[[], Any], release: threading.Event) -> str:
    """Fork; the child makes ``call`` and the repr of its answer comes back (or how it failed).

    The parent sets ``release`` right after the fork, so the lock its thread held is given back
    in the parent; only a lock the child inherited in the held state can still block it.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child process)
        os.close(read)

        def report(answer: str) -> None:
            os.write(write, answer.encode())
            os._exit(0)

        try:
            # a blocked lock acquire is interrupted to run this handler
            signal.signal(signal.SIGALRM, lambda *_: report(HUNG))
            signal.setitimer(signal.ITIMER_REAL, CHILD_WAIT)
            report(repr(call()))
        except BaseException as err:
            report(f"{RAISED} {err!r}")
        finally:
            os._exit(1)
    os.close(write)
    release.set()
    deadline = time.monotonic() + PARENT_WAIT
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            return KILLED
        time.sleep(0.01)
    with os.fdopen(read) as pipe:
        return pipe.read()


@contextlib.contextmanager
def held(lock: Any) -> Iterator[threading.Event]:
    """``lock`` held by another thread for the block; set the event yielded to release it."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            entered.set()
            release.wait(PARENT_WAIT)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert entered.wait(CHILD_WAIT)
    try:
        yield release
    finally:
        release.set()
        thread.join(PARENT_WAIT)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"leftovers{os.getpid()}-{request.node.name}:"


# -- 1. a cache half-built at the fork --------------------------------------------------------


class _ParkedInInit(RedisCache):
    """Parks its builder inside ``RedisCache.__init__``, after ``BaseCache`` registered the
    cache for the at-fork reset and before the Redis attributes exist: when ``RedisCache``
    sets the ``key_prefix`` it was given (``BaseCache`` sets ``""`` first)."""

    entered = threading.Event()
    release = threading.Event()

    @property
    def key_prefix(self) -> str:
        return str(RedisCache.key_prefix.fget(self))  # type: ignore[attr-defined]

    @key_prefix.setter
    def key_prefix(self, prefix: Any) -> None:
        if prefix == "parked:" and os.getpid() == _PARENT:
            self.entered.set()
            self.release.wait(PARENT_WAIT)
        RedisCache.key_prefix.fset(self, prefix)  # type: ignore[attr-defined]


_PARENT = os.getpid()


class _FailingReset(SimpleCache):
    """A cache whose at-fork reset raises, as a backend's own may, while ``failing``: a copy
    that outlives its test must not fail the forks of other tests."""

    failing = True

    def _after_fork_in_child(self) -> None:
        if self.failing:
            raise RuntimeError("this reset fails")
        super()._after_fork_in_child()


@contextlib.contextmanager
def _failing_in_the_child(kind: str, redis_server: RedisServer) -> Iterator[None]:
    """For the block, a cache registered before the test's other one whose at-fork reset
    fails: a ``RedisCache`` another thread is building, or a :class:`_FailingReset`."""
    if kind == "a reset that raises":
        failing = _FailingReset()
        try:
            yield
        finally:
            failing.failing = False
        return
    _ParkedInInit.entered.clear()
    _ParkedInInit.release.clear()
    builder = threading.Thread(
        target=lambda: _ParkedInInit(*redis_server.address, key_prefix="parked:"), daemon=True
    )
    builder.start()
    assert _ParkedInInit.entered.wait(CHILD_WAIT)
    try:
        yield
    finally:
        _ParkedInInit.release.set()
        builder.join(PARENT_WAIT)


@pytest.mark.parametrize("kind", ["a RedisCache half-built", "a reset that raises"])
@FORKS_BESIDE_A_THREAD
def test_one_cache_s_failing_reset_at_the_fork_stops_no_other_s(
    redis_server: RedisServer, kind: str
) -> None:
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("cacheplug").addHandler(handler)
    try:
        with _failing_in_the_child(kind, redis_server):
            later = SimpleCache()  # registered after the failing one
            later.set("k", "parent")
            with held(later._lock) as release:

                def child() -> Any:
                    answers = (later.get("k"), later.set("k", "child"), later.get("k"))
                    return answers, sum("_FailingReset" in line for line in records)

                answer = fork_and_ask(child, release)
    finally:
        logging.getLogger("cacheplug").removeHandler(handler)
    # the child answers; a reset that failed is logged, naming the cache's class
    logged = 1 if kind == "a reset that raises" else 0
    assert answer == repr((("parent", True, "child"), logged))
    assert later.get("k") == "parent"


# -- 2. a memcached dead time at the fork ----------------------------------------------------

# Inherited on purpose: the deadline is on the monotonic clock both processes share, it ends
# at most dead_timeout after a failure the parent saw, and a child that forgot it would spend a
# connect timeout on a server that most likely still fails, once per worker forked.

DEAD_TIME = 2.0  # seconds; long enough for the server's restart and the fork to fit in


def test_child_forked_in_a_memcached_dead_time_skips_the_server_until_it_ends(
    fresh_memcached_server: MemcachedServer,
) -> None:
    address = f"{fresh_memcached_server.host}:{fresh_memcached_server.port}"
    cache = MemcachedCache([address], dead_timeout=DEAD_TIME)
    assert cache.set("k", 1) is True
    fresh_memcached_server.kill()
    assert cache.get("k") is None  # the parent marks the server down
    fresh_memcached_server.restart()
    writer = MemcachedCache([address])
    assert writer.set("k", 2) is True

    def child() -> Any:
        first = cache.get("k")  # skipped: the server is up and holds 2
        deadline = time.monotonic() + CHILD_WAIT
        while (value := cache.get("k")) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return first, value

    assert fork_and_ask(child, threading.Event()) == repr((None, 2))
    writer.close()
    cache.close()


# -- 3. a blocking pool a parent thread waits on ----------------------------------------------


# Not a defect: redis-py replaces a blocking pool's queue (and its locks) at the child's first
# call, under the pool locks the child renews; these keep it so.


def _waiting_on(queue: Any) -> bool:
    return bool(queue.not_empty._waiters)


@pytest.mark.parametrize("client", ["built by the cache", "passed in"])
@pytest.mark.parametrize("moment", ["a thread waits for a connection", "a thread holds the queue"])
@FORKS_BESIDE_A_THREAD
def test_child_answers_whatever_a_parent_thread_does_on_a_blocking_pool(
    redis_server: RedisServer, prefix: str, client: str, moment: str
) -> None:
    import redis

    host, port = redis_server.address
    pool = redis.BlockingConnectionPool(host=host, port=port, max_connections=1, timeout=5)
    if client == "passed in":
        cache = RedisCache(redis.Redis(connection_pool=pool), key_prefix=prefix)
    else:
        cache = RedisCache(connection_pool=pool, key_prefix=prefix)
    assert cache.set("k", 1) is True
    taken = pool.get_connection()  # the pool's only connection, in use by a parent thread
    waiter = threading.Thread(target=lambda: cache.get("k"), daemon=True)
    waiter.start()
    deadline = time.monotonic() + CHILD_WAIT
    while not _waiting_on(pool.pool):
        assert time.monotonic() < deadline, "the parent thread never waited on the pool"
        time.sleep(0.01)
    lock = pool.pool.mutex if moment == "a thread holds the queue" else threading.Lock()
    try:
        with held(lock) as release:
            answer = fork_and_ask(lambda: (cache.get("k"), cache.set("k", 2)), release)
    finally:
        pool.release(taken)
        waiter.join(PARENT_WAIT)
    assert answer == repr((1, True))
    assert cache.get("k") == 2
    cache.close()
    pool.disconnect()


# -- 4. clients passed in as host --------------------------------------------------------------


def _passed_in(kind: str, request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """A redis-py client of ``kind`` and the lock of it that a parent thread holds: the nodes
    manager's (every cluster command takes it), the pool's (every call takes it, and redis-py
    resets the pool under it at the child's first call)."""
    import redis

    if kind == "RedisCluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        client = redis.RedisCluster(*cluster.nodes[0])
        return client, client.nodes_manager._lock
    server: RedisServer = request.getfixturevalue("redis_server")
    client = redis.Redis(*server.address)
    return client, client.connection_pool._lock


@pytest.mark.parametrize("kind", ["RedisCluster", "Redis"])
@FORKS_BESIDE_A_THREAD
def test_child_answers_though_a_parent_thread_held_a_lock_of_a_passed_in_client(
    request: pytest.FixtureRequest, prefix: str, kind: str
) -> None:
    client, lock = _passed_in(kind, request)
    cache = RedisCache(client, key_prefix=prefix)
    assert cache.set("k", 1) is True
    with held(lock) as release:
        answer = fork_and_ask(lambda: (cache.get("k"), cache.set("k", 2)), release)
    assert answer == repr((1, True))
    assert cache.get("k") == 2
    client.close()
