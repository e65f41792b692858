"""Keys that are not ASCII on RedisCache and MemcachedCache: the same entries the raw drivers
name, the same bytes on the wire whichever path a call takes, and the cache's own packed
commands for them as for ASCII keys.

Redis names are the UTF-8 bytes of key_prefix + key (lone surrogates with surrogatepass when the
cache built its client). memcached names are key_prefix, namespace token and key as
``_memcached_keys`` maps them: a key memcached would refuse (not printable ASCII, longer than
250 bytes) is sent as a readable start, ``~#`` and a blake2b digest of its UTF-8 bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import pickle
import re
import select
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from pymemcache.client.base import Client as MemcacheClient
from servers import MemcachedServer, RedisServer
from test_redis import ClientLayer

from cacheplug import MemcachedCache, RedisCache
from cacheplug.backends._memcached_keys import memcached_key

_prefixes = itertools.count()

#: names whose UTF-8 length differs from their length; around RESP's header table (511) and
#: memcached's key limit (250 bytes)
REDIS_KEYS = [
    "ключ",
    "🔑",
    "日本語 with spaces\r\n$3\r\n",
    "é" * 255 + "e",  # 256 characters, 511 bytes
    "é" * 256,  # 512 bytes
    "🔑" * 130,  # 520 bytes, 130 characters
    "k" * 600 + "é",
]
SURROGATE_KEYS = ["a\ud800", "\udfff", "b\udc80é", "a\ud800\udc00"]  # the last: two lone halves
PREFIXES = ["", "pre:", "préfixe:", "sur\udc80:"]

#: memcached keys at its 250-byte limit, counted in characters and in bytes
MEMCACHED_KEYS = [
    "ключ",
    "a" * 250,  # plain: sent as it is
    "a" * 249 + "é",  # 250 characters, 251 bytes
    "é" * 125,  # 125 characters, 250 bytes
    "é" * 126,
    "🔑" * 62 + "ab",  # 64 characters, 250 bytes
    "x" * 199 + "é" * 10,  # the readable start ends inside the non-ASCII run
    "with space é",
    "lone \ud800 surrogate",
    "\udfff",
]


def redis_name(prefix: str, key: str) -> bytes:
    """The name redis-py sends for ``prefix + key`` (lone surrogates as RedisCache passes them)."""
    return (prefix + key).encode("utf-8", "surrogatepass")


def memcached_name(full: str) -> bytes:
    """The memcached key of ``full`` as docs/backends describes the mapping."""
    if (
        0 < len(full) <= 250
        and re.fullmatch(r"[\x21-\x7e]+", full) is not None
        and "~#" not in full
    ):
        return full.encode()
    digest = hashlib.blake2b(full.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()
    return (re.sub(r"[^\x21-\x7e]", "_", full[:200]) + "~#" + digest).encode()


def test_the_memcached_mapping_is_the_one_entries_were_stored_under() -> None:
    """Pinned: a changed mapping would orphan every entry stored before the change."""
    assert memcached_name("ключ") == b"____~#b44bf8a30403a3ee483b4185b1dec65e0088b01b"
    assert memcached_name("a\ud800") == b"a_~#ea1bdf502bf4aa65065dcbbb60242aa6a701113d"


@settings(max_examples=2000, deadline=None)
@given(
    full=st.text(
        alphabet=st.characters(codec=None) | st.sampled_from("?~# \x00\x7f\udfff🔑é"),
        max_size=300,
    )
)
def test_memcached_keys_are_mapped_as_documented(full: str) -> None:
    assert memcached_key(full).encode() == memcached_name(full)
    assert memcached_key(full).encode() == memcached_name(full)  # asked again


# -- Redis -------------------------------------------------------------------------------------


class Relay:
    """A TCP relay in front of a server that keeps every byte its clients send."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.sent = bytearray()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            self.sockets += [conn, server]
            threading.Thread(target=self._pump, args=(conn, server), daemon=True).start()

    def _pump(self, conn: socket.socket, server: socket.socket) -> None:
        pair = {conn: server, server: conn}
        try:
            while True:
                readable, _, _ = select.select(list(pair), [], [], 5)
                for sock in readable:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    if sock is conn:
                        with self.lock:
                            self.sent += data
                    pair[sock].sendall(data)
        except (OSError, ValueError):  # closed by close()
            return

    def take(self) -> bytes:
        """What clients sent since the last ``take``; the replies were read, so it is all here."""
        with self.lock:
            sent = bytes(self.sent)
            self.sent.clear()
        return sent

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(): close alone does not
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def relay(redis_server: RedisServer) -> Iterator[Relay]:
    made = Relay(redis_server.port)
    yield made
    made.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port, db=5)
    yield client
    client.close()


