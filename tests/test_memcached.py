"""MemcachedCache: the contract on one and on two servers, plus what only memcached raises."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import partial
from typing import Any

import memcache  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from interpreter import run_python
from pymemcache.client.base import Client
from servers import MemcachedServer, killed
from waiting import paused_process, wait_until

from cacheplug import ConfigurationError, MemcachedCache, SerializationError, from_url
from cacheplug.backends._memcached_counters import FLAG_COUNTER, FLAG_GUARDED, FLAG_SERIALIZED
from cacheplug.backends._memcached_keys import MAX_RELATIVE_EXPIRY, memcached_key
from cacheplug.testing import CacheContract, CacheFactory

DAY = 24 * 3600


@pytest.fixture(scope="module")
def second_memcached_server() -> Iterator[MemcachedServer]:
    server = MemcachedServer().start()
    yield server
    server.kill()
    server.stop()


@pytest.fixture(params=["pickle", "json", "msgpack"])
def serializer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def address(server: MemcachedServer) -> str:
    return f"{server.host}:{server.port}"


class RawClient(Client):
    """pymemcache's client, its socket closed when the client is dropped (the tests chain
    one call on a new client), not left to the socket's finalizer."""

    def __del__(self) -> None:
        self.close()


def raw_client(server: MemcachedServer) -> Client:
    return RawClient(server.address, default_noreply=False)


def server_ttl(server: MemcachedServer, key: str) -> int:
    """Seconds the server will keep ``key`` (-1: never expires), read with a meta get."""
    reply = raw_client(server).raw_command(f"mg {key} t")
    assert reply.startswith(b"HD t"), reply
    return int(reply.split(b" t")[1])


def caches_on(servers: list[MemcachedServer], serializer: str) -> Iterator[CacheFactory]:
    for server in servers:
        server.flush()
    made: list[MemcachedCache] = []

    def make(**kwargs: Any) -> MemcachedCache:
        kwargs.setdefault("serializer", serializer)
        cache = MemcachedCache([address(s) for s in servers], **kwargs)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


class MemcachedContract(CacheContract):
    """The contract on the servers a subclass names.

    memcached's clock ticks once a second and cannot be moved, so the contract's fake-clock
    expiry tests skip here; ``test_entry_expires_on_the_server`` covers real expiry.
    """

    shared_store = True

    @pytest.fixture
    def servers(self) -> list[MemcachedServer]:
        raise NotImplementedError

    @pytest.fixture
    def cache_factory(
        self, servers: list[MemcachedServer], serializer: str
    ) -> Iterator[CacheFactory]:
        yield from caches_on(servers, serializer)

    @pytest.fixture
    def outage(
        self, servers: list[MemcachedServer], serializer: str
    ) -> Callable[[], contextlib.AbstractContextManager[object]]:
        if serializer != "pickle":
            pytest.skip("one serializer is enough: an outage never reaches the serializer")
        return partial(killed, servers)


class TestMemcachedOneServer(MemcachedContract):
    @pytest.fixture
    def servers(self, memcached_server: MemcachedServer) -> list[MemcachedServer]:
        return [memcached_server]


class TestMemcachedTwoServers(MemcachedContract):
    @pytest.fixture
    def servers(
        self, memcached_server: MemcachedServer, second_memcached_server: MemcachedServer
    ) -> list[MemcachedServer]:
        return [memcached_server, second_memcached_server]


@pytest.fixture
def cache(memcached_server: MemcachedServer) -> Iterator[MemcachedCache]:
    memcached_server.flush()
    with MemcachedCache([address(memcached_server)]) as made:
        yield made


# -- keys --------------------------------------------------------------------------------------

HOSTILE_KEYS = [
    "x" * 251,
    "x" * 250 + "y",
    "with space",
    "with\ttab",
    "line\nbreak",
    "nul\x00byte",
    "del\x7fchar",
    "ünïcødé ✓",
    "日本語",
    "",
    "lone \ud800 surrogate",
]


