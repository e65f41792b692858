"""Adversarial review of RedisCache on a Redis Cluster: connections after a refused value, pools
under load, calls across nodes, outages and failovers."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import test_redis_batches
from redis.exceptions import ConnectionError as Closed
from redis.exceptions import ResponseError
from servers import RedisCluster, RedisServer
from waiting import wait_until

from cacheplug import RedisCache
from cacheplug.backends import _redis_cluster
from cacheplug.backends._redis_dead_server import DeadServer
from cacheplug.backends.redis import LONE_VALUE

BULK_LIMIT = 2**20  # proto-max-bulk-len of the limited nodes: a value one byte longer is refused
LONE = b"l" * LONE_VALUE  # sent alone by set_many, stored


@pytest.fixture(scope="module")
def limited_server() -> Iterator[RedisServer]:
    """A server refusing values over 1 MB."""
    server = RedisServer(config={"proto-max-bulk-len": "1mb"}).start()
    yield server
    server.stop()


@pytest.fixture
def late_closing_cluster() -> Iterator[int]:
    """The port of a one-primary cluster refusing values over 1 MB, reached through a
    ``LateClosingProxy`` it announces as its own address: a connection Redis closed after a
    protocol error fails only on the next command sent on it."""
    with RedisCluster(masters=1) as cluster:
        (server,) = cluster.servers
        server.command("CONFIG", "SET", "proto-max-bulk-len", "1mb")
        proxy = test_redis_batches.LateClosingProxy(server.port)
        server.command("CONFIG", "SET", "cluster-announce-port", str(proxy.port))
        try:
            yield proxy.port
        finally:
            proxy.close()


def test_node_pipelines_closes_the_connection_of_a_protocol_error(
    late_closing_cluster: int,
) -> None:
    cache = RedisCache(startup_nodes=[("127.0.0.1", late_closing_cluster)], socket_timeout=2)
    try:
        assert cache.set("k", "v") is True
        client = cache._write_client
        over = ("SET", "big", b"x" * (BULK_LIMIT + 1))
        replies = _redis_cluster.node_pipelines(client, [over, ("GET", "k")], cache._failures)
        assert isinstance(replies[0], ResponseError)
        assert isinstance(replies[1], Closed)  # Redis ran nothing after the error
        # the same pool, without the idle connections dropped: the next call's connection works
        assert cache.delete("k") is True
        assert cache.stats()["errors"] == 0
    finally:
        cache.close()


def _refusing_under_load(cache: RedisCache, refuse: Callable[[], object], rounds: int) -> list[str]:
    """Call ``refuse`` ``rounds`` times while three threads add, read, count, overwrite and
    delete keys of their own on ``cache``; the wrong answers those threads got."""
    stop = threading.Event()
    wrong: list[str] = []

    def work(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            key = f"{worker}-{i}"
            answers = (
                cache.add(key, i),
                cache.get(key),
                cache.inc(key + "#"),
                cache.set(key, -i),
                cache.delete_many(key, key + "#"),
            )
            if answers != (True, i, 1, True, [key, key + "#"]):
                wrong.append(f"{key}: {answers}")

    workers = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    interval = sys.getswitchinterval()
    try:
        sys.setswitchinterval(1e-6)  # threads switch often: the window of a race is short
        for thread in workers:
            thread.start()
        for _ in range(rounds):
            refuse()
    finally:
        stop.set()
        for thread in workers:
            thread.join()
        sys.setswitchinterval(interval)
    return wrong


def test_a_cluster_connection_that_carried_a_refused_value_goes_to_no_other_thread(
    late_closing_cluster: int,
) -> None:
    # node_pipelines read the protocol error as a reply and gave the connection back open;
    # the idle connections were closed only after: a thread taking it in between failed
    # (3 wrong answers and 3 more errors per 300 refusals with 3 threads).
    cache = RedisCache(
        startup_nodes=[("127.0.0.1", late_closing_cluster)], key_prefix="race:", socket_timeout=2
    )
    over = b"x" * (BULK_LIMIT + 1)

    def refuse() -> None:
        assert cache.set_many({"big": over}) == []

    try:
        assert _refusing_under_load(cache, refuse, 300) == []
    finally:
        cache.close()
    assert cache.stats()["errors"] == 300


def test_a_refused_value_whose_ping_meets_a_full_pool_gives_a_live_server_no_dead_time(
    limited_server: RedisServer,
) -> None:
    # Redis cuts the sending of a value over its limit short (a lost connection); the ping
    # telling that from an outage failed when other threads held every pooled connection, and
    # the live server was not asked again for dead_timeout (10 to 20 times in 200 refusals).
    cache = RedisCache(port=limited_server.port, key_prefix="full:", max_connections=2)
    over = b"x" * (8 * BULK_LIMIT)

    def refuse() -> None:
        assert cache.set("big", over) is False
        assert not isinstance(cache._client, DeadServer)

    try:
        _refusing_under_load(cache, refuse, 100)  # the pool refuses these threads often
    finally:
        cache.close()


def test_set_many_of_large_values_on_a_cluster_that_is_down_waits_once() -> None:
    # CLUSTERDOWN is a ResponseError to redis-py: each value sent alone was taken for a value
    # refused, and each waited the 0.25 s redis-py gives a cluster down (1.3 s for 8 values).
    with RedisCluster() as cluster:
        cache = RedisCache(startup_nodes=cluster.nodes, key_prefix="down:", socket_timeout=0.5)
        keys = [f"k{i}" for i in range(12)]
        mapping = {key: LONE if i % 4 else i for i, key in enumerate(keys)}
        assert cache.set_many(mapping) == keys
        for server in cluster.servers:  # the live nodes give the dead one up sooner
            server.command("CONFIG", "SET", "cluster-node-timeout", "200")
        live = cluster.servers[0]
        cluster.servers[1].kill()
        wait_until(lambda: b"cluster_state:fail" in bytes(live.command("CLUSTER", "INFO")))  # type: ignore[arg-type]
        for lone in (mapping, dict.fromkeys(keys, LONE)):
            errors = cache.stats()["errors"]
            started = time.monotonic()
            assert cache.set_many(lone) == []
            assert time.monotonic() - started < 0.8  # one wait of 0.25 s, and the call's work
            assert cache.stats()["errors"] == errors + 1
        cluster.start()  # the dead node again, on its port
        assert wait_until(lambda: cache.set_many(mapping) == keys) < 10
        assert cache.get_many(*keys) == list(mapping.values())
        cache.close()


def _connections_received(cluster: RedisCluster) -> int:
    """Connections the cluster's nodes accepted so far (each count itself opens one)."""
    infos = [bytes(server.command("INFO", "stats")) for server in cluster.servers]  # type: ignore[arg-type]
    return sum(
        int(line.split(b":")[1])
        for info in infos
        for line in info.splitlines()
        if line.startswith(b"total_connections_received:")
    )