def redis_cache(server: RedisServer, prefix: str, **kwargs: Any) -> RedisCache:
    return RedisCache(port=server.port, db=5, key_prefix=f"{prefix}{next(_prefixes)}:", **kwargs)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_redis_entries_are_the_ones_redis_py_names(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    cache = redis_cache(redis_server, prefix)
    keys = [*REDIS_KEYS, *SURROGATE_KEYS, "ascii"]
    for n, key in enumerate(keys):
        assert cache.set(key, [n, key]) is True
        name = redis_name(cache.key_prefix, key)
        assert pickle.loads(raw.get(name)) == [n, key]  # type: ignore[arg-type]
        assert 299_000 < raw.pttl(name) <= 300_000
        assert cache.set(key, n, timeout=0) is True
        assert (raw.get(name), raw.pttl(name)) == (b"%d" % n, -1)
        raw.set(name, pickle.dumps({"from": "redis-py", "key": key}))
        assert cache.get(key) == {"from": "redis-py", "key": key}
        assert cache.set(key, "gone", timeout=-1) is True  # already expired: deleted
        assert raw.exists(name) == 0
        raw.set(name, pickle.dumps(key))
    assert cache.get_many(*keys) == keys
    assert cache.get_many(*reversed(keys), "é-missing", "missing") == [*reversed(keys), None, None]
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["errors"]) == (2 * len(keys) + len(keys), 2, 0)
    assert cache.clear() is True
    assert raw.exists(*(redis_name(cache.key_prefix, key) for key in keys)) == 0
    cache.close()


@pytest.mark.parametrize("prefix", PREFIXES)
def test_redis_get_many_mixing_ascii_and_other_keys(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    cache = redis_cache(redis_server, prefix)
    keys = [
        f"{kind}{i}"
        for i in range(1100)  # more than one MGET piece
        for kind in ("k", "é", "ключ", "🔑" * (i % 200), "s\ud800" if i % 7 == 0 else "a b")
    ]
    stored = dict.fromkeys(keys[::3], "v")
    assert cache.set_many(stored) == list(stored)
    values = cache.get_many(*keys)
    assert [key for key, value in zip(keys, values, strict=True) if value] == list(stored)
    names = [redis_name(cache.key_prefix, key) for key in keys]
    assert raw.exists(*names) == len(stored)
    assert (cache.stats()["hits"], cache.stats()["misses"]) == (
        len(stored),
        len(keys) - len(stored),
    )
    cache.clear()
    cache.close()


@pytest.mark.parametrize("prefix", PREFIXES)
def test_redis_sends_the_same_bytes_on_either_path(relay: Relay, prefix: str) -> None:
    """The cache's own commands and redis-py's client layer put the same bytes on the wire."""
    packed = RedisCache(port=relay.port, db=5, key_prefix=f"{prefix}{next(_prefixes)}:")
    layered = RedisCache(port=relay.port, db=5, key_prefix=packed.key_prefix)
    layered._direct = False  # every call through redis-py's client layer, as before the packing
    assert packed.set("warm", 1) and layered.get("warm") == 1  # connections made
    keys = [*REDIS_KEYS, *SURROGATE_KEYS, "ascii"]
    many = [key + str(i) for i in range(1500) for key in keys[:2]]  # two MGET pieces
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        *(("set", (key, b"x" * 7000), {}) for key in keys),  # a value sent as its own chunk
        *(("set", (key, [key]), {"timeout": timeout}) for key in keys for timeout in (0, -1)),
        *(("set", (key, [key]), {}) for key in keys),
        *(("get", (key,), {}) for key in keys),
        ("get_many", tuple(keys), {}),
        ("get_many", tuple(many), {}),
    ]
    for method, args, kwargs in calls:
        sent = []
        for cache in (layered, packed):
            relay.take()
            result = getattr(cache, method)(*args, **kwargs)
            sent.append((result, relay.take()))  # the reply was read: all it sent is here
        assert sent[1] == sent[0]
        assert sent[1][1].count(b"\r\n") > 2  # something was sent
    packed.clear()
    packed.close()
    layered.close()


@pytest.mark.parametrize("prefix", PREFIXES)
def test_redis_non_ascii_names_are_packed_by_the_cache(
    redis_server: RedisServer, prefix: str
) -> None:
    cache = redis_cache(redis_server, prefix)
    layer = ClientLayer(cache._client)
    keys = [*REDIS_KEYS, *SURROGATE_KEYS]
    for key in keys:
        assert cache.set(key, [key]) is True
        assert cache.set(key, [key], timeout=0) is True
        assert cache.get(key) == [key]
    assert cache.get_many(*keys, "ascii") == [[key] for key in keys] + [None]
    assert cache.set(keys[0], 1, timeout=-1) is True
    assert layer.commands == []
    cache.clear()
    cache.close()