def test_hostile_keys_work_and_do_not_collide(cache: MemcachedCache) -> None:
    for index, key in enumerate(HOSTILE_KEYS):
        assert cache.set(key, index) is True
    assert cache.get_many(*HOSTILE_KEYS) == list(range(len(HOSTILE_KEYS)))
    assert [cache.has(key) for key in HOSTILE_KEYS] == [True] * len(HOSTILE_KEYS)
    assert sorted(cache.delete_many(*HOSTILE_KEYS)) == sorted(HOSTILE_KEYS)


def test_long_keys_differing_only_at_the_end_stay_apart(cache: MemcachedCache) -> None:
    base = "k" * 400
    cache.set(base + "a", "A")
    cache.set(base + "b", "B")
    assert cache.get_many(base + "a", base + "b") == ["A", "B"]


def test_key_that_looks_mapped_does_not_collide_with_the_mapped_key(
    cache: MemcachedCache,
) -> None:
    hostile = "with space"
    lookalike = memcached_key(hostile)  # a user may type exactly what we send for hostile
    cache.set(hostile, "hostile")
    cache.set(lookalike, "lookalike")
    assert cache.get_many(hostile, lookalike) == ["hostile", "lookalike"]


def test_valid_keys_reach_memcached_unchanged(
    cache: MemcachedCache, memcached_server: MemcachedServer
) -> None:
    cache.set("user:42", "v")
    assert raw_client(memcached_server).get("user:42") is not None
    assert memcached_key("user:42") == "user:42"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=2, max_size=6, unique=True))
def test_mapped_keys_are_valid_and_distinct(keys: list[str]) -> None:
    mapped = [memcached_key(key) for key in keys]
    assert len(set(mapped)) == len(keys)
    for name in mapped:
        assert 0 < len(name) <= 250
        assert all(33 <= ord(char) <= 126 for char in name)


def test_prefix_counts_toward_the_key_length(memcached_server: MemcachedServer) -> None:
    with MemcachedCache([address(memcached_server)], key_prefix="p" * 240 + ":") as cache:
        assert cache.set("k" * 20, "v") is True
        assert cache.get("k" * 20) == "v"


# -- timeouts -----------------------------------------------------------------------------------


def test_long_timeouts_become_absolute_timestamps(
    cache: MemcachedCache, memcached_server: MemcachedServer
) -> None:
    assert cache.set("long", "v", timeout=40 * DAY) is True
    assert cache.get("long") == "v"
    assert abs(server_ttl(memcached_server, "long") - 40 * DAY) <= 2
    cache.set("edge", "v", timeout=MAX_RELATIVE_EXPIRY)
    assert abs(server_ttl(memcached_server, "edge") - MAX_RELATIVE_EXPIRY) <= 2


def test_long_default_timeout_applies(memcached_server: MemcachedServer) -> None:
    with MemcachedCache([address(memcached_server)], default_timeout=timedelta(days=60)) as cache:
        cache.set("k", "v")
        assert abs(server_ttl(memcached_server, "k") - 60 * DAY) <= 2


def test_fractional_timeouts_round_up_never_to_forever(
    cache: MemcachedCache, memcached_server: MemcachedServer
) -> None:
    cache.set("tiny", "v", timeout=0.01)
    cache.set("forever", "v", timeout=0)
    cache.set("default", "v")
    assert server_ttl(memcached_server, "tiny") in (0, 1)
    assert server_ttl(memcached_server, "forever") == -1
    assert 298 <= server_ttl(memcached_server, "default") <= 300


@pytest.mark.parametrize("key_prefix", ["", "p:"])
def test_entry_expires_on_the_server(memcached_server: MemcachedServer, key_prefix: str) -> None:
    with MemcachedCache([address(memcached_server)], key_prefix=key_prefix) as cache:
        cache.set_many({"short": "v", "counter": 1}, timeout=1)
        cache.set("kept", "v", timeout=0)
        assert cache.get_many("short", "counter") == ["v", 1]
        # memcached expires on its own one-second clock: within two seconds at most.
        wait_until(lambda: cache.get_many("short", "counter") == [None, None], timeout=5)
        assert cache.has("short") is False
        assert cache.inc("counter") == 1  # a new counter, not the expired one
        assert cache.get("kept") == "v"


