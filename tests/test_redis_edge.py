"""RedisCache at the edges: timeouts Redis cannot take as they are, keys UTF-8 cannot encode,
and clients given by a user.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.cluster import ClusterNode
from servers import RedisCluster, RedisServer

from cacheplug import ConfigurationError, RedisCache, SerializationError, from_url

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


# -- keys with lone surrogates (legal str, not UTF-8): they work as on the other backends ----------

SURROGATE_KEYS = ["a\ud800", "a\udfff", "\udc80", "a\ud800\udc00"]  # the last: two lone halves
LOOKALIKES = ["a", "a\ufffd", "a?", "a\\ud800", "\U00010000"]  # what a lossy encoding would give


@pytest.fixture(params=["server", "unix", "cluster"])
def connection(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The keyword arguments of a ``RedisCache`` building its own client of each kind."""
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return {"startup_nodes": cluster.nodes}
    server: RedisServer = request.getfixturevalue("redis_server")
    if request.param == "unix":
        return {"unix_socket_path": server.unix_socket}
    return {"port": server.port}


@pytest.mark.parametrize("prefix", ["surr\udc80:", "plain:"])
def test_keys_with_lone_surrogates_work_on_every_operation(
    connection: dict[str, Any], prefix: str
) -> None:
    cache = RedisCache(key_prefix=f"{prefix}{next(_prefixes)}:", **connection)
    keys = [*SURROGATE_KEYS, *LOOKALIKES]
    assert cache.set_many({key: f"v-{key}" for key in keys}) == keys
    assert cache.get_many(*keys) == [f"v-{key}" for key in keys]  # no two keys collide
    for key in SURROGATE_KEYS:
        assert (cache.has(key), cache.get(key)) == (True, f"v-{key}")
        assert cache.set(key, [key]) is True
        assert cache.get(key) == [key]
        assert cache.add(key, 0) is False
        assert cache.delete(key) is True
        assert (cache.inc(key, 5), cache.dec(key), cache.get(key)) == (5, 4, 4)
    assert cache.delete_many(*SURROGATE_KEYS) == SURROGATE_KEYS
    assert cache.get_many(*keys) == [None] * 4 + [f"v-{key}" for key in LOOKALIKES]
    assert cache.clear() is True
    assert cache.get_many(*LOOKALIKES) == [None] * len(LOOKALIKES)
    assert cache.stats()["errors"] == 0
    cache.close()


def test_clear_under_a_surrogate_prefix_keeps_other_prefixes(redis_server: RedisServer) -> None:
    mine = RedisCache(port=redis_server.port, key_prefix=f"c\ud800{next(_prefixes)}:")
    other = RedisCache(port=redis_server.port, key_prefix=mine.key_prefix.replace("\ud800", "?"))
    assert mine.set("k", 1) and other.set("k", 2)
    assert mine.clear() is True
    assert (mine.get("k"), other.get("k")) == (None, 2)
    other.clear()


