"""RedisCache: the contract on a server and a cluster, plus what only Redis promises."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import pickle
import shutil
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, ClassVar

import pytest
import redis
import servers
from interpreter import run_python
from servers import RedisCluster, RedisServer, killed
from tls_files import make_certificates, tls_server_config
from waiting import paused_process, wait_until

from cacheplug import ConfigurationError, RedisCache, SerializationError, from_url
from cacheplug.testing import CacheContract

_prefixes = itertools.count()


def unique_prefix() -> str:
    return f"test{next(_prefixes)}:"


@pytest.fixture(params=["pickle", "json", "msgpack"])
def serializer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class RedisCaches:
    """A cache factory: each cache gets a prefix of its own and is cleared afterwards."""

    def __init__(self, serializer: str, **connection: Any) -> None:
        self.serializer = serializer
        self.connection = connection
        self.caches: list[RedisCache] = []

    def __call__(self, **kwargs: Any) -> RedisCache:
        kwargs.setdefault("serializer", self.serializer)
        kwargs.setdefault("key_prefix", unique_prefix())
        cache = RedisCache(**self.connection, **kwargs)
        self.caches.append(cache)
        return cache

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass for the made caches' keys by shortening their TTLs on the server."""
        for cache in self.caches:
            client = cache._client
            for name in list(client.scan_iter(match=cache.key_prefix + "*")):
                ttl = client.pttl(name)
                if ttl > 0:
                    left = ttl - int(seconds * 1000)
                    if left > 0:
                        client.pexpire(name, left)
                    else:
                        client.delete(name)

    def close(self) -> None:
        for cache in self.caches:
            cache.clear()
            cache.close()


@contextlib.contextmanager
def refusing_writes(server: RedisServer) -> Iterator[None]:
    """``server`` refusing every write (NOREPLICAS: it waits for a replica it lacks), reading on."""
    server.command("CONFIG", "SET", "min-replicas-to-write", "1")
    try:
        yield
    finally:
        server.command("CONFIG", "SET", "min-replicas-to-write", "0")


class TestRedisContract(CacheContract):
    shared_store = True

    @pytest.fixture
    def cache_factory(self, redis_server: RedisServer, serializer: str) -> Iterator[RedisCaches]:
        factory = RedisCaches(serializer, host=redis_server.host, port=redis_server.port)
        yield factory
        factory.close()

    @pytest.fixture
    def advance(self, cache_factory: RedisCaches) -> Callable[[float], None]:
        return cache_factory.advance

    @pytest.fixture
    def outage(
        self, redis_server: RedisServer, serializer: str
    ) -> Callable[[], contextlib.AbstractContextManager[object]]:
        if serializer != "pickle":
            pytest.skip("one serializer is enough: an outage never reaches the serializer")
        return partial(killed, [redis_server])

    @pytest.fixture
    def write_outage(
        self, redis_server: RedisServer, serializer: str
    ) -> Callable[[], contextlib.AbstractContextManager[object]]:
        if serializer != "pickle":
            pytest.skip("one serializer is enough: a refused write never reaches the serializer")
        return partial(refusing_writes, redis_server)


class TestRedisClusterContract(TestRedisContract):
    @pytest.fixture
    def cache_factory(self, redis_cluster: RedisCluster, serializer: str) -> Iterator[RedisCaches]:
        factory = RedisCaches(serializer, startup_nodes=redis_cluster.nodes)
        yield factory
        factory.close()

    @pytest.fixture
    def outage(self) -> Callable[[], contextlib.AbstractContextManager[object]]:
        pytest.skip("cluster outages: test_redis_faults.py kills nodes under a workload")

    @pytest.fixture
    def write_outage(self) -> Callable[[], contextlib.AbstractContextManager[object]]:
        pytest.skip("write outages on a cluster: the standalone server's run covers RedisCache")


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port)
    yield client
    client.close()


@pytest.fixture
def cache(redis_server: RedisServer) -> Iterator[RedisCache]:
    with RedisCache(redis_server.host, redis_server.port, key_prefix=unique_prefix()) as cache:
        yield cache
        cache.clear()


def command_calls(server: RedisServer, command: str) -> int:
    """How often ``command`` ran since the last CONFIG RESETSTAT."""
    info = server.command("INFO", "commandstats")
    assert isinstance(info, bytes)
    for line in info.decode().splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


# -- storage format ---------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["pickle", "json", "msgpack"])
def test_ints_are_plain_decimals_and_read_back_as_int(
    redis_server: RedisServer, raw: redis.Redis, serializer: str
) -> None:
    cache = RedisCache(port=redis_server.port, key_prefix=unique_prefix(), serializer=serializer)
    cache.set("n", -42)
    cache.set("flag", True)
    assert raw.get(cache.key_prefix + "n") == b"-42"
    assert raw.get(cache.key_prefix + "flag") != b"1"
    assert cache.get("flag") is True
    raw.incrby(cache.key_prefix + "n", 2)
    assert cache.get("n") == -40
    assert type(cache.get("n")) is int


def test_ints_beyond_64_bits_go_through_the_serializer_and_read_back_exactly(
    cache: RedisCache, raw: redis.Redis
) -> None:
    huge = {"huge": 10**5000, "negative": -(10**5000), "above": 2**63, "below": -(2**63) - 1}
    # Only ints INCRBY can count are plain decimals; the others are pickled.
    edges = {"top": 2**63 - 1, "bottom": -(2**63)}
    assert cache.set("huge", huge["huge"]) is True  # a raw argument this size crashed hiredis
    assert sorted(cache.set_many(huge | edges)) == sorted(huge | edges)
    assert cache.get("huge") == 10**5000
    assert cache.get_many(*huge, *edges) == [*huge.values(), *edges.values()]
    assert raw.get(cache.key_prefix + "top") == b"9223372036854775807"
    assert raw.get(cache.key_prefix + "bottom") == b"-9223372036854775808"
    assert raw.get(cache.key_prefix + "above") == pickle.dumps(2**63, pickle.HIGHEST_PROTOCOL)
    assert raw.get(cache.key_prefix + "below") == pickle.dumps(
        -(2**63) - 1, pickle.HIGHEST_PROTOCOL
    )