# -- values and counters -------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["pickle", "msgpack"])
@pytest.mark.parametrize(
    "value", [b"\x00raw", b"", b"123", True, False, 7, -7, 2**63 - 1, -(2**63)]
)
def test_values_keep_their_type(
    memcached_server: MemcachedServer, serializer: str, value: Any
) -> None:
    with MemcachedCache([address(memcached_server)], serializer=serializer) as cache:
        cache.set("v", value)
        got = cache.get("v")
        assert got == value
        assert type(got) is type(value)


def test_has_does_not_download_the_value(
    cache: MemcachedCache, memcached_server: MemcachedServer
) -> None:
    cache.set("big", b"x" * 200_000)
    sent = server_stat(memcached_server, "bytes_written")
    assert cache.has("big") is True
    assert cache.has("missing") is False
    assert server_stat(memcached_server, "bytes_written") - sent < 20_000  # a stats reply


def server_stat(server: MemcachedServer, name: str) -> int:
    client = raw_client(server)
    try:
        return int(client.stats()[name.encode()])
    finally:
        client.close()


class BytesLikeJSON:
    """A foreign serializer whose ``dumps`` returns a bytes-like object that is not bytes."""

    name = "bytes-like-json"

    def __init__(self, kind: Callable[[bytes], Any]) -> None:
        self.kind = kind

    def dumps(self, value: Any) -> Any:
        return self.kind(json.dumps(value).encode())

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
@pytest.mark.parametrize("key_prefix", ["", "p:"])
def test_serializer_returning_bytes_like_works_on_every_write(
    memcached_server: MemcachedServer, kind: Callable[[bytes], Any], key_prefix: str
) -> None:
    """pymemcache stored the repr of a bytearray given to set_many or add."""
    memcached_server.flush()
    cache = MemcachedCache(
        [address(memcached_server)], key_prefix=key_prefix, serializer=BytesLikeJSON(kind)
    )
    values: dict[str, Any] = {"s": "text", "f": 1.5, "l": [1, "two"], "d": {"k": None}}
    assert cache.set("one", 2.5) is True  # "2.5" starts with a digit: the guarded encoding
    assert sorted(cache.set_many(values)) == sorted(values)
    assert cache.add("added", [3]) is True
    assert cache.get("one") == 2.5
    assert cache.get("added") == [3]
    assert cache.get_many(*values) == list(values.values())
    assert cache.stats()["errors"] == 0


def test_serializer_returning_str_is_refused_on_every_write(cache: MemcachedCache) -> None:
    cache.serializer = BytesLikeJSON(bytes.decode)
    assert cache.set_many({"n": 1}) == ["n"]  # an int is a counter, never serialized
    for write in (
        partial(cache.set, "k", "text"),
        partial(cache.set_many, {"k": "text"}),
        partial(cache.add, "k", "text"),
    ):
        with pytest.raises(SerializationError, match="not bytes"):
            write()
    assert cache.get_many("n", "k") == [1, None]


def test_huge_ints_go_through_the_serializer(cache: MemcachedCache) -> None:
    cache.set("huge", 2**80)
    assert cache.get("huge") == 2**80
    with pytest.raises(OverflowError):  # as on Redis: an integer, but not a 64-bit one
        cache.inc("huge")


def test_flags_mark_the_encoding(cache: MemcachedCache, memcached_server: MemcachedServer) -> None:
    cache.serializer = from_url("simple://?serializer=json").serializer
    cache.set_many({"int": 5, "dict": {"a": 1}, "float": 1.5})
    flags = [raw_flags(memcached_server, key) for key in ("int", "dict", "float")]
    assert flags == [FLAG_COUNTER, FLAG_SERIALIZED, FLAG_GUARDED]


def raw_flags(server: MemcachedServer, key: str) -> int:
    reply = raw_client(server).raw_command(f"mg {key} f")
    return int(reply.split(b" f")[1])


def test_inc_on_a_value_that_looks_numeric_is_type_error(cache: MemcachedCache) -> None:
    cache.serializer = from_url("simple://?serializer=json").serializer
    cache.set("float", 15.0)  # json writes "15.0": memcached incr must never touch it
    with pytest.raises(TypeError):
        cache.inc("float")
    assert cache.get("float") == 15.0


