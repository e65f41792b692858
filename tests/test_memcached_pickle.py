"""A pickled MemcachedCache (for a ``spawn`` child, a process pool) carries its options and
connects on its own in the copy: servers with their weights, a unix socket, the socket settings,
the namespace of a ``key_prefix``, the serializer and the secret; a ``clear`` by one process is
seen by the other."""

from __future__ import annotations

import copy
import multiprocessing
import os
import pickle
from typing import Any

import pytest
from servers import MemcachedServer
from test_memcached import address, server_ttl
from test_memcached_ops import unix_socket  # noqa: F401 (a fixture)

from cacheplug import MemcachedCache, from_url
from cacheplug.backends._memcached_keys import memcached_key
from cacheplug.serializers.json import JSONSerializer

SPAWN = multiprocessing.get_context("spawn")
WAIT = 60  # seconds for a spawned child to start, import and answer: a bound, not a timing
KEYS = [f"key{i}" for i in range(40)]  # enough that each of two servers holds some


def settings(cache: MemcachedCache) -> list[tuple[Any, int, dict[str, Any], int]]:
    """What each server of ``cache`` connects to and with: address, weight, the pymemcache
    client's keywords (the serde left out) and the idle connections kept."""
    made = []
    for server in cache._servers:
        keywords = {k: v for k, v in server._factory.keywords.items() if k != "serde"}
        made.append((server.address, server.weight, keywords, server._max_idle))
    return made


def sockets(cache: MemcachedCache) -> set[Any]:
    """The sockets of ``cache``'s connections, idle or in use."""
    return {client.sock for server in cache._servers for client in server._clients} - {None}


def test_a_copy_keeps_every_option_and_connects_on_its_own(
    memcached_pair: list[MemcachedServer],
) -> None:
    first, second = memcached_pair
    cache = MemcachedCache(
        [address(first), (address(second), 3)],
        default_timeout=120,
        key_prefix="pickled:",
        serializer="json",
        secret="s3cret",
        connect_timeout=0.75,
        timeout=2.5,
        no_delay=False,
        max_pool_size=3,
        dead_timeout=4.5,
    )
    cache.clear()
    assert cache.set_many({key: [key] for key in KEYS}) == KEYS
    assert cache.inc("n", 5) == 5
    assert cache.get("key0") == ["key0"]

    clone = pickle.loads(pickle.dumps(cache))

    assert repr(clone) == repr(cache)
    assert settings(clone) == settings(cache)
    assert [server.weight for server in clone._servers] == [1, 3]
    assert clone.dead_timeout == 4.5 and clone._reply_timeout == 2.5
    assert clone.default_timeout == 120 and clone.key_prefix == "pickled:"
    assert isinstance(clone.serializer, JSONSerializer)
    assert clone.stats() == dict.fromkeys(cache.stats(), 0)
    # nothing of the original's: no connection, no server marked down, no token seen
    assert not sockets(clone)
    assert all(server.token is None for server in clone._servers)
    assert not {id(server) for server in clone._servers} & {id(s) for s in cache._servers}
    # the same keys on the same servers, signed with the same secret, in the same namespace
    assert clone.get_many(*KEYS) == [[key] for key in KEYS]
    assert clone.inc("n") == 6
    assert clone.stats()["hits"] == len(KEYS)
    assert sockets(clone) and not sockets(clone) & sockets(cache)
    assert {sock.getsockname() for sock in sockets(clone)}.isdisjoint(
        sock.getsockname() for sock in sockets(cache)
    )
    # closing one leaves the other's connections alone
    clone.close()
    assert cache.get("n") == 6
    assert (
        MemcachedCache([address(first), address(second)], key_prefix="pickled:").get("key0") is None
    )  # without the secret: the entries really are signed


def test_copy_and_deepcopy_make_caches_of_their_own(memcached_server: MemcachedServer) -> None:
    cache = MemcachedCache([address(memcached_server)], key_prefix="copied:")
    assert cache.set("a", 1)
    for made in (copy.copy(cache), copy.deepcopy(cache)):
        assert made.get("a") == 1
        assert made._servers[0] is not cache._servers[0]
        assert not sockets(made) & sockets(cache)


def test_a_copy_of_a_unix_socket_cache(unix_socket: str) -> None:  # noqa: F811 (the fixture)
    cache = MemcachedCache(f"unix:{unix_socket}", key_prefix="sock:")
    assert cache.set("a", "v")
    clone = pickle.loads(pickle.dumps(cache))
    assert [server.address for server in clone._servers] == [unix_socket]
    assert clone.get("a") == "v"
    assert clone.set("b", "w") and cache.get("b") == "w"


def test_a_copy_from_a_url_keeps_its_options(memcached_server: MemcachedServer) -> None:
    url = f"{memcached_server.url}?timeout=0.5&connect_timeout=0.25&max_pool_size=2&key_prefix=u:"
    cache = from_url(url, serializer="msgpack", default_timeout=60)
    assert isinstance(cache, MemcachedCache)
    clone = pickle.loads(pickle.dumps(cache))
    assert settings(clone) == settings(cache)
    assert repr(clone) == repr(cache)
    assert cache.set("k", b"bytes") and clone.get("k") == b"bytes"