def test_a_full_node_pool_leaves_the_cluster_topology_and_connections_alone(
    redis_cluster: RedisCluster,
) -> None:
    # A pool with every connection in use (max_connections) made node_pipelines refresh the
    # topology, as after a lost connection: CLUSTER SLOTS asked and the free connections of
    # every startup node closed, on each call (redis-py refreshes nothing for it).
    cache = RedisCache(startup_nodes=redis_cluster.nodes, key_prefix="full:", max_connections=1)
    keys = [f"k{i}" for i in range(30)]
    try:
        assert cache.set_many(dict.fromkeys(keys, 1)) == keys
        client = cache._write_client
        node = client.get_node_from_key("full:k0")
        full = {key for key in keys if client.get_node_from_key("full:" + key) is node}
        pool = node.redis_connection.connection_pool
        held = pool.get_connection()  # another thread's call, in flight
        try:
            received = _connections_received(redis_cluster)
            errors = cache.stats()["errors"]
            for _ in range(20):
                assert cache.get_many(*keys) == [None if key in full else 1 for key in keys]
            assert cache.stats()["errors"] == errors + 20
            assert _connections_received(redis_cluster) == received + len(redis_cluster.servers)
        finally:
            pool.release(held)
        assert cache.get_many(*keys) == [1] * len(keys)
    finally:
        cache.clear()
        cache.close()