@pytest.mark.parametrize("stored", [b"5", b"0", b"18446744073709551615"])
def test_inc_on_a_number_another_client_stored_is_type_error_and_it_stays(
    cache: MemcachedCache, memcached_server: MemcachedServer, stored: bytes
) -> None:
    # python-memcached and pylibmc (cachelib's clients) store an int as its digits, flags 2
    client = raw_client(memcached_server)
    client.set("hits", stored, flags=2)
    assert cache.get("hits") is None  # not a cacheplug entry: a miss
    with pytest.raises(TypeError, match="did not write"):
        cache.inc("hits")
    assert (client.get("hits"), raw_flags(memcached_server, "hits")) == (stored, 2)


def test_inc_keeps_the_expiry_and_new_counters_get_the_default(
    memcached_server: MemcachedServer,
) -> None:
    memcached_server.flush()
    with MemcachedCache([address(memcached_server)], default_timeout=1000) as cache:
        cache.set("n", 1, timeout=5000)
        assert cache.inc("n") == 2
        assert 4998 <= server_ttl(memcached_server, "n") <= 5000
        assert cache.inc("fresh") == 1
        assert 998 <= server_ttl(memcached_server, "fresh") <= 1000


def test_negative_counters_and_overflow(cache: MemcachedCache) -> None:
    assert cache.dec("n", 5) == -5
    assert cache.inc("n", 2) == -3
    assert cache.get("n") == -3
    cache.set("top", 2**63 - 1)
    with pytest.raises(OverflowError):
        cache.inc("top")
    assert cache.get("top") == 2**63 - 1
    cache.set("bottom", -(2**63))
    with pytest.raises(OverflowError):
        cache.dec("bottom")
    assert cache.get("bottom") == -(2**63)
    with pytest.raises(OverflowError):
        cache.inc("n", 2**64)


def test_delete_many_reports_only_existing_keys(cache: MemcachedCache) -> None:
    cache.set_many({"a": 1, "b": 2})
    assert cache.delete_many("a", "missing", "a", "b") == ["a", "b"]
    assert cache.delete_many("a", "b") == []


def test_batches_with_more_replies_than_the_sockets_hold_complete() -> None:
    # memcached stops reading while its replies wait unread: sent at once, 600k writes (or a
    # get of 600k keys) left both sides waiting until the timeout, and set_many answered []
    # (get_many all None) with the server marked down
    keys = [f"k{i}" for i in range(600_000)]
    with MemcachedServer(memory_mb=256) as server, MemcachedCache([address(server)]) as cache:
        assert cache.set_many(dict.fromkeys(keys, 1)) == keys
        assert cache.get_many(*keys) == [1] * len(keys)
        assert cache.delete_many(*keys) == keys
        assert cache.stats()["errors"] == 0


@pytest.mark.parametrize("key_prefix", ["", "p:"])
def test_get_many_of_long_keys_is_cut_into_gets_between_keys(
    memcached_server: MemcachedServer, key_prefix: str
) -> None:
    # 3000 keys of 240 characters: 720 kB of names, cut into several gets
    mapping = {f"{i:06d}" + "k" * 234: i for i in range(3000)}
    with MemcachedCache([address(memcached_server)], key_prefix=key_prefix) as cache:
        assert cache.set_many(mapping) == list(mapping)
        assert cache.get_many(*mapping) == list(mapping.values())
        assert cache.get_dict(*reversed(mapping)) == dict(reversed(mapping.items()))
        assert cache.stats()["errors"] == 0


@pytest.mark.parametrize("key_prefix", ["", "p:"])
def test_set_many_with_one_value_too_large_reports_the_stored_keys(
    memcached_server: MemcachedServer, key_prefix: str
) -> None:
    too_large = b"x" * (2 * 1024 * 1024)  # over memcached's 1 MB item limit
    with MemcachedCache([address(memcached_server)], key_prefix=key_prefix) as cache:
        cache.set("big", "old")
        assert cache.set_many({"a": 1, "big": too_large, "b": 2}) == ["a", "b"]
        assert cache.get_many("a", "b") == [1, 2]
        assert cache.set("after", "ok") is True
        assert cache.get("after") == "ok"


