"""RedisCache at the edges: timeouts Redis cannot take as they are, and clients given by a user."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode
from servers import RedisCluster, RedisServer

from cacheplug import ConfigurationError, RedisCache

_prefixes = itertools.count()

# Redis refuses an expiry more than 2**63 ms from now; any TTL past a million years will do.
MILLION_YEARS_MS = 10**6 * 365 * 24 * 3600 * 1000


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port)
    yield client
    client.close()


def make_cache(server: RedisServer, *, direct: bool = True, **kwargs: Any) -> RedisCache:
    cache = RedisCache(port=server.port, key_prefix=f"edge{next(_prefixes)}:", **kwargs)
    cache._direct = cache._direct and direct  # redis-py's own path when False
    return cache


@pytest.mark.parametrize("direct", [True, False], ids=["packed", "redis-py"])
@pytest.mark.parametrize("timeout", [10**16, 2**70, 1e300, 1e308])
def test_a_timeout_too_long_for_redis_still_stores(
    redis_server: RedisServer, raw: redis.Redis, timeout: float, direct: bool
) -> None:
    cache = make_cache(redis_server, direct=direct)
    name = cache.key_prefix + "k"
    assert cache.set("k", "old", timeout=60) is True
    assert cache.set("k", "new", timeout=timeout) is True
    assert (cache.get("k"), raw.pttl(name) > MILLION_YEARS_MS) == ("new", True)
    assert cache.set_many({"k": "many", "j": 1}, timeout=timeout) == ["k", "j"]
    assert cache.get_many("k", "j") == ["many", 1]
    assert cache.add("a", "added", timeout=timeout) is True
    assert raw.pttl(cache.key_prefix + "a") > MILLION_YEARS_MS
    assert cache.stats()["errors"] == 0
    cache.clear()


def test_a_default_timeout_too_long_for_redis_still_counts(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    cache = make_cache(redis_server, default_timeout=1e308)
    assert (cache.inc("n"), cache.dec("n", 3)) == (1, -2)  # the script's SET NX PX took it
    assert raw.pttl(cache.key_prefix + "n") > MILLION_YEARS_MS
    assert cache.set("k", "v") is True
    assert (cache.get("k"), cache.stats()["errors"]) == ("v", 0)
    cache.clear()


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_client_decoding_replies_is_refused(redis_server: RedisServer, protocol: int) -> None:
    client = redis.Redis(port=redis_server.port, decode_responses=True, protocol=protocol)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisCache(host=client)
    client.close()


def test_a_cluster_client_decoding_replies_is_refused(redis_cluster: RedisCluster) -> None:
    nodes = [ClusterNode(host, port) for host, port in redis_cluster.nodes]  # type: ignore[no-untyped-call]
    client = redis.RedisCluster(startup_nodes=nodes, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisCache(host=client)
    client.close()


@pytest.mark.parametrize("serializer", ["pickle", "json"])
def test_inc_on_a_small_int_redis_cannot_count_is_a_type_error(
    redis_server: RedisServer, raw: redis.Redis, serializer: str
) -> None:
    cache = make_cache(redis_server, serializer=serializer)
    # Written by another client: they read back as 7, but INCRBY refuses them.
    serialized = pickle.dumps(7) if serializer == "pickle" else b" 7"
    foreign = {"padded": b"007", "serialized": serialized}
    for key, payload in foreign.items():
        raw.set(cache.key_prefix + key, payload)
        assert cache.get(key) == 7
        with pytest.raises(TypeError, match="does not hold an integer"):  # no 64-bit overflow
            cache.inc(key)
        assert raw.get(cache.key_prefix + key) == payload
    cache.clear()