def test_url_serializer_writes_its_own_format(redis_server: RedisServer, raw: redis.Redis) -> None:
    prefix = unique_prefix()
    cache = from_url(redis_server.url + f"?serializer=msgpack&key_prefix={prefix}")
    assert isinstance(cache, RedisCache)
    cache.set("k", {"a": b"\x00"})
    assert raw.get(prefix + "k") == b"\x81\xa1a\xc4\x01\x00"
    assert cache.get("k") == {"a": b"\x00"}


# -- timeouts -------------------------------------------------------------------------------------


def test_timeouts_become_redis_expiries(cache: RedisCache, raw: redis.Redis) -> None:
    prefix = cache.key_prefix
    cache.set("default", "v")
    cache.set("ten", "v", timeout=10)
    cache.set("float", "v", timeout=1.5)
    cache.set("forever", "v", timeout=10)
    cache.set("forever", "v", timeout=0)
    cache.add("added", "v", timeout=20)
    assert 299_000 < raw.pttl(prefix + "default") <= 300_000
    assert 9_000 < raw.pttl(prefix + "ten") <= 10_000
    assert 1_000 < raw.pttl(prefix + "float") <= 1_500
    assert raw.pttl(prefix + "forever") == -1
    assert 19_000 < raw.pttl(prefix + "added") <= 20_000


def test_entry_really_expires(cache: RedisCache, raw: redis.Redis) -> None:
    cache.set("short", "v", timeout=300)
    assert cache.has("short") is True
    raw.pexpire(cache.key_prefix + "short", 5)  # as if the 300 s were nearly over
    wait_until(lambda: cache.get("short") is None, timeout=5)
    assert cache.has("short") is False


def test_negative_timeout_in_set_many_and_add(cache: RedisCache) -> None:
    cache.set_many({"a": 1, "b": 2})
    assert sorted(cache.set_many({"a": 3, "b": 4}, timeout=-1)) == ["a", "b"]
    assert cache.get_many("a", "b") == [None, None]
    assert cache.add("a", 1, timeout=-1) is True
    assert cache.has("a") is False
    cache.set("a", 1)
    assert cache.add("a", 2, timeout=-1) is False
    assert cache.get("a") == 1


# -- get and set on the wire ----------------------------------------------------------------------


class ClientLayer:
    """The commands that pass through a client's own ``execute_command`` (redis-py's layer)."""

    def __init__(self, client: redis.Redis) -> None:
        self.commands: list[str] = []
        real: Callable[..., Any] = client.execute_command

        def execute_command(*args: Any, **options: Any) -> Any:
            self.commands.append(str(args[0]))
            return real(*args, **options)

        client.execute_command = execute_command  # type: ignore[method-assign]


@pytest.mark.parametrize("prefix", ["", "pre:", "préfixe:"])
@pytest.mark.parametrize("key", ["k", "a b\r\n$3\r\n", "ключ", "🔑" * 200, "k" * 600])
def test_get_and_set_keep_their_semantics_on_every_key(
    redis_server: RedisServer, prefix: str, key: str
) -> None:
    cache = RedisCache(port=redis_server.port, db=7, key_prefix=prefix)
    layer = ClientLayer(cache._client)
    server = redis.Redis(port=redis_server.port, db=7)
    name = (prefix + key).encode()  # Redis sees the UTF-8 bytes of the name
    assert cache.set(key, {"v": [1]}) is True
    assert 299_000 < server.pttl(name) <= 300_000
    assert pickle.loads(server.get(name)) == {"v": [1]}  # type: ignore[arg-type]
    assert cache.get(key) == {"v": [1]}
    assert cache.set(key, -7, timeout=0) is True  # overwriting removes the expiry
    assert (server.get(name), server.pttl(name)) == (b"-7", -1)
    assert cache.get(key) == -7
    assert cache.set(key, "soon", timeout=2.5) is True
    assert 2_000 < server.pttl(name) <= 2_500
    assert cache.set(key, "gone", timeout=-1) is True  # already expired: deleted
    assert server.exists(name) == 0
    assert cache.get(key) is None
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["sets"], stats["errors"]) == (2, 1, 4, 0)
    assert layer.commands == []  # every name is packed by the cache itself, in UTF-8
    server.close()