def test_options_reassigned_before_pickling_travel(memcached_server: MemcachedServer) -> None:
    cache = MemcachedCache([address(memcached_server)], key_prefix="first:")
    cache.key_prefix = "second:"
    cache.default_timeout = 0
    cache.serializer = JSONSerializer()
    assert cache.set("a", {"json": True})

    clone = pickle.loads(pickle.dumps(cache))

    assert (clone.key_prefix, clone.default_timeout) == ("second:", 0)
    assert clone.get("a") == {"json": True}
    assert clone.set("b", [1])
    assert cache.get("b") == [1]
    clone.key_prefix = None
    assert clone.get("a") is None and cache.get("a") == {"json": True}  # only the copy moved
    assert clone.set("forever", 1)
    assert server_ttl(memcached_server, memcached_key("forever")) == -1  # default_timeout 0


def test_the_namespace_of_a_copy_follows_clears_made_after_it_was_pickled(
    memcached_server: MemcachedServer,
) -> None:
    cache = MemcachedCache([address(memcached_server)], key_prefix="later:")
    assert cache.set("old", "before the clear")
    assert cache.get("old") == "before the clear"  # its token is known here
    pickled = pickle.dumps(cache)
    assert cache.clear()
    assert cache.set("new", "after the clear")

    clone = pickle.loads(pickled)

    assert clone.get_many("old", "new") == [None, "after the clear"]
    assert clone.has("old") is False
    assert clone.add("old", "again") is True  # the old entry does not come back
    assert cache.get("old") == "again"


def test_without_a_prefix_a_copy_sees_the_flush_of_the_original(
    memcached_server: MemcachedServer,
) -> None:
    cache = MemcachedCache([address(memcached_server)])
    clone = pickle.loads(pickle.dumps(cache))
    assert cache.set("flushed", 1) and clone.get("flushed") == 1
    assert clone.clear()
    assert cache.get("flushed") is None


class _LocalSerializer:
    """A serializer whose instances hold something pickle cannot carry."""

    name = "local"

    def __init__(self) -> None:
        self.hook = lambda data: data

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


def test_a_serializer_that_cannot_be_pickled_is_named(memcached_server: MemcachedServer) -> None:
    cache = MemcachedCache([address(memcached_server)], serializer=_LocalSerializer())
    with pytest.raises(TypeError, match=r"serializer \(_LocalSerializer\) cannot be pickled"):
        pickle.dumps(cache)
    cache.serializer = JSONSerializer()  # reassigned, as cachelib allows: then it travels
    assert isinstance(pickle.loads(pickle.dumps(cache)).serializer, JSONSerializer)


def test_a_ready_client_is_refused_when_the_cache_is_built() -> None:
    from pymemcache.client.base import Client

    client = Client(("127.0.0.1", 11211))
    with pytest.raises(ValueError, match=r"cannot use a ready client: pass the addresses"):
        MemcachedCache(client)  # type: ignore[arg-type]


# -- a spawned child --------------------------------------------------------------------------


def _child(cache: MemcachedCache, conn: Any) -> None:
    """Uses the copy it was given, in turn with the parent, which clears in between."""
    conn.send((cache.get("from parent"), cache.stats()["hits"], os.getpid()))
    conn.send((cache.set("from child", {"pid": os.getpid()}), cache.inc("visits", 2)))
    assert conn.recv() == "parent cleared"
    conn.send((cache.get("from parent"), cache.get("from child"), cache.has("visits")))
    conn.send((cache.set("before child clear", 1), cache.clear()))
    conn.close()


@pytest.mark.parametrize("prefix", ["spawned:", None])
def test_a_spawned_child_uses_its_copy_and_sees_the_parents_clear(
    memcached_pair: list[MemcachedServer], prefix: str | None
) -> None:
    cache = MemcachedCache(
        [address(server) for server in memcached_pair], key_prefix=prefix, secret="s3cret"
    )
    cache.clear()
    assert cache.set("from parent", ["hello"])
    assert cache.inc("visits") == 1
    parent, child_end = SPAWN.Pipe()
    child = SPAWN.Process(target=_child, args=(cache, child_end))
    child.start()
    try:
        child_end.close()
        got, hits, pid = parent.recv()
        assert (got, hits) == (["hello"], 1)  # the copy's stats started at zero
        assert pid != os.getpid()
        assert parent.recv() == (True, 3)
        assert cache.get("from child") == {"pid": pid}
        assert cache.clear()
        parent.send("parent cleared")
        assert parent.recv() == (None, None, False)
        assert parent.recv() == (True, True)
        assert cache.get("before child clear") is None  # the child's clear, seen here
        assert cache.add("before child clear", 2) is True
    finally:
        child.join(timeout=WAIT)
    assert child.exitcode == 0
