"""Adversarial review of RedisCache's large calls: lone values refused or lost to an outage,
MGET pieces, and the pools after each failure."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import test_redis
import test_redis_batches
from servers import RedisCluster, RedisServer
from waiting import paused_process

from cacheplug import RedisCache
from cacheplug.backends.redis import LONE_VALUE

REFUSED = b"r" * (8 * 2**20)  # over a 1 MB proto-max-bulk-len: Redis cuts the sending short
LONE = b"l" * LONE_VALUE  # sent alone, stored


@pytest.fixture
def partial_cluster() -> Iterator[RedisCluster]:
    """A cluster of its own refusing values over 1 MB, whose live nodes serve while one is down."""
    with RedisCluster() as cluster:
        for server in cluster.servers:
            server.command("CONFIG", "SET", "cluster-require-full-coverage", "no")
            server.command("CONFIG", "SET", "proto-max-bulk-len", "1mb")
        yield cluster


def _messages(cache: RedisCache, caplog: pytest.LogCaptureFixture) -> list[str]:
    """The cache's log lines since the last call; the next failure is logged at once."""
    messages = [r.getMessage() for r in caplog.records if r.name == "cacheplug"]
    caplog.clear()
    cache._last_logged.clear()
    return messages


def test_cluster_lone_values_are_judged_on_their_own_node(
    partial_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    # The ping telling a refused value from an outage went to the client's default node, not
    # the key's: a down node's value was logged as too big, and a value refused by a live node
    # while the default node was down was taken for an outage that left the next values unsent.
    cache = RedisCache(startup_nodes=partial_cluster.nodes, key_prefix="lone:")
    assert cache.set("warm", 1) is True
    client = cache._write_client
    default = client.get_default_node().port
    ports = {server.port: server for server in partial_cluster.servers}

    def port_of(key: str) -> int:
        return int(client.get_node_from_key("lone:" + key).port)

    keys = [f"k{i}" for i in range(200)]
    other = next(port for port in ports if port != default)
    third = next(port for port in ports if port not in (default, other))
    on_other = [key for key in keys if port_of(key) == other]
    on_third = [key for key in keys if port_of(key) == third]
    on_default = [key for key in keys if port_of(key) == default]

    tag = next(f"{{t{i}}}" for i in range(100) if port_of(f"{{t{i}}}") == third)
    tagged = [f"{tag}{i}" for i in range(2001)]  # one slot, three MGET pieces
    stored = {key: i for i, key in enumerate(tagged) if i % 3 == 0} | {on_other[9]: "lost"}
    assert sorted(cache.set_many(stored)) == sorted(stored)

    # 1. a non-default node down: its lone value is an outage, the others are stored
    ports[other].kill()
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        mapping = {on_other[0]: LONE, on_third[0]: LONE, on_default[0]: LONE, on_other[1]: LONE}
        assert sorted(cache.set_many(mapping)) == sorted([on_third[0], on_default[0]])
        assert cache.stats()["errors"] == 1
        (message,) = _messages(cache, caplog)
        assert "proto-max-bulk-len" not in message
        assert cache.set(on_other[2], LONE) is False
        (message,) = _messages(cache, caplog)
        assert "proto-max-bulk-len" not in message

    # a slot read in pieces beside a node down: its keys, then duplicates across pieces
    asked = [*tagged, on_other[9], *tagged[:1500]]
    before = cache.stats()
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        answer = cache.get_many(*asked)
    assert answer == [None if key == on_other[9] else stored.get(key) for key in asked]
    hits = sum(key in stored for key in asked) - 1
    after = cache.stats()
    assert after["hits"] - before["hits"] == hits
    assert after["misses"] - before["misses"] == len(asked) - hits - 1  # not the down node's key
    assert after["errors"] - before["errors"] == 1
    _messages(cache, caplog)

    # 2. the default node down too: a value the live node refuses is a refused value
    ports[default].kill()
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        mapping = {on_third[1]: REFUSED, on_third[2]: LONE, on_third[3]: LONE}
        assert sorted(cache.set_many(mapping)) == sorted(on_third[2:4])
        (message,) = _messages(cache, caplog)
        assert "proto-max-bulk-len" in message
        assert cache.set(on_third[4], REFUSED) is False
        (message,) = _messages(cache, caplog)
        assert "proto-max-bulk-len" in message
    assert cache.get_many(*on_third[:4]) == [LONE, None, LONE, LONE]
    cache.close()


def test_a_hung_cluster_node_costs_set_many_one_timeout_with_lone_values(
    partial_cluster: RedisCluster,
) -> None:
    # A lone value for the hung node timed out after its small values had, and the live
    # nodes' lone values after it were left unsent.
    timeout = 0.5
    cache = RedisCache(
        startup_nodes=partial_cluster.nodes, key_prefix="hung:", socket_timeout=timeout
    )
    client = cache._write_client
    hung = partial_cluster.servers[1]
    keys = [f"k{i}" for i in range(60)]
    on_hung = [key for key in keys if client.get_node_from_key("hung:" + key).port == hung.port]
    alive = [key for key in keys if key not in on_hung]
    mapping = {key: LONE if i < 4 else i for i, key in enumerate([*on_hung, *alive])}
    mapping |= {alive[-1]: LONE, alive[-2]: LONE}
    assert hung.pid is not None
    with paused_process(hung.pid):
        started = time.monotonic()
        stored = cache.set_many(mapping)
        spent = time.monotonic() - started
    assert sorted(stored) == sorted(alive)
    assert spent < 1.8 * timeout
    assert cache.stats()["errors"] == 1
    cache.close()


class KillingProxy(test_redis.CuttingProxy):
    """A TCP relay that kills its server when a command carries ``marker``, then drops that
    connection and takes no more: a server dying while a large value is on its way."""

    def __init__(self, server: RedisServer, marker: bytes) -> None:
        self.server = server
        super().__init__(server.port, marker=marker, cuts=1)

    def _relay(self, source: socket.socket, target: socket.socket, to_server: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if to_server and self.marker in data and self.cuts > 0:
                    self.cuts -= 1
                    # first: a retry finds the port closed (shutdown wakes the accept)
                    self.listener.shutdown(socket.SHUT_RDWR)
                    self.server.kill()
                    break
                target.sendall(data)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.mark.parametrize("write", ["set", "add", "set_many"])
def test_a_server_dying_under_a_lone_value_is_an_outage_not_a_refused_value(
    write: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer().start()
    proxy = KillingProxy(server, b"MARK")
    cache = RedisCache(port=proxy.port, dead_timeout=60)
    big = b"MARK" * (LONE_VALUE // 4)
    try:
        assert cache.set("before", 1) is True
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            if write == "set_many":
                assert cache.set_many({"a": 1, "big": big, "big2": big}) == ["a"]
            else:
                assert getattr(cache, write)("big", big) is False
            (message,) = _messages(cache, caplog)
        assert "proto-max-bulk-len" not in message
        assert "ConnectionError" in message
        assert cache.stats()["errors"] == 1
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            assert cache.get("before") is None
            (message,) = _messages(cache, caplog)
        assert "ServerDown" in message  # in its dead time, not asked
    finally:
        cache.close()
        proxy.close()
        server.stop()


@pytest.mark.parametrize(("write", "command"), [("set", b"DEL"), ("add", b"EXISTS")])
def test_a_lost_connection_on_a_born_expired_write_is_an_outage_whatever_the_value(
    redis_server: RedisServer, write: str, command: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # A negative timeout sends DEL or EXISTS, not the value; a large value made a cut
    # connection a value refused for its size (no dead time), where a small one is an outage.
    proxy = test_redis.CuttingProxy(redis_server.port, marker=command, cuts=2)  # and the retry
    cache = RedisCache(port=proxy.port, dead_timeout=60)
    try:
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            assert getattr(cache, write)("k", LONE, timeout=-1) is False
            (message,) = _messages(cache, caplog)
            assert "proto-max-bulk-len" not in message
            assert cache.get("k") is None
            (message,) = _messages(cache, caplog)
        assert "ServerDown" in message  # in its dead time, as after any lost connection
    finally:
        cache.close()
        proxy.close()


def test_set_many_answers_its_keys_in_the_mapping_order_with_lone_values(
    redis_server: RedisServer,
) -> None:
    # cachelib answers the keys in the mapping's order; lone values came last
    cache = RedisCache(port=redis_server.port, key_prefix="order:")
    mapping = {"big": LONE, "a": 1, "big2": LONE, "b": 2}
    try:
        assert cache.set_many(mapping) == list(mapping)
    finally:
        cache.clear()
        cache.close()


BULK_LIMIT = 2**20  # proto-max-bulk-len of the limited servers: a value of it passes, one more not


@pytest.fixture(scope="module")
def limited_server() -> Iterator[RedisServer]:
    server = RedisServer(config={"proto-max-bulk-len": "1mb"}).start()
    yield server
    server.kill()
    server.stop()


@pytest.fixture(params=["plain", "prefix-secret", "cluster"])
def limited_cache(
    request: pytest.FixtureRequest, limited_server: RedisServer, redis_cluster: RedisCluster
) -> Iterator[RedisCache]:
    if request.param == "cluster":
        for node in redis_cluster.servers:
            node.command("CONFIG", "SET", "proto-max-bulk-len", "1mb")
        cache = RedisCache(startup_nodes=redis_cluster.nodes, key_prefix="edge:")
    elif request.param == "plain":
        cache = RedisCache(port=limited_server.port)
    else:
        cache = RedisCache(port=limited_server.port, key_prefix="edge:", secret="s3cret")
    try:
        yield cache
    finally:
        cache.clear()
        cache.close()
        if request.param == "cluster":
            for node in redis_cluster.servers:
                node.command("CONFIG", "SET", "proto-max-bulk-len", "512mb")


def _sized(cache: RedisCache, size: int) -> bytes:
    """A value whose payload, as ``cache`` sends it, is ``size`` bytes long."""
    value = b"v" * size
    return b"v" * (2 * size - len(cache._dump(value, "big", cache.key_prefix)))


@pytest.mark.parametrize(
    "size", [LONE_VALUE - 1, LONE_VALUE, BULK_LIMIT, BULK_LIMIT + 1], ids=lambda n: f"{n}B"
)
def test_writes_around_the_lone_and_bulk_limits_answer_exactly_what_was_stored(
    limited_cache: RedisCache, size: int
) -> None:
    cache = limited_cache
    value = _sized(cache, size)
    assert len(cache._dump(value, "big", cache.key_prefix)) == size
    fits = size <= BULK_LIMIT
    small = {f"s{i}": i for i in range(50)}
    assert sorted(cache.set_many({"big": value, **small, "big2": value})) == sorted(
        [*small, *(["big", "big2"] if fits else [])]
    )
    assert cache.stats()["errors"] == (0 if fits else 1)
    assert cache.set("one", value) is fits
    assert cache.add("two", value) is fits
    assert cache.add("two", value) is False
    assert cache.get_many("big", "s1", "one", "two", "big2") == (
        [value, 1, value, value, value] if fits else [None, 1, None, None, None]
    )
    assert cache.delete_many("big", "one", "two", "s1") == (
        ["big", "one", "two", "s1"] if fits else ["s1"]
    )
    assert cache.stats()["errors"] == (0 if fits else 4)  # set_many, set, add twice
    assert cache.set("after", "ok") is True and cache.get("after") == "ok"  # never marked down


def test_a_connection_that_carried_a_refused_value_goes_to_no_other_thread(
    limited_server: RedisServer,
) -> None:
    # Redis closes the connection once its protocol error is out; it went back to the pool
    # open and was closed a moment later with the idle ones: a thread taking it in between
    # failed (add, delete, and with retries=0 set and get too; the server marked down).
    proxy = test_redis_batches.LateClosingProxy(limited_server.port)
    cache = RedisCache(port=proxy.port, key_prefix="race:", socket_timeout=2, retries=0)
    over = b"x" * (BULK_LIMIT + 1)
    stop = threading.Event()
    wrong: list[str] = []

    def work(worker: int) -> None:
        for i in range(10**9):
            if stop.is_set():
                return
            key = f"{worker}-{i}"
            answers = (cache.add(key, i), cache.get(key), cache.set(key, -i), cache.delete(key))
            if answers != (True, i, True, True):
                wrong.append(f"{key}: {answers}")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: the window of the race is short
    workers = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    try:
        for thread in workers:
            thread.start()
        for _ in range(100):
            assert cache.add("big", over) is False
            assert cache.set_many({"big": over}) == []
    finally:
        stop.set()
        for thread in workers:
            thread.join()
        sys.setswitchinterval(interval)
        cache.close()
        proxy.close()
    assert wrong == []
    assert cache.stats()["errors"] == 200