@pytest.mark.parametrize("size", [0, 5950, 5990, 6001, 70_000, 1024 * 1024])
def test_set_and_get_values_of_any_size(cache: RedisCache, raw: redis.Redis, size: int) -> None:
    value = bytes(range(256)) * (size // 256) + b"\r\n" * (size % 256 // 2)
    for timeout in (None, 0):
        assert cache.set("v", value, timeout=timeout) is True
        assert cache.get("v") == value
        assert raw.strlen(cache.key_prefix + "v") == len(
            pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        )
    assert cache.set("text", "é" * size) is True
    assert cache.get("text") == "é" * size


class TextSerializer:
    """A foreign serializer that hands out ``str`` instead of bytes."""

    def dumps(self, value: Any) -> str:
        return json.dumps(value)

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


def test_a_serializer_returning_str_is_refused_and_the_value_stays(
    cache: RedisCache, raw: redis.Redis
) -> None:
    assert cache.set("k", "before") is True
    before = raw.get(cache.key_prefix + "k")
    cache.serializer = TextSerializer()  # type: ignore[assignment]
    for store in (cache.set, cache.add):
        with pytest.raises(SerializationError, match="encode text"):
            store("k", ["é"])
    with pytest.raises(SerializationError, match="encode text"):
        cache.set_many({"k": ["é"]})
    assert raw.get(cache.key_prefix + "k") == before


# -- counters -------------------------------------------------------------------------------------


def test_new_counter_gets_default_timeout_and_existing_keeps_its_own(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    cache = RedisCache(port=redis_server.port, key_prefix=unique_prefix(), default_timeout=60)
    prefix = cache.key_prefix
    assert cache.inc("new", 3) == 3
    assert 59_000 < raw.pttl(prefix + "new") <= 60_000
    cache.set("kept", 10, timeout=1000)
    assert cache.dec("kept", 4) == 6
    assert 999_000 < raw.pttl(prefix + "kept") <= 1_000_000
    cache.set("forever", 1, timeout=0)
    assert cache.inc("forever") == 2
    assert raw.pttl(prefix + "forever") == -1
    forever_cache = RedisCache(port=redis_server.port, key_prefix=prefix, default_timeout=0)
    assert forever_cache.inc("fresh") == 1
    assert raw.pttl(prefix + "fresh") == -1


def test_inc_works_after_the_script_cache_is_flushed(cache: RedisCache, raw: redis.Redis) -> None:
    assert cache.inc("n") == 1
    raw.script_flush()
    assert cache.inc("n") == 2
    assert cache.inc("n") == 3


def test_inc_past_64_bits_raises_overflow_and_keeps_the_value(
    cache: RedisCache, raw: redis.Redis
) -> None:
    cache.set("top", 2**63 - 1)
    cache.set("bottom", -(2**63))
    cache.set("big", 2**70)
    with pytest.raises(OverflowError, match="64-bit"):
        cache.inc("top")
    with pytest.raises(OverflowError, match="64-bit"):
        cache.dec("bottom")
    with pytest.raises(OverflowError, match="64-bit"):
        cache.inc("big")
    with pytest.raises(OverflowError, match="64-bit"):
        cache.inc("fresh", 2**63)
    assert cache.get_many("top", "bottom", "big") == [2**63 - 1, -(2**63), 2**70]
    assert cache.has("fresh") is False
    assert cache.stats()["errors"] == 0


def test_inc_on_a_key_of_another_redis_type_raises_type_error(
    cache: RedisCache, raw: redis.Redis
) -> None:
    name = cache.key_prefix + "list"
    raw.rpush(name, b"item")
    with pytest.raises(TypeError, match="list"):
        cache.inc("list")
    assert raw.lrange(name, 0, -1) == [b"item"]
    cache.set("text", "12a")
    with pytest.raises(TypeError, match="'text': it holds a str, not an int"):
        cache.inc("text")
    assert cache.get("text") == "12a"
    raw.set(cache.key_prefix + "junk", b"\x80junk")  # no payload of any serializer
    with pytest.raises(TypeError, match="'junk': its stored value is unreadable"):
        cache.inc("junk")
    assert raw.get(cache.key_prefix + "junk") == b"\x80junk"
    assert cache.stats()["errors"] == 0


def test_inc_on_a_cluster_keeps_ttl_and_counts_atomically(redis_cluster: RedisCluster) -> None:
    cache = RedisCache(startup_nodes=redis_cluster.nodes, key_prefix=unique_prefix())
    keys = [f"counter{i}" for i in range(20)]  # spread over every node
    for key in keys:
        cache.set(key, 5, timeout=100)
        assert cache.inc(key, 2) == 7
    client = cache._client
    assert all(90_000 < client.pttl(cache.key_prefix + key) <= 100_000 for key in keys)
    assert cache.get_many(*keys) == [7] * len(keys)
    assert cache.clear() is True


# -- many, clear ------------------------------------------------------------------------------


def test_get_many_is_one_mget(cache: RedisCache, redis_server: RedisServer) -> None:
    keys = [f"k{i}" for i in range(100)]
    cache.set_many({key: i for i, key in enumerate(keys)})
    redis_server.command("CONFIG", "RESETSTAT")
    assert cache.get_many(*keys) == list(range(100))
    assert command_calls(redis_server, "mget") == 1
    assert command_calls(redis_server, "get") == 0


def test_decimals_are_never_pickles() -> None:
    # get_many decodes a whole batch with pickle.loads and relies on counters making it raise.
    shorts = (
        "".join(chars) for n in range(1, 5) for chars in itertools.product("-0123456789", repeat=n)
    )
    edges = ["0", "-0", "-1", str(2**63 - 1), str(-(2**63)), str(10**4000), str(-(10**4000))]
    for text in itertools.chain(shorts, edges):
        with pytest.raises(Exception):  # any error sends the batch down the slow path
            pickle.loads(text.encode())


def test_get_many_mixes_misses_counters_pickles_and_unreadable_entries(
    cache: RedisCache, raw: redis.Redis
) -> None:
    # "huge" has no decimal form (over 4300 digits): it is pickled, unlike the counters.
    values = {"bytes": b"\x00" * 256, "dict": {"a": [1]}, "none": None, "huge": 10**5000}
    cache.set_many(values)
    cache.set_many({"zero": 0, "neg": -1, "big": 2**63 - 1})
    raw.set(cache.key_prefix + "bad", b"\x80\x05garbage")
    raw.set(cache.key_prefix + "dot", b"12.5")
    cases = [  # a stored None reads like a miss, and counts as one
        (list(values), list(values.values()), 1, 0),
        (["zero", *values], [0, *values.values()], 1, 0),
        ([*values, "neg"], [*values.values(), -1], 1, 0),
        (["absent", "bytes"], [None, values["bytes"]], 1, 0),
        (
            ["bytes", "big", "absent", "bad", "dict"],
            [values["bytes"], 2**63 - 1, None, None, {"a": [1]}],
            2,
            1,
        ),
        (["dot", "neg"], [None, -1], 1, 1),
        (["absent", "missing"], [None, None], 2, 0),
    ]
    for keys, expected, misses, errors in cases:
        before = cache.stats()
        assert cache.get_many(*keys) == expected, keys
        after = cache.stats()
        assert after["hits"] - before["hits"] == len(keys) - misses, keys
        assert after["misses"] - before["misses"] == misses, keys
        assert after["errors"] - before["errors"] == errors, keys


@pytest.mark.parametrize("prefix", ["", "pre:", "préfixe:"])
def test_get_many_with_odd_keys_is_one_mget(redis_server: RedisServer, prefix: str) -> None:
    cache = RedisCache(port=redis_server.port, db=6, key_prefix=prefix)
    # Non-ASCII names take redis-py's packing; names past 511 characters other headers.
    keys = ["", "a b\r\n$3\r\n", "ключ", "🔑" * 200, "k" * 511, "k" * 512, "k" * 5000, "k"]
    assert sorted(cache.set_many({key: [i] for i, key in enumerate(keys)})) == sorted(keys)
    for batch in (keys, [key for key in keys if key.isascii()], keys[4:7]):
        redis_server.command("CONFIG", "RESETSTAT")
        assert cache.get_many(*batch, "absent") == [[keys.index(key)] for key in batch] + [None]
        assert command_calls(redis_server, "mget") == 1
    cache.clear()


def test_get_many_from_threads_gets_its_own_replies(cache: RedisCache) -> None:
    batches = [[f"t{thread}:{i}" for i in range(50)] for thread in range(6)]
    for batch in batches:
        cache.set_many({key: key for key in batch})
    right: list[int] = []

    def read(batch: list[str]) -> None:
        right.append(sum(cache.get_many(*batch) == batch for _ in range(100)))

    threads = [threading.Thread(target=read, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert right == [100] * len(batches)


def test_set_many_and_delete_many_send_plain_commands_without_transaction(
    cache: RedisCache, redis_server: RedisServer
) -> None:
    redis_server.command("CONFIG", "RESETSTAT")
    assert cache.set_many({f"k{i}": i for i in range(10)}) == [f"k{i}" for i in range(10)]
    assert sorted(cache.delete_many("k1", "k2", "nope")) == ["k1", "k2"]
    assert command_calls(redis_server, "set") == 10
    assert command_calls(redis_server, "del") == 3
    assert command_calls(redis_server, "multi") == 0


def test_clear_with_prefix_deletes_only_its_keys_in_batches(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    prefix = unique_prefix() + "*[?]\\"  # glob characters must match only themselves
    cache = RedisCache(port=redis_server.port, key_prefix=prefix)
    cache.set_many({f"k{i}": i for i in range(2500)})
    neighbours = [prefix[:-5] + "other", prefix[:-5] + "x[?]\\k1", "unrelated"]
    for name in neighbours:
        raw.set(name, b"stays")
    redis_server.command("CONFIG", "RESETSTAT")
    assert cache.clear() is True
    assert command_calls(redis_server, "flushdb") == 0
    assert raw.keys(prefix.replace("[", "\\[").replace("*", "\\*") + "*") == []
    assert cache.get("k0") is None
    assert [raw.get(name) for name in neighbours] == [b"stays"] * 3
    raw.delete(*neighbours)


def test_clear_without_prefix_flushes_only_the_selected_db(redis_server: RedisServer) -> None:
    other = redis.Redis(port=redis_server.port, db=4)
    other.set("keep", b"1")
    cache = RedisCache(port=redis_server.port, db=5)
    cache.set("gone", 1)
    assert cache.clear() is True
    assert cache.get("gone") is None
    assert other.get("keep") == b"1"
    other.delete("keep")
    other.close()


def test_cluster_clear_scans_every_primary(redis_cluster: RedisCluster) -> None:
    prefix = unique_prefix()
    cache = RedisCache(startup_nodes=redis_cluster.nodes, key_prefix=prefix)
    cache.set_many({f"k{i}": i for i in range(60)})
    nodes = [redis.Redis(host=host, port=port) for host, port in redis_cluster.nodes]
    assert all(node.keys(prefix + "*") for node in nodes)
    assert cache.clear() is True
    assert [node.keys(prefix + "*") for node in nodes] == [[], [], []]
    for node in nodes:
        node.close()


# -- URLs ------------------------------------------------------------------------------------------


def test_redis_url_path_selects_db(redis_server: RedisServer) -> None:
    cache = from_url(f"redis://{redis_server.host}:{redis_server.port}/3?key_prefix=dbtest:")
    cache.set("k", "v")
    db3 = redis.Redis(port=redis_server.port, db=3)
    assert db3.exists("dbtest:k") == 1
    db3.delete("dbtest:k")
    db3.close()


@pytest.mark.parametrize("scheme", ["redis+unix", "unix"])
def test_unix_socket_urls(redis_server: RedisServer, scheme: str) -> None:
    cache = from_url(f"{scheme}://{redis_server.unix_socket}?db=2&key_prefix=sock:")
    assert isinstance(cache, RedisCache)
    assert cache.set("k", [1, 2]) is True
    over_tcp = RedisCache(port=redis_server.port, db=2, key_prefix="sock:")
    assert over_tcp.get("k") == [1, 2]
    assert cache.get("k") == [1, 2]
    assert cache.get_many("k", "absent") == [[1, 2], None]
    assert cache.delete("k") is True
    assert "sock" in repr(cache)


def test_cluster_url(redis_cluster: RedisCluster) -> None:
    prefix = unique_prefix()
    cache = from_url(redis_cluster.url + f"?key_prefix={prefix}&socket_timeout=2.5")
    assert isinstance(cache, RedisCache)
    data = {f"k{i}": {"i": i} for i in range(30)}
    assert sorted(cache.set_many(data)) == sorted(data)
    assert cache.get_dict(*data) == data
    assert sorted(cache.delete_many(*data, "missing")) == sorted(data)
    assert cache._client.get_connection_kwargs()["socket_timeout"] == 2.5


def test_url_options_reach_redis_py(redis_server: RedisServer) -> None:
    cache = from_url(
        f"redis://127.0.0.1:{redis_server.port}/1?socket_timeout=0.5&socket_connect_timeout=2"
        "&max_connections=7&health_check_interval=30&client_name=cp&retries=3&dead_timeout=2.5"
    )
    assert isinstance(cache, RedisCache)
    pool = cache._client.connection_pool
    kwargs = pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.5, 2)
    assert (kwargs["health_check_interval"], kwargs["db"], kwargs["client_name"]) == (30, 1, "cp")
    assert pool.max_connections == 7
    assert kwargs["retry"].get_retries() == 3
    assert cache.dead_timeout == 2.5
    assert RedisCache().dead_timeout == 1.0
    assert cache.set("k", 1) is True
    names = [c["name"] for c in redis.Redis(port=redis_server.port).client_list()]
    assert "cp" in names


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://a:1,b:2/0", "takes one host"),
        ("redis://localhost/zero", "database number"),
        ("redis://localhost/1?db=2", "two databases"),
        ("redis+unix://host/x.sock", "socket path and no host"),
        ("unix://", "socket path"),
        ("redis+cluster://", "startup nodes"),
        ("redis+cluster://a:1/2", "only db 0"),
        ("redis://localhost?ssl_cert_reqs=maybe", "none, optional, required"),
        ("redis://localhost?socket_timeout=soon", "socket_timeout"),
        ("redis://localhost?pool=3", "max_connections"),
        ("redis://localhost?dead_timeout=-1", "dead_timeout must be a number of seconds >= 0"),
        ("redis://localhost?retries=-1", "retries must be an int >= 0"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        from_url(url)


def test_password_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    password = "pw-Sup3r-s3cret"
    with RedisServer(password=password) as server:
        cache = from_url(server.url + "?key_prefix=auth:")
        assert cache.set("k", "v") is True
        assert cache.get("k") == "v"
        acl = from_url(f"redis://default:{password}@127.0.0.1:{server.port}/0")
        assert acl.get("nothing") is None
        wrong = from_url(f"redis://:wrong-{password}@127.0.0.1:{server.port}/0")
        missing = RedisCache(port=server.port)
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            assert wrong.get("k") is None
            assert missing.set("k", "v") is False
        assert len(caplog.records) == 2
        with pytest.raises(ConfigurationError) as bad:
            from_url(server.url + "?socket_timeout=x")
        shown = [repr(cache), str(cache), repr(wrong), caplog.text, str(bad.value)]
        assert all(password not in text for text in shown)
        assert "127.0.0.1" in repr(cache)


# -- TLS ------------------------------------------------------------------------------------------


def test_rediss_url_talks_tls(tmp_path: Any) -> None:
    certs = make_certificates(tmp_path)
    port = servers._free_port()  # the plain port stays open: the fixture probes through it
    config = tls_server_config(certs, port)
    with RedisServer(config=config) as server:
        cache = from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs['ca']}&key_prefix=t:")
        assert isinstance(cache, RedisCache)
        assert cache.set("k", {"tls": True}) is True
        assert cache.get("k") == {"tls": True}
        assert cache.get_many("absent", "k") == [None, {"tls": True}]
        plain = redis.Redis(port=server.port)
        assert plain.exists("t:k") == 1  # the same server, reached in clear on its plain port
        untrusted = from_url(f"rediss://127.0.0.1:{port}/0")  # system CAs do not know ours
        assert untrusted.get("k") is None
        # a directory of CA certificates named by their hashes, as `openssl rehash` makes it
        cas = tmp_path / "cas"
        cas.mkdir()
        shutil.copy(certs["ca"], cas / "test-ca.pem")
        subprocess.run(["openssl", "rehash", str(cas)], check=True, capture_output=True)
        by_directory = from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_path={cas}&key_prefix=t:")
        assert by_directory.get("k") == {"tls": True}
        plain.close()


# -- outages and bad input ------------------------------------------------------------------------


def outage_answers(cache: RedisCache) -> dict[str, Any]:
    """Every operation once, with what it answered."""
    return {
        "get": cache.get("k"),
        "set": cache.set("k", "v"),
        "add": cache.add("new", "v"),
        "delete": cache.delete("k"),
        "has": cache.has("k"),
        "clear": cache.clear(),
        "inc": cache.inc("n"),
        "dec": cache.dec("n"),
        "get_many": cache.get_many("a", "b"),
        "get_dict": cache.get_dict("a", "b"),
        "set_many": cache.set_many({"a": 1, "b": 2}),
        "delete_many": cache.delete_many("a", "b"),
    }


OUTAGE = {
    "get": None,
    "set": False,
    "add": False,
    "delete": False,
    "has": False,
    "clear": False,
    "inc": None,
    "dec": None,
    "get_many": [None, None],
    "get_dict": {"a": None, "b": None},
    "set_many": [],
    "delete_many": [],
}


def logged_operations(caplog: pytest.LogCaptureFixture) -> list[str]:
    return sorted(r.getMessage().split(" failed")[0].split(".")[1] for r in caplog.records)


def assert_outage(cache: RedisCache, caplog: pytest.LogCaptureFixture) -> None:
    """Outage values twice over, fast, with exactly one log line for the whole outage."""
    caplog.clear()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert outage_answers(cache) == OUTAGE
        assert outage_answers(cache) == OUTAGE
    # Loose for busy machines; redis-py's default retries would take ~4 s per call, 100 s here.
    assert time.monotonic() - started < 8.0
    assert logged_operations(caplog) == ["get"]  # the first failure; the rest are held back


def assert_working(cache: RedisCache) -> None:
    assert cache.set("k", "after") is True
    assert cache.get("k") == "after"
    assert cache.add("new", 1) is True
    assert cache.inc("new") == 2
    assert cache.get_many("k", "new") == ["after", 2]
    assert cache.delete_many("k", "new") == ["k", "new"]
    assert cache.clear() is True


def shut_down(server: RedisServer) -> None:
    """Stop the server gracefully, keeping its port and directory for ``restart()``."""
    with contextlib.suppress(OSError):  # the server closes the connection as it goes
        server.command("SHUTDOWN", "NOSAVE")
    assert server._proc is not None
    server._proc.wait(10)


@pytest.mark.parametrize("stop", [shut_down, RedisServer.kill], ids=["shutdown", "kill"])
def test_outage_follows_the_contract_and_recovers(
    fresh_redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    stop: Callable[[RedisServer], None],
) -> None:
    cache = RedisCache(port=fresh_redis_server.port, key_prefix="outage:", dead_timeout=0.2)
    cache.set("k", "before")
    stop(fresh_redis_server)
    assert not fresh_redis_server.running
    errors_before = cache.stats()["errors"]
    assert_outage(cache, caplog)
    assert cache.stats()["errors"] - errors_before == 2 * len(OUTAGE)
    fresh_redis_server.restart()
    assert wait_until(lambda: cache.set("k", "back")) < cache.dead_timeout + 2
    assert_working(cache)


def test_without_dead_timeout_every_call_asks_the_server(
    fresh_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RedisCache(port=fresh_redis_server.port, key_prefix="outage:", dead_timeout=0)
    fresh_redis_server.kill()
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert cache.get("k") is None
    fresh_redis_server.restart()
    assert cache.set("k", "at once") is True
    assert "failed less than" not in caplog.text


def test_wrong_port_builds_and_answers_outage_values(caplog: pytest.LogCaptureFixture) -> None:
    cache = from_url(f"redis://127.0.0.1:{servers._free_port()}/0")
    assert isinstance(cache, RedisCache)
    assert_outage(cache, caplog)


def test_cluster_outage_follows_the_contract_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with RedisCluster() as cluster:
        cache = RedisCache(startup_nodes=cluster.nodes, key_prefix="outage:")
        assert cache.set("k", "before") is True
        cluster.kill()
        assert_outage(cache, caplog)
        cluster.start()
        assert_working(cache)


def test_cluster_with_a_dead_node_keeps_serving_keys_on_live_nodes() -> None:
    with RedisCluster() as cluster:
        for server in cluster.servers:  # live nodes keep their slots while one is down
            server.command("CONFIG", "SET", "cluster-require-full-coverage", "no")
        cache = RedisCache(startup_nodes=cluster.nodes, key_prefix="part:")
        keys = [f"k{i}" for i in range(30)]
        assert sorted(cache.set_many(dict.fromkeys(keys, 1))) == sorted(keys)
        dying = cluster.servers[1]
        dying_client = redis.Redis(port=dying.port, decode_responses=True)
        on_dying = set(dying_client.keys("part:*"))
        dying_client.close()
        alive = [key for key in keys if "part:" + key not in on_dying]
        assert 0 < len(alive) < len(keys)
        dying.kill()
        assert cache.get_many(*keys) == [1 if key in alive else None for key in keys]
        assert cache.set_many(dict.fromkeys(keys, 2)) == alive
        assert cache.get_dict(*keys) == {key: 2 if key in alive else None for key in keys}
        assert cache.set_many(dict.fromkeys(keys, 3), timeout=-1) == alive
        cache.set_many(dict.fromkeys(keys, 4))
        assert cache.delete_many(*keys) == alive


def test_unreachable_cluster_builds_and_answers_outage_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = from_url(f"redis+cluster://127.0.0.1:{servers._free_port()}")
    assert isinstance(cache, RedisCache)
    assert_outage(cache, caplog)
    assert "cluster" in repr(cache)


def test_missing_redis_py_names_the_extra() -> None:
    code = (
        "import sys\n"
        "from cacheplug.core.plugins import get_backend_class\n"
        "get_backend_class('redis')\n"
        "assert 'redis' not in sys.modules, 'the plugin imported redis-py eagerly'\n"
        "sys.modules['redis'] = None\n"
        "from cacheplug import ConfigurationError, from_url\n"
        "try:\n"
        "    from_url('redis://localhost:6379/0')\n"
        "except ConfigurationError as err:\n"
        "    print(err)\n"
    )
    assert "pip install 'cacheplug[redis]'" in run_python(code)


def test_decode_responses_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisCache(decode_responses=True)


def test_a_keyword_no_client_takes_says_what_is_accepted() -> None:
    # redis.Redis raised a bare TypeError; RedisCluster dropped it without a word
    builds = {
        "server": lambda: RedisCache(bogus=1),
        "url override": lambda: from_url("redis://localhost/0", bogus=1, sockt_timeout=2),
        "cluster": lambda: RedisCache(startup_nodes=[("localhost", 7000)], bogus=1),
        "cluster url override": lambda: from_url("redis+cluster://h1:7000", bogus=1),
    }
    for where, build in builds.items():
        with pytest.raises(ConfigurationError) as raised:
            build()
        message = str(raised.value)
        assert isinstance(raised.value, TypeError), where  # as for any unexpected keyword
        assert message.startswith("unknown keyword '"), where
        assert "its own (check_connection, db, dead_timeout," in message, where
        assert "socket_timeout" in message, where
    with pytest.raises(TypeError, match="unknown keyword 'bogus', 'sockt_timeout' for RedisCache"):
        builds["url override"]()
    # the closest accepted name, for each misspelt one when there are several
    with pytest.raises(TypeError) as raised:
        RedisCache(sockt_timeout=1)
    assert str(raised.value).endswith("); did you mean 'socket_timeout'?")
    with pytest.raises(TypeError) as raised:
        RedisCache(sockt_timeout=1, bogus=2, db_=3)
    assert str(raised.value).endswith(
        "); for 'db_' did you mean 'db'?; for 'sockt_timeout' did you mean 'socket_timeout'?"
    )
    with pytest.raises(ConfigurationError, match="startup_nodes takes no connection_pool"):
        RedisCache(startup_nodes=[("localhost", 7000)], connection_pool=redis.ConnectionPool())
    # what redis-py takes still passes, on a server and on a cluster
    RedisCache(socket_keepalive_options={}, ssl=True, ssl_password="x", client_name="c").close()
    RedisCache(startup_nodes=[("localhost", 7000)], read_from_replicas=True).close()


def test_a_url_option_a_cluster_has_not_is_named_as_a_url_option() -> None:
    # the user wrote a URL: "unknown keyword" and 60 redis-py names would not say what to fix
    with pytest.raises(ConfigurationError) as raised:
        from_url("redis+cluster://h1:7000?health_check_interval=5&socket_timeout=2")
    message = str(raised.value)
    assert message.startswith("URL option 'health_check_interval' does not apply to redis+cluster")
    assert "socket_timeout" in message and "dead_timeout" in message
    assert "address_remap" not in message  # only the URL options that fit
    built = from_url("redis+cluster://h1:7000?socket_timeout=2&dead_timeout=1&retries=0&ssl=true")
    built.close()


def test_startup_nodes_may_be_redis_py_cluster_nodes(redis_cluster: RedisCluster) -> None:
    from redis.cluster import ClusterNode

    (host, port), *others = redis_cluster.nodes
    with RedisCache(startup_nodes=[ClusterNode(host, port), *others], key_prefix="cn:") as cache:
        assert cache.set("k", 1) is True and cache.get("k") == 1
    for bad in ["h1", "h1:7000", ("h1",), ("h1", "port"), None]:
        with pytest.raises(ConfigurationError, match=r"startup_nodes takes .* got"):
            RedisCache(startup_nodes=[bad])  # type: ignore[list-item]


def test_check_connection_raises_when_unreachable() -> None:
    with pytest.raises(RuntimeError, match="could not connect"):
        RedisCache(port=servers._free_port(), check_connection=True)


# -- cachelib drop-in ----------------------------------------------------------------------------


def test_cachelib_positional_signature_and_client_object(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    cache = RedisCache("127.0.0.1", redis_server.port, None, 0, 60, prefix)
    assert (cache.default_timeout, cache.key_prefix) == (60, prefix)
    cache.set("k", {"v": 1})
    client = redis.Redis(port=redis_server.port)
    shared = RedisCache(host=client, key_prefix=prefix)
    assert shared.get("k") == {"v": 1}
    shared.close()
    assert client.ping() is True  # a given client stays open
    cache.clear()


class CountingRedis(redis.Redis):
    """A user's client subclass that sees every command (as instrumentation would)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]))
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


class CountingConnection(redis.Connection):
    """A user's connection class that sees every command redis-py sends on it."""

    commands: ClassVar[list[str]] = []

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self.commands.append(str(args[0]))
        super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]


def _counting_connections(port: int) -> redis.Redis:
    CountingConnection.commands = []
    pool = redis.ConnectionPool(port=port, connection_class=CountingConnection)
    return redis.Redis(connection_pool=pool)


@pytest.mark.parametrize(
    "make_client",
    [
        lambda port: redis.Redis(port=port),
        lambda port: redis.Redis(port=port, protocol=3),
        lambda port: redis.Redis(port=port, single_connection_client=True),
        lambda port: redis.Redis(
            connection_pool=redis.BlockingConnectionPool(port=port, max_connections=1)  # type: ignore[no-untyped-call]
        ),
        lambda port: CountingRedis(port=port),
        _counting_connections,
    ],
    ids=["plain", "resp3", "single-connection", "blocking-pool", "subclass", "connection-class"],
)
def test_get_set_and_get_many_through_a_ready_client(
    redis_server: RedisServer, raw: redis.Redis, make_client: Callable[[int], redis.Redis]
) -> None:
    client = make_client(redis_server.port)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation warning from any redis-py call
        cache = RedisCache(host=client, key_prefix=unique_prefix())
        cache.set_many({"a": b"x", "n": 3, "d": {"k": None}})
        assert cache.get_many("a", "n", "absent", "d") == [b"x", 3, None, {"k": None}]
        assert cache.get_many("a", "d") == [b"x", {"k": None}]
        big = b"\r\n" * 50_000
        assert (cache.set("s", "v", timeout=60), cache.set("big", big, timeout=0)) == (True, True)
        assert (cache.get("s"), cache.get("big"), cache.get("absent")) == ("v", big, None)
        assert cache.set("s", "v", timeout=-1) is True
        assert cache.get("s") is None
    assert (raw.exists(cache.key_prefix + "s"), raw.pttl(cache.key_prefix + "big")) == (0, -1)
    seen = getattr(
        client, "commands", getattr(client.connection_pool.connection_class, "commands", None)
    )
    if seen is not None:  # a user's own class sees every command
        assert seen.count("MGET") == 2
        assert [c for c in seen if c in {"GET", "SET", "DEL"}] == [
            *("SET", "SET", "GET", "GET", "GET", "DEL", "GET")
        ]
    assert cache.clear() is True
    client.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_get_set_and_get_many_over_each_protocol(redis_server: RedisServer, protocol: int) -> None:
    cache = from_url(redis_server.url, protocol=protocol, key_prefix=unique_prefix())
    cache.set_many({"a": [1.5], "n": -7, "bytes": b"\x00\r\n"})
    assert cache.get_many("a", "n", "absent", "bytes") == [[1.5], -7, None, b"\x00\r\n"]
    assert cache.get_many("bytes", "a") == [b"\x00\r\n", [1.5]]
    assert cache.get("bytes") == b"\x00\r\n"
    assert cache.get("absent") is None
    big = b"\x00" * 100_000
    for timeout in (None, 0, 9.5):
        assert cache.set("big", big, timeout=timeout) is True
        assert cache.set("ключ", timeout, timeout=timeout) is True
        assert (cache.get("big"), cache.get("ключ")) == (big, timeout)
    assert cache.set("big", 1, timeout=-1) is True
    assert (cache.get("big"), cache.stats()["errors"]) == (None, 0)
    assert cache.clear() is True


def test_cachelib_positional_flags_after_key_prefix(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    cache = RedisCache("127.0.0.1", redis_server.port, None, 0, 60, prefix, False, True)
    assert cache.ignore_delete_many_errors is False
    assert cache.set("k", 1) is True
    with pytest.raises(RuntimeError, match="could not connect"):
        RedisCache("127.0.0.1", servers._free_port(), None, 0, 60, prefix, True, True)
    cache.clear()


def test_callable_key_prefix_is_asked_on_every_operation(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    tenant = ["a"]
    base = unique_prefix()
    cache = RedisCache(port=redis_server.port, key_prefix=lambda: f"{base}{tenant[0]}:")
    cache.set("k", "for a")
    cache.set_many({"m": 1})
    tenant[0] = "b"
    assert cache.get("k") is None
    assert cache.inc("m") == 1
    cache.set("k", "for b")
    assert sorted(raw.keys(base + "*")) == [f"{base}{t}:{k}".encode() for t in "ab" for k in "km"]
    assert cache.clear() is True
    assert sorted(raw.keys(base + "*")) == [f"{base}a:k".encode(), f"{base}a:m".encode()]
    tenant[0] = "a"
    assert cache.get_many("k", "m") == ["for a", 1]
    assert cache.key_prefix == f"{base}a:"
    assert cache.clear() is True
    with pytest.raises(TypeError, match="key_prefix"):
        RedisCache(port=redis_server.port, key_prefix=3)  # type: ignore[arg-type]


def test_cachelib_serializer_can_be_assigned(cache: RedisCache) -> None:
    from cachelib.serializers import RedisSerializer

    cache.serializer = RedisSerializer()
    cache.set("obj", {"a": (1, 2)})
    assert cache.get("obj") == {"a": (1, 2)}
    assert cache.inc("n", 5) == 5
    assert cache.get("n") == 5


def test_numbers_and_odd_payloads_read_back_exactly(cache: RedisCache, raw: redis.Redis) -> None:
    cache.serializer = from_url("simple://?serializer=json").serializer
    values = {"f": 1.5, "neg": -2.5, "i": 7, "big": 2**64 - 1, "s": "12", "list": [3]}
    cache.set_many(values)
    assert cache.get_many(*values) == list(values.values())
    assert [type(cache.get(key)) for key in values] == [type(v) for v in values.values()]
    raw.set(cache.key_prefix + "empty", b"")
    raw.set(cache.key_prefix + "dash", b"-")
    before = cache.stats()
    assert cache.get_many("empty", "f", "dash", "absent") == [None, 1.5, None, None]
    assert cache.get("empty") is None
    after = cache.stats()
    assert after["errors"] == before["errors"] + 3
    assert (after["hits"], after["misses"]) == (before["hits"] + 1, before["misses"] + 4)


def test_get_many_rejects_non_str_keys(cache: RedisCache) -> None:
    with pytest.raises(TypeError, match="key must be str"):
        cache.get_many("a", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be str"):
        cache.delete_many(b"a")  # type: ignore[arg-type]


def test_restart_between_calls_is_invisible(fresh_redis_server: RedisServer) -> None:
    cache = RedisCache(port=fresh_redis_server.port, key_prefix="restart:")
    assert cache.set("k", "before") is True  # leaves a pooled connection to the old process
    fresh_redis_server.kill()
    fresh_redis_server.restart()
    assert cache.set("k", "after") is True  # the stale pooled connection is replaced
    assert cache.get("k") == "after"
    assert cache.stats()["errors"] == 0


def test_get_many_after_a_restart_replaces_the_stale_connection(
    fresh_redis_server: RedisServer,
) -> None:
    cache = RedisCache(port=fresh_redis_server.port, key_prefix="restart:")
    assert cache.get_many("k") == [None]  # leaves a pooled connection to the old process
    fresh_redis_server.kill()
    fresh_redis_server.restart()
    fresh_redis_server.command("SET", "restart:k", "7")
    assert cache.get_many("k", "absent") == [7, None]
    assert cache.stats()["errors"] == 0


def test_get_many_in_an_outage_answers_nones_then_recovers(
    fresh_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RedisCache(port=fresh_redis_server.port, key_prefix="outage:", dead_timeout=0.2)
    assert cache.set_many({"a": 1, "b": "x"}) == ["a", "b"]
    fresh_redis_server.kill()
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert cache.get_many("a", "b") == [None, None]
        assert cache.get_many("a", "b", "c") == [None, None, None]  # inside the dead time
    assert logged_operations(caplog) == ["get_many"]
    assert "ConnectionError" in caplog.text
    assert cache.stats()["errors"] == 2
    assert cache.stats()["misses"] == 0  # an outage is not a miss
    fresh_redis_server.restart()
    fresh_redis_server.command("SET", "outage:a", "2")
    assert wait_until(lambda: cache.get_many("a", "b") == [2, None]) < cache.dead_timeout + 2


class CuttingProxy:
    """A TCP relay to a server that drops a connection instead of relaying ``marker`` to it,
    ``cuts`` times: a connection that dies with a command sent and no reply."""

    def __init__(self, port: int, marker: bytes, cuts: int) -> None:
        self.target = port
        self.marker = marker
        self.cuts = cuts
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._relay, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(server, client, False), daemon=True).start()

    def _relay(self, source: socket.socket, target: socket.socket, to_server: bool) -> None:
        try:
            while data := source.recv(65536):
                if to_server and self.marker in data and self.cuts > 0:
                    self.cuts -= 1
                    break
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(): close alone does not
        self.listener.close()


@pytest.mark.parametrize("retries", [0, 1])
def test_get_many_retries_a_dropped_connection_as_configured(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, retries: int
) -> None:
    proxy = CuttingProxy(redis_server.port, b"MGET", cuts=1)
    prefix = unique_prefix()
    cache = RedisCache(port=proxy.port, key_prefix=prefix, retries=retries, dead_timeout=0)
    assert cache.set("k", "v") is True
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        answer = cache.get_many("k", "absent")
    assert proxy.cuts == 0
    if retries:  # one retry on a new connection, unseen by the caller
        assert (answer, cache.stats()["errors"], proxy.connections) == (["v", None], 0, 2)
        assert caplog.records == []
    else:
        assert (answer, cache.stats()["errors"]) == ([None, None], 1)
        assert logged_operations(caplog) == ["get_many"]
    assert cache.get_many("k") == ["v"]
    cache.close()
    proxy.close()


# (operation, marker of its command on the wire, call, answer when done, outage answer)
WireCase = tuple[str, bytes, Callable[[RedisCache], Any], object, object]
RETRIED: list[WireCase] = [
    ("get", b"$3\r\nGET\r\n", lambda cache: cache.get("k"), "v", None),
    ("get-unicode", b"$3\r\nGET\r\n", lambda cache: cache.get("ключ"), "v", None),
    ("set", b"$3\r\nSET\r\n", lambda cache: cache.set("k", "v"), True, False),
    ("set-forever", b"$3\r\nSET\r\n", lambda cache: cache.set("k", "v", 0), True, False),
    ("set-large", b"$3\r\nSET\r\n", lambda cache: cache.set("k", b"v" * 99_999), True, False),
    ("set-expired", b"$3\r\nDEL\r\n", lambda cache: cache.set("k", "v", -1), True, False),
    ("has", b"EXISTS", lambda cache: cache.has("k"), True, False),
]
NOT_RETRIED: list[WireCase] = [
    ("inc", b"EVAL", lambda cache: cache.inc("n"), 2, None),
    ("add", b"NX", lambda cache: cache.add("new", 1), True, False),
    ("delete", b"DEL", lambda cache: cache.delete("k"), True, False),
]


@pytest.mark.parametrize(
    ("operation", "marker", "call", "done", "outage"),
    RETRIED + NOT_RETRIED,
    ids=[operation for operation, *_ in RETRIED + NOT_RETRIED],
)
def test_a_dropped_connection_is_retried_only_for_commands_safe_to_repeat(
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    operation: str,
    marker: bytes,
    call: Callable[[RedisCache], Any],
    done: Any,
    outage: Any,
) -> None:
    prefix = unique_prefix()
    with RedisCache(port=redis_server.port, key_prefix=prefix) as seeder:
        seeder.set_many({"k": "v", "ключ": "v"})
        seeder.inc("n")
    proxy = CuttingProxy(redis_server.port, marker, cuts=1)
    cache = RedisCache(port=proxy.port, key_prefix=prefix, retries=1, dead_timeout=0)
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        answer = call(cache)
    assert proxy.cuts == 0, "the command was cut once"
    if operation in {op for op, *_ in RETRIED}:  # one retry on a new connection, unseen
        assert (answer, cache.stats()["errors"]) == (done, 0)
        assert caplog.records == []
    else:  # sent once: its outcome is unknown to the client, so it is never repeated
        assert (answer, cache.stats()["errors"]) == (outage, 1)
        assert logged_operations(caplog) == [operation]
        assert call(cache) == done  # the cut command never reached the server
    cache.close()
    proxy.close()


def test_get_many_on_a_hung_server_waits_once_per_dead_timeout(
    fresh_redis_server: RedisServer,
) -> None:
    assert fresh_redis_server.pid is not None
    cache = RedisCache(port=fresh_redis_server.port, socket_timeout=0.3, dead_timeout=1.0)
    assert cache.set_many({"k": "v"}) == ["k"]
    answers, seconds = [], []
    with paused_process(fresh_redis_server.pid):
        for _ in range(21):
            started = time.monotonic()
            answers.append(cache.get_many("k", "j"))
            seconds.append(time.monotonic() - started)
    assert answers == [[None, None]] * 21
    assert 0.25 < seconds[0] < 2.0  # one socket timeout, not retried
    assert sum(seconds[1:]) < 0.5  # inside the dead time no call waited for the server
    assert wait_until(lambda: cache.get_many("k") == ["v"]) < cache.dead_timeout + 2
