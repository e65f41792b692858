"""Adversarial review of RedisCache's large calls: lone values refused or lost to an outage,
MGET pieces, and the pools after each failure."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from servers import RedisCluster

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