# -- key_prefix namespaces ---------------------------------------------------------------------


def test_clear_by_one_client_is_seen_by_the_reads_of_another(
    memcached_server: MemcachedServer,
) -> None:
    memcached_server.flush()
    servers = [address(memcached_server)]
    with (
        MemcachedCache(servers, key_prefix="app:") as one,
        MemcachedCache(servers, key_prefix="app:") as other,
        MemcachedCache(servers, key_prefix="else:") as neighbour,
    ):
        one.set("k", "old")
        neighbour.set("k", "kept")
        assert other.get("k") == "old"
        assert other.clear() is True
        assert one.get("k") is None
        assert one.has("k") is False
        one.set("k", "new")
        assert other.get("k") == "new"
        assert neighbour.get("k") == "kept"


def test_writes_right_after_a_clear_elsewhere_land_in_the_new_namespace(
    memcached_server: MemcachedServer,
) -> None:
    servers = [address(memcached_server)]
    with (
        MemcachedCache(servers, key_prefix="lw:") as writer,
        MemcachedCache(servers, key_prefix="lw:") as other,
    ):
        writer.set_many({"k": "old", "n": 5, "gone": 1})
        assert other.clear() is True
        assert writer.set("k", "new") is True
        assert writer.add("a", "added") is True
        assert writer.inc("n") == 1
        assert writer.set_many({"m": "many"}) == ["m"]
        assert writer.delete("gone") is False
        expected = ["new", "added", 1, "many"]
        assert writer.get_many("k", "a", "n", "m") == expected
        assert other.get_many("k", "a", "n", "m") == expected


def test_lost_namespace_token_reads_as_an_empty_namespace(
    memcached_server: MemcachedServer,
) -> None:
    with MemcachedCache([address(memcached_server)], key_prefix="p:") as cache:
        cache.set("k", "v")
        memcached_server.flush()
        assert cache.get("k") is None
        assert cache.set("k", "again") is True
        assert cache.get("k") == "again"


def test_clear_without_prefix_flushes_the_servers(
    memcached_server: MemcachedServer, second_memcached_server: MemcachedServer
) -> None:
    with MemcachedCache([address(memcached_server), address(second_memcached_server)]) as cache:
        keys = [f"k{i}" for i in range(20)]
        cache.set_many(dict.fromkeys(keys, 1))
        assert raw_client(memcached_server).get_many(keys)
        assert raw_client(second_memcached_server).get_many(keys)  # spread over both
        assert cache.clear() is True
        assert cache.get_many(*keys) == [None] * 20


# -- key_prefix reassigned on a live cache (as cachelib allows) --------------------------------


@pytest.fixture(params=[1, 2], ids=["one-server", "two-servers"])
def spread(
    request: pytest.FixtureRequest,
    memcached_server: MemcachedServer,
    second_memcached_server: MemcachedServer,
) -> list[str]:
    """Addresses of one or two flushed servers."""
    servers = [memcached_server, second_memcached_server][: request.param]
    for server in servers:
        server.flush()
    return [address(server) for server in servers]


def test_reassigned_prefix_shares_every_method_with_a_cache_built_with_it(
    spread: list[str],
) -> None:
    with (
        MemcachedCache(spread, key_prefix="a:") as moved,
        MemcachedCache(spread, key_prefix="b:") as built,
    ):
        moved.set("old", "a-value")
        moved.key_prefix = "b:"
        assert moved.key_prefix == "b:"
        assert moved.get("old") is None
        assert moved.set("s", "set") is True
        assert moved.add("a", "added") is True
        assert moved.set_many({"m1": 1, "m2": "two"}) == ["m1", "m2"]
        assert moved.inc("n", 5) == 5
        assert moved.dec("n") == 4
        assert built.get_many("s", "a", "m1", "m2", "n") == ["set", "added", 1, "two", 4]
        built.set_many({"x": "from-built", "y": "y"})
        assert moved.get("x") == "from-built"
        assert moved.has("x") is True
        assert moved.add("x", "not stored") is False
        assert moved.get_dict("x", "s") == {"x": "from-built", "s": "set"}
        assert moved.delete("x") is True
        assert built.has("x") is False
        assert moved.delete_many("y", "s", "missing") == ["y", "s"]
        assert built.get_many("y", "s") == [None, None]
        assert built.inc("n") == 5
    with MemcachedCache(spread, key_prefix="a:") as first:
        assert first.get("old") == "a-value"


