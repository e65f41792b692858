"""RedisCache.close() while other threads are in the middle of calls.

``close()`` closes the idle connections only, as ``MemcachedCache.close()`` does: a call in
flight finishes on its connection, which goes back to the pool. Closing that connection under
the call failed it: on one server the cache took the server for down and answered as in an
outage for its dead time (gets missed, sets returned False); on a cluster, redis-py's parser
met the closed socket and a ``TypeError`` reached the caller of ``get``.

The first tests let ``THREADS`` threads get and set keys that stay stored while the main thread
calls ``close()`` again and again, each time once every thread has made a call since the last;
the others check what ``close()`` still closes, and what it leaves open.
"""

from __future__ import annotations

import functools
import itertools
import threading

import pytest
import redis
from servers import RedisCluster, RedisServer

from cacheplug import RedisCache

THREADS = 8
KEYS = 16
WAIT = 10.0  # seconds the main thread waits for every thread to make a call
_prefixes = itertools.count()


def unique_prefix() -> str:
    return f"busyclose{next(_prefixes)}:"


def value_of(key: str) -> tuple[str, str]:
    return ("value", key)


def close_while_busy(cache: RedisCache, closes: int) -> tuple[list[str], int]:
    """Call ``cache.close()`` ``closes`` times while ``THREADS`` threads get and set live keys;
    (what went wrong, calls made). A get that misses, a set returning False and an exception
    out of a call all went wrong."""
    keys = [f"k{i}" for i in range(KEYS)]
    assert cache.set_many({key: value_of(key) for key in keys}, timeout=0) == keys
    problems: list[str] = []
    made = [0] * THREADS  # calls made by each thread
    progress = threading.Condition()
    stop = threading.Event()

    def work(me: int) -> None:
        for turn in itertools.count(me):
            if stop.is_set():
                return
            key = keys[turn % KEYS]
            try:
                if turn % 2:
                    got = cache.get(key)
                    if got != value_of(key):
                        problems.append(f"get({key!r}) answered {got!r}")
                elif cache.set(key, value_of(key), timeout=0) is not True:
                    problems.append(f"set({key!r}) returned False")
            except Exception as err:
                problems.append(f"{type(err).__name__} out of a call: {err}")
            with progress:
                made[me] += 1
                progress.notify()

    def moved_on(seen: list[int]) -> bool:
        return all(now > then for now, then in zip(made, seen, strict=True))

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(closes):
            with progress:
                moved = progress.wait_for(functools.partial(moved_on, list(made)), WAIT)
            if not moved:
                problems.append(f"a thread made no call in {WAIT}s")
            if problems:  # no need for more: a failed call may cost a socket timeout
                break
            cache.close()
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
    return problems, sum(made)


def test_close_on_a_busy_server_fails_no_call_and_marks_no_outage(
    redis_server: RedisServer,
) -> None:
    cache = RedisCache(port=redis_server.port, key_prefix=unique_prefix())
    problems, calls = close_while_busy(cache, closes=300)
    assert problems[:5] == [], f"{len(problems)} of {calls} calls went wrong"
    assert calls > 300
    assert cache.stats()["errors"] == 0
    assert cache.get("k1") == value_of("k1")  # usable after close(), right away
    cache.close()


def test_close_on_a_busy_cluster_fails_no_call(redis_cluster: RedisCluster) -> None:
    cache = RedisCache(startup_nodes=redis_cluster.nodes, key_prefix=unique_prefix())
    problems, calls = close_while_busy(cache, closes=200)
    assert problems[:5] == [], f"{len(problems)} of {calls} calls went wrong"
    assert calls > 200
    assert cache.stats()["errors"] == 0
    assert cache.get("k1") == value_of("k1")
    cache.close()


# -- what close() still closes -------------------------------------------------------------------


def connections_named(ports: list[int], name: str) -> int:
    """The connections named ``name`` on the servers at ``ports``."""
    count = 0
    for port in ports:
        with redis.Redis(port=port) as admin:
            count += sum(client["name"] == name for client in admin.client_list())
    return count


def use_from_threads(cache: RedisCache) -> None:
    """Calls from several threads at once, each on a connection of its own."""
    start = threading.Barrier(THREADS)

    def work() -> None:
        start.wait(WAIT)
        for i in range(20):
            cache.set(f"k{i}", i)
            cache.get(f"k{i}")

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)


@pytest.mark.parametrize("engine", ["server", "cluster"])
def test_close_closes_every_idle_connection_and_the_cache_connects_again(
    engine: str, request: pytest.FixtureRequest
) -> None:
    name = f"busyclose-{engine}"
    if engine == "server":
        server: RedisServer = request.getfixturevalue("redis_server")
        ports = [server.port]
        cache = RedisCache(port=server.port, key_prefix=unique_prefix(), client_name=name)
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        ports = [port for _, port in cluster.nodes]
        cache = RedisCache(
            startup_nodes=cluster.nodes, key_prefix=unique_prefix(), client_name=name
        )
    use_from_threads(cache)
    assert connections_named(ports, name) > 1
    cache.close()
    assert connections_named(ports, name) == 0
    assert cache.set("again", 1) is True
    assert cache.get("again") == 1
    assert connections_named(ports, name) >= 1
    cache.close()
    assert connections_named(ports, name) == 0


def test_close_leaves_a_pool_passed_in_open(redis_server: RedisServer) -> None:
    pool = redis.ConnectionPool(port=redis_server.port, client_name="busyclose-given")
    cache = RedisCache(connection_pool=pool, key_prefix=unique_prefix())
    assert cache.set("k", 1) is True
    cache.close()
    assert connections_named([redis_server.port], "busyclose-given") >= 1
    assert cache.get("k") == 1
    pool.disconnect()


def test_close_closes_the_connection_of_a_single_connection_client(
    redis_server: RedisServer,
) -> None:
    cache = RedisCache(
        port=redis_server.port,
        key_prefix=unique_prefix(),
        single_connection_client=True,
        client_name="busyclose-single",
    )
    assert cache.set("k", 1) is True
    assert cache.inc("n") == 1  # on the client that never sends a command twice
    assert connections_named([redis_server.port], "busyclose-single") == 2
    cache.close()
    assert connections_named([redis_server.port], "busyclose-single") == 0
    assert cache.get("k") == 1