lone_surrogate_text = st.text(
    alphabet=st.characters(categories=["Cs"]) | st.characters(codec="utf-8"), max_size=40
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(keys=st.lists(lone_surrogate_text, min_size=1, max_size=4, unique=True))
def test_hostile_keys_with_lone_surrogates_round_trip(
    connection: dict[str, Any], keys: list[str]
) -> None:
    cache = RedisCache(key_prefix="hostile\udfff:", **connection)
    for n, key in enumerate(keys):
        assert cache.set(key, {"n": n, "key": key}) is True
    for n, key in enumerate(keys):
        assert cache.get(key) == {"n": n, "key": key}
        assert cache.has(key) is True
    assert sorted(cache.delete_many(*keys)) == sorted(keys)
    assert cache.get_many(*keys) == [None] * len(keys)
    cache.close()


def test_a_given_client_or_encoding_errors_keeps_its_own_encoding(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis(port=redis_server.port)
    RedisCache(host=client)
    assert client.get_encoder().encoding_errors == "strict"
    cache = RedisCache(port=redis_server.port, encoding_errors="strict", key_prefix="strict:")
    with pytest.raises(UnicodeEncodeError):
        cache.set("a\ud800", 1)
    client.close()


# -- configuration that contradicts itself -----------------------------------------------------


def test_a_cluster_with_a_db_other_than_0_is_refused(redis_cluster: RedisCluster) -> None:
    with pytest.raises(ConfigurationError, match=r"only db 0, got db=3"):
        RedisCache(startup_nodes=redis_cluster.nodes, db=3)
    cache = RedisCache(startup_nodes=redis_cluster.nodes, db=0, key_prefix="db0:")
    assert (cache.set("k", 1), cache.get("k")) == (True, 1)
    cache.clear()


@pytest.mark.parametrize("value", ["false", "0", "no"])
def test_rediss_with_ssl_off_is_refused(value: str) -> None:
    with pytest.raises(ConfigurationError, match=r"rediss:// always uses TLS.*redis://") as err:
        from_url(f"rediss://:pw-s3cret@localhost:6380/0?ssl={value}")
    assert "pw-s3cret" not in str(err.value)
    with pytest.raises(ConfigurationError, match="ssl=false"):
        from_url("rediss://localhost:6380/0", ssl=False)
    cache = from_url("rediss://localhost:6380/0?ssl=true")
    assert isinstance(cache, RedisCache)
    assert cache._client.connection_pool.connection_class is redis.SSLConnection


@pytest.mark.parametrize("direct", [True, False], ids=["packed", "redis-py"])
def test_a_born_expired_write_counts_as_a_set_in_set_and_set_many(
    redis_server: RedisServer, direct: bool
) -> None:
    cache = make_cache(redis_server, direct=direct)
    cache.set_many({"a": 1, "b": 2})
    sets = cache.stats()["sets"]
    assert cache.set("a", 1, timeout=-1) is True
    assert cache.set_many({"a": 1, "b": 2, "c": 3}, timeout=-1) == ["a", "b", "c"]
    assert cache.stats()["sets"] - sets == 4  # one per key, as SimpleCache counts them
    assert cache.get_many("a", "b", "c") == [None, None, None]


def cluster_command(node: redis.Redis, *args: Any) -> Any:
    """``CLUSTER args`` on one node."""
    return node.execute_command("CLUSTER", *args)  # type: ignore[no-untyped-call]


def test_many_key_calls_follow_a_slot_moved_behind_the_clients_back() -> None:
    with RedisCluster() as cluster:
        cache = RedisCache(startup_nodes=cluster.nodes, key_prefix="moved:")
        keys = [f"k{i}" for i in range(10)]
        assert cache.set_many(dict.fromkeys(keys, 1)) == keys
        client = cache._client
        slot = client.keyslot("moved:k0")
        source = client.get_node_from_key("moved:k0")
        target = next(node for node in client.get_primaries() if node.name != source.name)
        nodes = {server.port: redis.Redis(port=server.port) for server in cluster.servers}
        ids = {port: cluster_command(node, "MYID") for port, node in nodes.items()}
        cluster_command(nodes[target.port], "SETSLOT", slot, "IMPORTING", ids[source.port])
        cluster_command(nodes[source.port], "SETSLOT", slot, "MIGRATING", ids[target.port])
        for name in cluster_command(nodes[source.port], "GETKEYSINSLOT", slot, 100):
            nodes[source.port].migrate(target.host, target.port, name, 0, 5000)
        for node in nodes.values():
            cluster_command(node, "SETSLOT", slot, "NODE", ids[target.port])
            node.close()
        assert client.get_node_from_key("moved:k0").name == source.name  # the map is stale
        assert cache.get_many(*keys) == [1] * len(keys)
        assert cache.set_many(dict.fromkeys(keys, 2)) == keys
        assert cache.get_dict(*keys) == dict.fromkeys(keys, 2)
        assert cache.delete_many(*keys) == keys
        assert cache.stats()["errors"] == 0
        assert client.get_node_from_key("moved:k0").name == target.name


def test_set_many_refuses_an_unencodable_value_even_born_expired(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    cache = make_cache(redis_server)
    assert cache.set("a", "kept") is True
    for timeout in (-1, None):
        with pytest.raises(SerializationError):  # as set, and SimpleCache's set_many
            cache.set_many({"a": lambda: 0}, timeout=timeout)
    assert cache.get("a") == "kept"
    cache.clear()


# -- ints beyond what a double or a counter holds ---------------------------------------------


@pytest.fixture(params=["packed", "redis-py", "cluster"])
def make(request: pytest.FixtureRequest) -> Iterator[Callable[..., RedisCache]]:
    """Builds caches on a server (each write path) or a cluster, cleared afterwards."""
    caches: list[RedisCache] = []

    def build(**kwargs: Any) -> RedisCache:
        if request.param == "cluster":
            cluster: RedisCluster = request.getfixturevalue("redis_cluster")
            prefix = f"edge{next(_prefixes)}:"
            cache = RedisCache(startup_nodes=cluster.nodes, key_prefix=prefix, **kwargs)
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            cache = make_cache(server, direct=request.param == "packed", **kwargs)
        caches.append(cache)
        return cache

    yield build
    for cache in caches:
        cache.clear()
        cache.close()


def flush_scripts(cache: RedisCache) -> None:
    """Empty the script cache of every server ``cache`` talks to."""
    nodes = cache._client.get_primaries() if cache._cluster else [None]
    for node in nodes:
        client = cache._client if node is None else cache._client.get_redis_connection(node)
        client.script_flush()


def test_inc_and_dec_answer_exact_counts_beyond_doubles(make: Callable[..., RedisCache]) -> None:
    cache = make()
    for flushed in (False, True):  # EVALSHA of a cached script, and EVAL after SCRIPT FLUSH
        if flushed:
            flush_scripts(cache)
        assert cache.inc("n", 2**53 + 1) == 2**53 + 1  # the first int a double cannot hold
        assert cache.inc("n", 2) == 2**53 + 3
        assert cache.get("n") == 2**53 + 3
        cache.set("top", 2**63 - 2)
        assert cache.inc("top") == 2**63 - 1
        assert cache.dec("low", 2**63 - 1) == -(2**63) + 1
        assert cache.dec("low") == -(2**63)
        assert cache.get_many("top", "low") == [2**63 - 1, -(2**63)]
        assert cache.delete_many("n", "top", "low") == ["n", "top", "low"]
    assert cache.stats()["errors"] == 0


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_an_int_the_serializer_cannot_encode_is_refused_by_every_write(
    make: Callable[..., RedisCache], serializer: str
) -> None:
    cache = make(serializer=serializer)
    assert cache.set("k", "kept") is True
    for value in (2**100, 2**64, -(2**63) - 1):  # as SimpleCache and the other backends
        with pytest.raises(SerializationError):
            cache.set("k", value)
        with pytest.raises(SerializationError):
            cache.add("new", value)
        for timeout in (None, -1):
            with pytest.raises(SerializationError):
                cache.set_many({"k": value}, timeout=timeout)
    assert cache.get("k") == "kept"
    assert cache.has("new") is False


@pytest.mark.parametrize("secret", [None, "s3cret"], ids=["unsigned", "signed"])
@pytest.mark.parametrize("serializer", ["pickle", "json", "msgpack"])
def test_an_int_beyond_counters_reads_back_exactly_and_inc_refuses_it(
    make: Callable[..., RedisCache], serializer: str, secret: str | None
) -> None:
    cache = make(serializer=serializer, secret=secret)
    values = {"above": 2**63, "top": 2**64 - 1}  # what json and msgpack still encode
    if serializer == "pickle":
        values |= {"big": 2**100, "below": -(2**63) - 1}
    for key, value in values.items():
        assert cache.set(key, value) is True
        assert cache.add("added-" + key, value) is True
    assert sorted(cache.set_many({"many-" + k: v for k, v in values.items()})) == sorted(
        "many-" + k for k in values
    )
    for key, value in values.items():
        names = [key, "added-" + key, "many-" + key]
        assert cache.get_many(*names) == [value] * 3
        for name in names:
            with pytest.raises(OverflowError, match="64-bit"):
                cache.inc(name)
            with pytest.raises(OverflowError, match="64-bit"):
                cache.dec(name)
            assert cache.get(name) == value
            assert type(cache.get(name)) is int
    assert cache.stats()["errors"] == 0