def test_clear_after_reassigning_drops_only_the_new_prefix(spread: list[str]) -> None:
    with (
        MemcachedCache(spread, key_prefix="a:") as moved,
        MemcachedCache(spread, key_prefix="a:") as a_cache,
        MemcachedCache(spread, key_prefix="b:") as b_cache,
    ):
        a_cache.set("k", "a")
        b_cache.set("k", "b")
        moved.key_prefix = "b:"
        assert moved.clear() is True
        assert b_cache.get("k") is None
        assert a_cache.get("k") == "a"


def test_prefix_set_on_a_cache_built_without_one_keeps_clear_under_it(spread: list[str]) -> None:
    with (
        MemcachedCache(spread) as moved,
        MemcachedCache(spread) as plain,
        MemcachedCache(spread, key_prefix="c:") as c_cache,
    ):
        plain.set_many({f"p{i}": i for i in range(10)})
        c_cache.set("k", "c")
        moved.key_prefix = "c:"
        assert moved.get("k") == "c"
        assert moved.get("p1") is None
        assert moved.set("m", "mine") is True
        assert c_cache.get("m") == "mine"
        assert moved.clear() is True
        assert plain.get_many(*(f"p{i}" for i in range(10))) == list(range(10))
        assert c_cache.get_many("k", "m") == [None, None]


@pytest.mark.parametrize("no_prefix", ["", None])
def test_prefix_reassigned_to_none_leaves_the_namespace(
    spread: list[str], no_prefix: str | None
) -> None:
    with (
        MemcachedCache(spread, key_prefix="a:") as moved,
        MemcachedCache(spread) as plain,
        MemcachedCache(spread, key_prefix="a:") as a_cache,
    ):
        plain.set("k", "plain")
        moved.set("k", "a")
        moved.key_prefix = no_prefix
        assert moved.key_prefix == ""
        assert moved.get("k") == "plain"
        assert moved.get_many("k") == ["plain"]
        assert moved.set("n", "moved") is True
        assert plain.get("n") == "moved"
        assert moved.clear() is True  # without a prefix: the whole servers
        assert [plain.get("k"), a_cache.get("k")] == [None, None]


def test_key_prefix_of_another_type_is_type_error(memcached_server: MemcachedServer) -> None:
    with MemcachedCache([address(memcached_server)], key_prefix="a:") as cache:
        with pytest.raises(TypeError, match="key_prefix must be str"):
            cache.key_prefix = 5  # type: ignore[assignment]
        assert cache.key_prefix == "a:"


# -- construction ---------------------------------------------------------------------------------


def test_cachelib_style_construction(memcached_server: MemcachedServer) -> None:
    memcached_server.flush()
    servers = [address(memcached_server)]
    cache = MemcachedCache(servers, 60, "pfx:", 4, True, True, True, None)
    assert (cache.default_timeout, cache.key_prefix) == (60, "pfx:")
    assert cache.set("k", "v") is True
    assert MemcachedCache(servers).get("k") is None  # another namespace
    assert MemcachedCache(servers, key_prefix="pfx:").get("k") == "v"


@pytest.mark.parametrize(
    "make", [lambda: Client(("127.0.0.1", 11211)), lambda: memcache.Client([])]
)
def test_client_object_as_servers_says_what_to_pass(make: Callable[[], Any]) -> None:
    with pytest.raises(ConfigurationError, match="pass the addresses") as info:
        MemcachedCache(make())
    assert "host:port" in str(info.value)


def test_check_connection_raises_on_a_dead_server() -> None:
    with pytest.raises(RuntimeError, match="could not connect"):
        MemcachedCache(["127.0.0.1:1"], check_connection=True)


