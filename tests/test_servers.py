"""The server fixtures start real engines that clients can use, lose and find again."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest
import redis
import servers
from pymemcache.client.base import Client as MemcacheClient
from pymemcache.exceptions import MemcacheError
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as RedisClusterClient
from redis.retry import Retry
from servers import MemcachedServer, RedisCluster, RedisServer, join_cluster

pytest_plugins = ["servers"]


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def memcache_client(fresh_memcached_server: MemcachedServer) -> Iterator[MemcacheClient]:
    client = MemcacheClient(fresh_memcached_server.address, connect_timeout=1, timeout=1)
    yield client
    client.close()


def test_redis_server_stores_and_returns_values(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("servers:greeting", b"hello")
    assert client.get("servers:greeting") == b"hello"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client.close()


def test_redis_unix_socket_reaches_the_same_server(redis_server: RedisServer) -> None:
    assert redis_server.unix_socket is not None
    assert os.path.exists(redis_server.unix_socket)
    over_socket = redis.Redis(unix_socket_path=redis_server.unix_socket)
    over_socket.set("servers:via-socket", b"1")
    over_tcp = redis.Redis.from_url(redis_server.url)
    assert over_tcp.get("servers:via-socket") == b"1"
    over_socket.close()
    over_tcp.close()


def test_redis_flush_empties_every_database(redis_server: RedisServer) -> None:
    redis.Redis.from_url(redis_server.url).set("servers:flush-me", b"x")
    redis.Redis(port=redis_server.port, db=3).set("servers:flush-me-too", b"x")
    redis_server.flush()
    assert redis.Redis.from_url(redis_server.url).dbsize() == 0
    assert redis.Redis(port=redis_server.port, db=3).dbsize() == 0


def test_redis_password_is_required_and_in_the_url() -> None:
    with RedisServer(password="s3cret") as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        # Without retries: redis-py 8 otherwise spends ~4 s retrying a refused authentication.
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, retry=Retry(NoBackoff(), 0)).ping()
        client = redis.Redis.from_url(server.url)
        assert client.set("k", b"v") is True
        assert client.get("k") == b"v"
        server.flush()
        assert client.get("k") is None
        client.close()


def test_redis_kill_breaks_clients_and_restart_reuses_the_port(
    fresh_redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(fresh_redis_server.url, socket_connect_timeout=1)
    client.set("k", b"before")
    port, pid = fresh_redis_server.port, fresh_redis_server.pid
    assert pid is not None

    fresh_redis_server.kill()
    assert not fresh_redis_server.running
    assert not _process_exists(pid)
    with pytest.raises(redis.ConnectionError):
        client.get("k")

    fresh_redis_server.restart()
    assert fresh_redis_server.port == port
    assert fresh_redis_server.pid not in (None, pid)
    assert client.get("k") is None  # no persistence: the crash lost the data
    client.set("k", b"after")
    assert client.get("k") == b"after"
    client.close()


def test_redis_restart_of_a_running_server_keeps_port_and_unix_socket(
    fresh_redis_server: RedisServer,
) -> None:
    port, socket_path = fresh_redis_server.port, fresh_redis_server.unix_socket
    fresh_redis_server.restart()
    assert fresh_redis_server.port == port
    assert fresh_redis_server.unix_socket == socket_path
    assert redis.Redis(unix_socket_path=socket_path).ping() is True


def test_stop_ends_the_process_and_removes_its_directory() -> None:
    server = RedisServer(unix_socket=True).start()
    pid, directory = server.pid, server.directory
    assert pid is not None and directory.is_dir()
    server.stop()
    assert not _process_exists(pid)
    assert not directory.exists()
    server.stop()  # idempotent


def test_redis_config_directives_reach_the_server() -> None:
    with RedisServer(config={"maxmemory": "1mb", "maxmemory-policy": "allkeys-lru"}) as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        assert client.config_get("maxmemory") == {"maxmemory": "1048576"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
        client.close()


def test_a_server_that_dies_at_startup_fails_with_its_log() -> None:
    server = RedisServer(config={"cacheplug-no-such-directive": "1"})
    with pytest.raises(RuntimeError, match=r"(?s)exited with status \d+.*cacheplug-no-such"):
        server.start()
    assert not server.running
    with pytest.raises(RuntimeError, match="not been started"):
        server.directory  # noqa: B018


def test_a_taken_port_is_detected_and_another_one_chosen(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_free_port = servers._free_port
    ports = iter([redis_server.port])
    monkeypatch.setattr(servers, "_free_port", lambda: next(ports, None) or real_free_port())
    with RedisServer() as server:
        assert server.port != redis_server.port
        info = redis.Redis(port=server.port).info("server")
        assert info["process_id"] == server.pid
    assert redis.Redis(port=redis_server.port).ping() is True


def test_memcached_server_stores_and_returns_values(memcached_server: MemcachedServer) -> None:
    client = MemcacheClient(memcached_server.address)
    assert client.set("servers:greeting", b"hello") is True
    assert client.get("servers:greeting") == b"hello"
    assert memcached_server.url == f"memcached://127.0.0.1:{memcached_server.port}"
    memcached_server.flush()
    assert client.get("servers:greeting") is None
    client.close()


def test_memcached_kill_breaks_clients_and_restart_reuses_the_port(
    fresh_memcached_server: MemcachedServer, memcache_client: MemcacheClient
) -> None:
    memcache_client.set("k", b"before")
    port = fresh_memcached_server.port

    fresh_memcached_server.kill()
    assert not fresh_memcached_server.running
    with pytest.raises((OSError, MemcacheError)):
        memcache_client.get("k")
    with pytest.raises(ConnectionRefusedError):
        MemcacheClient(("127.0.0.1", port), connect_timeout=1).get("k")

    fresh_memcached_server.restart()
    assert fresh_memcached_server.port == port
    assert memcache_client.get("k") is None
    memcache_client.set("k", b"after")
    assert memcache_client.get("k") == b"after"


def _cluster_client(cluster: RedisCluster) -> RedisClusterClient:
    nodes = [ClusterNode(host, port) for host, port in cluster.nodes]  # type: ignore[no-untyped-call]
    return RedisClusterClient(startup_nodes=nodes)


def test_cluster_spreads_keys_over_every_node(redis_cluster: RedisCluster) -> None:
    hosts = ",".join(f"127.0.0.1:{port}" for _, port in redis_cluster.nodes)
    assert redis_cluster.url == f"redis+cluster://{hosts}"
    assert len(redis_cluster.nodes) == 3
    client = _cluster_client(redis_cluster)
    redis_cluster.flush()
    keys = [f"servers:cluster:{i}" for i in range(60)]
    for key in keys:
        client.set(key, key.encode())
    assert [client.get(key) for key in keys] == [key.encode() for key in keys]

    per_node = [redis.Redis(host=host, port=port).dbsize() for host, port in redis_cluster.nodes]
    assert sum(per_node) == len(keys)
    assert all(count > 0 for count in per_node), per_node

    redis_cluster.flush()
    assert [redis.Redis(port=port).dbsize() for _, port in redis_cluster.nodes] == [0, 0, 0]
    client.close()


def test_cluster_slots_are_split_between_three_masters(redis_cluster: RedisCluster) -> None:
    slots = redis.Redis(port=redis_cluster.nodes[0][1]).cluster("slots")
    owners = {(start, end): node[1] for (start, end, node, *_replicas) in slots}
    assert sorted(owners) == [(0, 5460), (5461, 10921), (10922, 16383)]
    assert sorted(owners.values()) == sorted(port for _, port in redis_cluster.nodes)


@pytest.mark.parametrize("server_class", [RedisServer, MemcachedServer, RedisCluster])
def test_a_missing_binary_fails_with_the_install_command(
    server_class: type[RedisServer | MemcachedServer | RedisCluster],
) -> None:
    server = server_class(binary="cacheplug-no-such-server")
    with pytest.raises(RuntimeError, match="apt-get install -y redis-server memcached"):
        server.start()


def test_a_node_that_stalls_through_its_handshake_still_joins_the_cluster() -> None:
    # The first node forgets a handshake not answered within cluster-node-timeout (1 s); the
    # stalled node then knows the first one but not the reverse, and without a second meet the
    # cluster never forms (what `redis-cli --cluster create` waited on forever in CI).
    servers = [RedisServer(cluster=True).start() for _ in range(2)]
    stalled = servers[1]
    assert stalled.pid is not None
    os.kill(stalled.pid, signal.SIGSTOP)
    resume = threading.Timer(2.5, os.kill, (stalled.pid, signal.SIGCONT))
    resume.start()
    try:
        join_cluster(servers, replicas=1)
        for server in servers:
            nodes = bytes(server.command("CLUSTER", "NODES"))  # type: ignore[arg-type]
            # a second meet may leave a handshake entry behind, which expires on its own
            joined = [line for line in nodes.splitlines() if b"handshake" not in line.split()[2]]
            assert len(joined) == 2
        role = bytes(stalled.command("INFO", "replication"))  # type: ignore[arg-type]
        assert b"role:slave" in role
    finally:
        resume.cancel()
        os.kill(stalled.pid, signal.SIGCONT)
        for server in servers:
            server.stop()
