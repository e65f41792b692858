"""RedisCache's batches under large calls, short socket timeouts and values Redis refuses."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest
import test_redis
from servers import RedisCluster, RedisServer

from cacheplug import RedisCache

LONG_NAMES = 100_000
NAME_LENGTH = 1000  # 100 MB of names: one MGET of them takes Redis about 0.3 s to read
SHORT_TIMEOUT = 0.1


@pytest.fixture(params=["tcp", "unix", "unicode", "cluster"])
def short_timeout_cache(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis_cluster: RedisCluster
) -> Iterator[tuple[RedisCache, str]]:
    """A cache whose socket timeout is shorter than one MGET of ``LONG_NAMES`` names, and the
    first character of its keys (non-ASCII names are packed with their UTF-8 lengths)."""
    kind = request.param
    first = "é" if kind == "unicode" else "k"
    if kind == "cluster":
        cache = RedisCache(startup_nodes=redis_cluster.nodes, socket_timeout=SHORT_TIMEOUT)
    elif kind == "unix":
        cache = RedisCache(unix_socket_path=redis_server.unix_socket, socket_timeout=SHORT_TIMEOUT)
    else:
        cache = RedisCache(port=redis_server.port, socket_timeout=SHORT_TIMEOUT)
    cache.key_prefix = "{batch}:"  # one hash slot on a cluster: one node reads every name
    yield cache, first
    cache.clear()
    cache.close()


def test_get_many_of_more_names_than_one_timeout_reads_leaves_the_server_up(
    short_timeout_cache: tuple[RedisCache, str],
) -> None:
    cache, first = short_timeout_cache
    keys = [first + f"{i:0{NAME_LENGTH - 1}d}" for i in range(LONG_NAMES)]
    stored = {keys[0]: "first", keys[LONG_NAMES // 2]: 2, keys[-1]: b"last"}
    assert sorted(cache.set_many(stored)) == sorted(stored)
    values = cache.get_many(*keys)
    assert cache.stats()["errors"] == 0
    assert [(i, v) for i, v in enumerate(values) if v is not None] == [
        (0, "first"),
        (LONG_NAMES // 2, 2),
        (LONG_NAMES - 1, b"last"),
    ]
    assert cache.stats()["hits"] == 3
    assert cache.stats()["misses"] == LONG_NAMES - 3
    assert cache.get(keys[-1]) == b"last"  # not taken for a server that is down


BULK_LIMIT = 2**20  # the lowest proto-max-bulk-len Redis takes
TOO_BIG = b"x" * (2 * BULK_LIMIT)
NEAR_LIMIT = b"n" * (BULK_LIMIT - 2**15)  # under the limit, but sent alone like TOO_BIG


@pytest.fixture(scope="module")
def limited_server() -> Iterator[RedisServer]:
    """A server refusing values over 1 MB: it answers an error and closes the connection."""
    server = RedisServer(unix_socket=True, config={"proto-max-bulk-len": "1mb"}).start()
    yield server
    server.kill()
    server.stop()


@pytest.fixture(params=["tcp", "unix", "prefix", "cluster"])
def limited_cache(
    request: pytest.FixtureRequest, limited_server: RedisServer, redis_cluster: RedisCluster
) -> Iterator[RedisCache]:
    """A cache whose server (every node on a cluster) refuses values over ``BULK_LIMIT``."""
    kind = request.param
    if kind == "cluster":
        for node in redis_cluster.servers:
            node.command("CONFIG", "SET", "proto-max-bulk-len", "1mb")
        cache = RedisCache(startup_nodes=redis_cluster.nodes)
    elif kind == "unix":
        cache = RedisCache(unix_socket_path=limited_server.unix_socket)
    else:
        cache = RedisCache(port=limited_server.port, key_prefix="p:" if kind == "prefix" else None)
    try:
        yield cache
    finally:
        cache.clear()
        cache.close()
        if kind == "cluster":
            for node in redis_cluster.servers:
                node.command("CONFIG", "SET", "proto-max-bulk-len", "512mb")


def test_a_value_over_the_bulk_limit_is_left_out_and_the_rest_is_stored(
    limited_cache: RedisCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache = limited_cache
    small = {f"k{i}": i if i % 2 else f"v{i}" for i in range(300)}
    # refused first: on one connection it used to cut off every write after it
    mapping = {"too-big": TOO_BIG, **small, "near": NEAR_LIMIT, "too-big-2": TOO_BIG}
    stored = cache.set_many(mapping)
    assert sorted(stored) == sorted([*small, "near"])
    assert cache.stats()["sets"] == len(small) + 1
    assert cache.stats()["errors"] == 1  # one per call, as for every failing call
    assert len([r for r in caplog.records if r.name == "cacheplug"]) == 1
    assert cache.get_many("k0", "k1", "near", "too-big") == ["v0", 1, NEAR_LIMIT, None]
    # a single write refused in turn leaves the server up for the next call
    assert cache.set("too-big", TOO_BIG) is False
    assert cache.get("k3") == 3
    assert cache.add("too-big", TOO_BIG) is False
    assert cache.has("k3") is True
    assert cache.set("k3", "again") is True
    assert cache.stats()["errors"] == 3


class LateClosingProxy(test_redis.CuttingProxy):
    """A TCP relay to a server that shows the server's close of a connection to the client
    only when the client sends on it again: the reply before the close, a protocol error, is
    read first, as when Redis has not closed yet. Data the server no longer takes is dropped.
    """

    def __init__(self, port: int) -> None:
        self.closed: set[socket.socket] = set()  # client sockets whose server side closed
        super().__init__(port, marker=b"", cuts=0)

    def _relay(self, source: socket.socket, target: socket.socket, to_server: bool) -> None:
        client = source if to_server else target
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if client in self.closed and data.startswith(b"*"):  # a new command
                    break
                with contextlib.suppress(OSError):
                    target.sendall(data)
        if not to_server:  # the server closed: the client sees it on its next command
            self.closed.add(client)
            source.close()
            return
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_a_connection_redis_closes_on_a_refused_value_is_not_used_again(
    limited_server: RedisServer,
) -> None:
    proxy = LateClosingProxy(limited_server.port)
    cache = RedisCache(port=proxy.port, key_prefix="late:", socket_timeout=1)
    over = b"x" * (BULK_LIMIT + 1)  # refused from its header on: Redis answers, then closes
    try:
        assert cache.set("k", "v") is True
        for write in (cache.add, cache.set):
            assert write("too-big", over) is False
            # the same pools: add and delete never retry, set and get retry once
            assert cache.delete("k") is True
            assert cache.set("k", "v") is True
            assert cache.get("k") == "v"
        assert cache.stats()["errors"] == 2
    finally:
        cache.close()
        proxy.close()