def test_from_url_builds_the_cache(
    memcached_server: MemcachedServer, second_memcached_server: MemcachedServer
) -> None:
    cache = from_url(
        f"memcached://{address(memcached_server)},{address(second_memcached_server)}"
        "?serializer=msgpack&timeout=0.5&connect_timeout=0.25&no_delay=false"
        "&max_pool_size=3&dead_timeout=2&key_prefix=u:&default_timeout=30"
    )
    assert isinstance(cache, MemcachedCache)
    assert cache.set("k", b"bytes") is True
    assert cache.get("k") == b"bytes"
    assert "msgpack" in repr(cache) and address(second_memcached_server) in repr(cache)
    assert (cache.default_timeout, cache.key_prefix, cache.dead_timeout) == (30, "u:", 2.0)


def test_from_url_default_port_and_overrides() -> None:
    cache = from_url("memcached://cache-host", default_timeout=5)
    assert "cache-host:11211" in repr(cache)
    assert cache.default_timeout == 5
    assert "127.0.0.1:11211" in repr(from_url("memcached://"))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memcached://user:hunter2@h:1", "no credentials"),
        ("memcached://h:1/0", "no path"),
        ("memcached://h:1?pool=3", "accepted options"),
        ("memcached://h:1?timeout=soon", "timeout"),
        ("memcached://h:1?max_pool_size=0", "max_pool_size"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        from_url(url)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("servers", [["h:port"], ["h:0"], [""], [], 42, [("h", "1")]])
def test_bad_servers_are_configuration_errors(servers: Any) -> None:
    with pytest.raises(ConfigurationError):
        MemcachedCache(servers)


def test_import_and_plugin_loading_do_not_import_pymemcache() -> None:
    code = (
        "import sys, cacheplug\n"
        "from cacheplug.core.plugins import get_backend_class, get_plugins\n"
        "get_plugins(); cacheplug.MemcachedCache; get_backend_class('memcached')\n"
        "print('pymemcache' in sys.modules)\n"
    )
    assert run_python(code).strip() == "False"


def test_missing_pymemcache_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['pymemcache'] = None\n"
        "import cacheplug.backends.memcached\n"
        "from cacheplug import ConfigurationError, from_url\n"
        "try:\n"
        "    from_url('memcached://127.0.0.1:11211')\n"
        "except ConfigurationError as err:\n"
        "    print(err)\n"
    )
    assert "pip install 'cacheplug[memcached]'" in run_python(code)


# -- outages ---------------------------------------------------------------------------------------


def assert_outage_values(cache: MemcachedCache) -> None:
    assert cache.get("k") is None
    assert cache.set("k", "v") is False
    assert cache.add("k2", "v") is False
    assert cache.delete("k") is False
    assert cache.has("k") is False
    assert cache.inc("n") is None
    assert cache.dec("n") is None
    assert cache.get_many("a", "b") == [None, None]
    assert cache.get_dict("a") == {"a": None}
    assert cache.set_many({"a": 1}) == []
    assert cache.delete_many("a", "b") == []
    assert cache.clear() is False


@pytest.mark.parametrize("key_prefix", ["", "p:"])
def test_wrong_port_builds_and_answers_as_an_outage(
    key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = MemcachedCache(["127.0.0.1:1"], key_prefix=key_prefix)
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert_outage_values(cache)
        assert_outage_values(cache)
    lines = [r.getMessage() for r in caplog.records if r.name == "cacheplug"]
    assert len(lines) == 1  # rate-limited: one line for the whole outage
    assert lines[0].startswith("MemcachedCache.get failed")
    assert cache.stats()["errors"] >= 24


@pytest.mark.parametrize("key_prefix", ["", "p:"])
def test_reads_in_an_outage_count_as_errors_not_misses(
    fresh_memcached_server: MemcachedServer, key_prefix: str
) -> None:
    """As RedisCache counts them: a read that failed says nothing about the key. The prefixed
    paths counted a miss on top of the error."""
    cache = MemcachedCache([address(fresh_memcached_server)], key_prefix=key_prefix)
    assert cache.set("k", 1) is True
    assert cache.get_many("k", "x") == [1, None]  # a true miss still counts
    fresh_memcached_server.kill()
    assert cache.get("k") is None
    assert cache.get_many("k", "x", "k") == [None] * 3
    assert cache.get_dict("k", "x") == {"k": None, "x": None}
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["errors"]) == (1, 1, 3)