@pytest.fixture(params=["strict", "surrogatepass"])
def given_client(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> Iterator[redis.Redis]:
    """A client the user passes in, with the encoding_errors of the param."""
    client = redis.Redis(port=redis_server.port, db=5, encoding_errors=request.param)
    yield client
    client.close()


def _outcomes(cache: RedisCache, key: str) -> list[Any]:
    """What set, get, get_many and a delete by set of ``key`` return, or the error they raise."""
    outcomes: list[Any] = []
    calls: list[Callable[[], Any]] = [
        lambda: cache.set(key, [key]),
        lambda: cache.get(key),
        lambda: cache.get_many("é", key),
        lambda: cache.set(key, 1, timeout=-1),
    ]
    for call in calls:
        try:
            outcomes.append(call())
        except Exception as err:  # the behaviour to keep is whatever the client does
            outcomes.append(type(err))
    return outcomes


def test_a_given_client_keeps_its_own_encoding_of_lone_surrogates(
    given_client: redis.Redis, raw: redis.Redis
) -> None:
    packed = RedisCache(given_client, key_prefix=f"given{next(_prefixes)}:")
    layered = RedisCache(given_client, key_prefix=packed.key_prefix)
    layered._direct = False
    for key in SURROGATE_KEYS:
        assert _outcomes(packed, key) == _outcomes(layered, key)
    for key in REDIS_KEYS:  # names a client encodes the same way whatever its encoding_errors
        assert packed.set(key, [key]) is True
        assert pickle.loads(raw.get(redis_name(packed.key_prefix, key))) == [key]  # type: ignore[arg-type]
        assert (layered.get(key), packed.get_many(key, "k")) == ([key], [[key], None])
    packed.clear()


def test_a_given_client_gets_non_ascii_names_packed(given_client: redis.Redis) -> None:
    cache = RedisCache(given_client, key_prefix=f"given{next(_prefixes)}:")
    layer = ClientLayer(given_client)
    for key in REDIS_KEYS:
        assert cache.set(key, [key]) is True
        assert cache.get(key) == [key]
    assert cache.get_many(*REDIS_KEYS) == [[key] for key in REDIS_KEYS]
    assert layer.commands == []
    cache.clear()


# -- memcached ---------------------------------------------------------------------------------


@pytest.fixture
def raw_memcached(memcached_server: MemcachedServer) -> Iterator[MemcacheClient]:
    client = MemcacheClient((memcached_server.host, memcached_server.port))
    yield client
    client.close()


def memcached_full(cache: MemcachedCache, raw: MemcacheClient, key: str) -> str:
    """``key`` with the cache's key_prefix and namespace token, as memcached_key takes it."""
    prefix = cache.key_prefix
    if not prefix:
        return key
    token = raw.get(memcached_name(prefix + "~ns~").decode())
    assert token is not None
    return f"{prefix}{token.decode()}:{key}"


@pytest.mark.parametrize("prefix", ["", "pre:", "préfixe:", "sur\udc80:"])
def test_memcached_entries_are_the_ones_pymemcache_names(
    memcached_server: MemcachedServer, raw_memcached: MemcacheClient, prefix: str
) -> None:
    cache = MemcachedCache(
        [f"{memcached_server.host}:{memcached_server.port}"],
        key_prefix=prefix and f"{prefix}{next(_prefixes)}:",
    )
    assert cache.set("reference", ["same"]) is True
    reference = raw_memcached.get(
        memcached_name(memcached_full(cache, raw_memcached, "reference")).decode()
    )
    assert reference is not None
    for key in MEMCACHED_KEYS:
        assert cache.set(key, ["same"]) is True
        name = memcached_name(memcached_full(cache, raw_memcached, key)).decode()
        assert raw_memcached.get(name) == reference
        assert cache.get(key) == ["same"]
        assert raw_memcached.delete(name, noreply=False) is True
        assert cache.get(key) is None
        assert cache.set(key, ["same"]) is True
    # names no other test writes: the server is shared and the unprefixed cache sees it all
    absent = [f"nonascii-absent-{i}" for i in range(10)]
    mixed = [key for pair in zip(MEMCACHED_KEYS, absent, strict=True) for key in pair]
    assert cache.get_many(*mixed, "missing é") == [["same"], None] * len(MEMCACHED_KEYS) + [None]
    assert cache.delete_many(*MEMCACHED_KEYS) == MEMCACHED_KEYS
    assert cache.get_many(*MEMCACHED_KEYS) == [None] * len(MEMCACHED_KEYS)
    cache.close()


def test_memcached_get_many_of_mapped_keys_on_one_server_is_one_get(
    memcached_server: MemcachedServer,
) -> None:
    cache = MemcachedCache([f"{memcached_server.host}:{memcached_server.port}"])
    keys = ["ключ", "with space", "a" * 300, "", "plain"]
    assert cache.set_many({key: [key] for key in keys}) == keys
    grouped: list[object] = []
    fetch = cache._fetch
    cache._fetch = lambda *args: grouped.append(args) or fetch(*args)  # type: ignore[method-assign]
    assert cache.get_many(*keys, "ключ", "missing é") == [[key] for key in keys] + [["ключ"], None]
    assert grouped == []  # one get of the mapped names, not the per-server grouping
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["errors"]) == (len(keys) + 1, 1, 0)
    cache.close()