def test_outage_and_recovery_on_the_same_cache(
    fresh_memcached_server: MemcachedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = fresh_memcached_server
    cache = MemcachedCache([address(server)], key_prefix="r:")
    cache.set("k", "before")
    assert cache.get("k") == "before"
    server.kill()
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        for _ in range(50):
            assert cache.get("k") is None
    assert len([r for r in caplog.records if "MemcachedCache.get" in r.getMessage()]) == 1
    assert_outage_values(cache)
    server.restart()
    took = wait_until(lambda: cache.set("k", "after"), timeout=5)
    assert took < cache.dead_timeout + 1
    assert cache.get("k") == "after"
    assert cache.inc("n") == 1


def test_restart_between_operations_costs_no_failure(
    fresh_memcached_server: MemcachedServer,
) -> None:
    cache = MemcachedCache([address(fresh_memcached_server)])
    cache.set("k", "v")
    fresh_memcached_server.restart()  # pooled connections now point at a dead process
    errors = cache.stats()["errors"]
    assert cache.get("k") is None  # data is gone, but the call reached the new server
    assert cache.set("k", "v2") is True
    assert cache.stats()["errors"] == errors


def test_one_dead_server_of_two_keeps_the_other_serving(
    fresh_memcached_server: MemcachedServer, memcached_server: MemcachedServer
) -> None:
    cache = MemcachedCache([address(fresh_memcached_server), address(memcached_server)])
    keys = [f"spread{i}" for i in range(40)]
    assert sorted(cache.set_many(dict.fromkeys(keys, 1))) == sorted(keys)
    fresh_memcached_server.kill()
    values = cache.get_many(*keys)
    alive = [key for key, value in zip(keys, values, strict=True) if value == 1]
    assert 0 < len(alive) < len(keys)
    stats = cache.stats()  # the dead server's keys are errors, not misses
    assert (stats["hits"], stats["misses"], stats["errors"]) == (len(alive), 0, 1)
    assert sorted(cache.set_many(dict.fromkeys(keys, 2))) == sorted(alive)
    assert sorted(cache.delete_many(*keys)) == sorted(alive)


def test_a_server_that_never_answers_fails_within_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections in the kernel, never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host, port = silent.getsockname()
        cache = MemcachedCache([f"{host}:{port}"], timeout=0.2, dead_timeout=30)
        start = time.monotonic()
        assert cache.get("k") is None
        assert 0.15 < time.monotonic() - start < 10  # waited for the reply, then gave up
        assert cache.set("k", "v") is False  # skipped while the server counts as dead
        assert cache.stats()["errors"] == 2
        silent.setblocking(False)
        assert len(accepted_connections(silent)) == 1  # only the get connected


def accepted_connections(listener: socket.socket) -> list[socket.socket]:
    """Connections waiting in ``listener``'s backlog (accepted and closed)."""
    made: list[socket.socket] = []
    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return made
        connection.close()
        made.append(connection)


class Deadline(BaseException):
    """What a request deadline (SIGALRM handler, gevent Timeout) raises into a running call."""


def test_call_interrupted_mid_reply_never_pools_its_connection(
    fresh_memcached_server: MemcachedServer,
) -> None:
    server = fresh_memcached_server
    cache = MemcachedCache([address(server)], timeout=5)
    cache.set_many({"k1": "one", "k2": "two"})

    def expire(signum: int, frame: Any) -> None:
        raise Deadline

    previous = signal.signal(signal.SIGALRM, expire)
    assert server.pid is not None
    try:
        with paused_process(server.pid):  # the reply to the next get arrives only after it
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with pytest.raises(Deadline):
                cache.get("k1")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert [cache.get("k2") for _ in range(3)] == ["two"] * 3
