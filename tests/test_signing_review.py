"""Adversarial review of signed payloads (docs/security.md, "Signed payloads").

An attacker who can write the store (Redis, a cluster, memcached, the cache directory) but does
not know the secret tries to make a signed cache return a value its writer never stored under
that key: entries moved between keys that share an engine name, namespace tokens of their
choosing, long memcached keys, duplicate keys in ``get_many``, the cluster's slots, counters'
flags, and a callable ``key_prefix`` that changes during a call.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import pathlib
import pickle
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from pymemcache.client.base import Client
from servers import MemcachedServer, RedisCluster, RedisServer
from test_security import WithFlags

from cacheplug import (
    ConfigurationError,
    FileSystemCache,
    JSONSerializer,
    MemcachedCache,
    MsgpackSerializer,
    PickleSerializer,
    RedisCache,
    SimpleCache,
)
from cacheplug.backends._memcached_counters import (
    FLAG_COUNTER_V1,
    FLAG_GUARDED,
    FLAG_SERIALIZED,
    NUMERIC_START,
)
from cacheplug.backends._memcached_keys import memcached_key
from cacheplug.backends._memcached_namespace import token_key
from cacheplug.core.signing import CacheSigner, entry_binding, signing_context

SECRET = "review-secret"
ADMIN = {"role": "admin"}


@pytest.fixture(autouse=True)
def _no_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHEPLUG_SECRET", raising=False)


def unique(name: str) -> str:
    """A prefix no other test on the shared servers uses."""
    return f"review-{secrets.token_hex(4)}-{name}"


def stored(raw: redis.Redis | redis.RedisCluster, name: str) -> bytes:
    """The raw payload under ``name``, as an attacker with access to the store reads it."""
    payload = raw.get(name)
    assert isinstance(payload, bytes), name
    return payload


# -- what the MAC covers -----------------------------------------------------------------------


def parse_mac_input(message: bytes) -> tuple[str, str, str, bytes]:
    """``(serializer name, key_prefix, key, data)`` back from a MAC input: proof that no two
    different tuples give the same input."""
    name = "pickle"
    if message.startswith(b"cacheplug-serializer:"):
        digits, message = message[len(b"cacheplug-serializer:") :].split(b":", 1)
        raw_name, message = message[: int(digits)], message[int(digits) :]
        name = raw_name.decode("utf-8", "surrogatepass")
    assert message.startswith(b"cacheplug-entry:")
    prefix_digits, key_digits, rest = message[len(b"cacheplug-entry:") :].split(b":", 2)
    prefix_len, key_len = int(prefix_digits), int(key_digits)
    prefix, key = rest[:prefix_len], rest[prefix_len : prefix_len + key_len]
    data = rest[prefix_len + key_len :]
    return (
        name,
        prefix.decode("utf-8", "surrogatepass"),
        key.decode("utf-8", "surrogatepass"),
        data,
    )


# every code point, lone surrogates and NUL included: keys may hold them
_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
_NAMES = st.sampled_from(["pickle", "json", "msgpack", "tests.Custom", "x\0cacheplug-entry:"]) | (
    st.text(st.characters(codec=None, exclude_categories=()), min_size=1, max_size=8)
)


@settings(max_examples=300, deadline=None)
@given(name=_NAMES, prefix=_ANY_TEXT, key=_ANY_TEXT, data=st.binary(max_size=24))
def test_the_mac_input_parses_back_to_one_serializer_prefix_key_and_data(
    name: str, prefix: str, key: str, data: bytes
) -> None:
    serializer = PickleSerializer() if name == "pickle" else _Named(name)
    message = signing_context(serializer) + entry_binding(prefix, key) + data
    assert parse_mac_input(message) == (name, prefix, key, data)


@dataclass
class _Named:
    """A serializer known by ``name`` only: the MAC's context is what is tested."""

    name: str

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


@pytest.mark.parametrize("secret", [b"k", b"s" * 64, b"long" * 40], ids=["short", "block", "long"])
@pytest.mark.parametrize("serializer", [PickleSerializer(), JSONSerializer(), MsgpackSerializer()])
def test_the_signature_is_the_documented_hmac(secret: bytes, serializer: Any) -> None:
    """HMAC-SHA256(secret, context + entry + data), byte for byte, whatever the secret's
    length (longer than SHA-256's block is hashed first, as RFC 2104 says)."""
    entry = entry_binding("app:", "user:\udc80\0é")
    data = b"payload"
    expected = hmac.digest(secret, signing_context(serializer) + entry + data, hashlib.sha256)
    assert CacheSigner(secret, serializer).sign(data, serializer, entry) == expected


# -- Redis: names shared by (prefix, key) pairs, duplicates, the cluster -----------------------


def test_redis_caches_whose_prefix_and_key_meet_in_one_name_never_read_each_other(
    redis_server: RedisServer,
) -> None:
    """``ab`` + ``c`` and ``a`` + ``bc`` are the same Redis name: the MAC tells them apart."""
    base = unique("overlap")
    long_prefix = RedisCache(port=redis_server.port, key_prefix=base + "ab", secret=SECRET)
    short_prefix = RedisCache(port=redis_server.port, key_prefix=base + "a", secret=SECRET)
    unsigned = RedisCache(port=redis_server.port, key_prefix=base + "a")
    try:
        assert long_prefix.set("c", ADMIN)
        assert unsigned.has("bc")  # the very entry, under the other cache's name
        errors = short_prefix.stats()["errors"]
        assert short_prefix.get("bc") is None
        assert short_prefix.get_many("bc", "bc") == [None, None]
        assert short_prefix.get_dict("bc") == {"bc": None}
        assert short_prefix.get_or_set("bc", lambda: "reader", 60) == "reader"
        assert short_prefix.stats()["errors"] > errors
        # the other cache's entry was overwritten, never read: now a miss there in turn
        assert long_prefix.get("c") is None
    finally:
        long_prefix.clear()
        short_prefix.clear()


def test_redis_get_many_with_repeated_and_moved_keys_pairs_each_value_with_its_key(
    redis_server: RedisServer,
) -> None:
    prefix = unique("many:")
    raw = redis.Redis(port=redis_server.port)
    cache = RedisCache(port=redis_server.port, key_prefix=prefix, secret=SECRET)
    try:
        assert cache.set_many({"role:1": "reader", "role:2": ADMIN, "n": 7}) == [
            "role:1",
            "role:2",
            "n",
        ]
        keys = ("role:2", "role:1", "role:2", "n", "role:1", "absent")
        assert cache.get_many(*keys) == [ADMIN, "reader", ADMIN, 7, "reader", None]
        raw.copy(prefix + "role:2", prefix + "role:1", replace=True)
        assert cache.get_many(*keys) == [ADMIN, None, ADMIN, 7, None, None]
        assert cache.get_dict("role:1", "role:2") == {"role:1": None, "role:2": ADMIN}
    finally:
        cache.clear()


def test_an_entry_moved_across_cluster_slots_is_a_miss(redis_cluster: RedisCluster) -> None:
    prefix = unique("cluster:")
    cache = RedisCache(startup_nodes=redis_cluster.nodes, key_prefix=prefix, secret=SECRET)
    raw = redis.RedisCluster(startup_nodes=[redis.cluster.ClusterNode(*redis_cluster.nodes[0])])
    keys = [f"role:{n}" for n in range(20)]
    try:
        assert cache.set_many({key: {"role": key} for key in keys}) == keys
        slots = {raw.keyslot(prefix + key) for key in keys}
        assert len(slots) > 1, "the keys must span slots (and nodes) for this test"
        for source, target in itertools.pairwise(keys):
            raw.set(prefix + target, stored(raw, prefix + source))
        assert cache.get(keys[1]) is None
        assert cache.get_many(*keys) == [{"role": keys[0]}] + [None] * (len(keys) - 1)
        with pytest.raises(TypeError):
            cache.inc(keys[1])
    finally:
        cache.clear()
        cache.close()
        raw.close()


class FlippingPrefix:
    """A callable ``key_prefix`` that turns from ``old`` to ``new`` after ``calls`` calls: the
    moment a deployment bumps the version a prefix is built from, in the middle of a call."""

    def __init__(self, old: str, new: str, calls: int) -> None:
        self.old, self.new, self.calls = old, new, calls

    def __call__(self) -> str:
        self.calls -= 1
        return self.old if self.calls >= 0 else self.new


def test_a_callable_prefix_read_once_per_call_names_and_verifies_one_entry(
    redis_server: RedisServer,
) -> None:
    base = unique("flip")
    old, new = base + ":v1:", base + ":v2:"
    raw = redis.Redis(port=redis_server.port)
    writer = RedisCache(port=redis_server.port, key_prefix=new, secret=SECRET)
    try:
        assert writer.set("role:1", ADMIN)  # user 1's new role, under the new prefix
        # the attacker puts it back under the old prefix, where user 1 was a reader
        raw.set(old + "role:1", stored(raw, new + "role:1"))
        reader = RedisCache(
            port=redis_server.port, key_prefix=FlippingPrefix(old, new, 1), secret=SECRET
        )
        # the reader names v1:role:1, then verifies it as v2:role:1's entry
        assert reader.get("role:1") is None
    finally:
        raw.delete(old + "role:1", new + "role:1")


# -- memcached: namespace tokens, long keys, flags --------------------------------------------


@pytest.fixture
def raw_memcached(memcached_server: MemcachedServer) -> Iterator[Client]:
    client = Client(memcached_server.address, serde=WithFlags(), default_noreply=False)
    yield client
    client.close()


def memcached(server: MemcachedServer, **options: Any) -> MemcachedCache:
    return MemcachedCache([f"{server.host}:{server.port}"], secret=SECRET, **options)


def test_namespace_tokens_chosen_by_an_attacker_cannot_make_two_prefixes_share_an_entry(
    memcached_server: MemcachedServer, raw_memcached: Client
) -> None:
    """Tokens are the store's: ``a`` + ``b:c`` + ``:d`` and ``ab`` + ``""`` + ``:c:d`` name
    one memcached key, yet one cache's entry never verifies as the other's."""
    base = unique("ns")
    assert raw_memcached.set(token_key(base + "a"), (b"b:c", 0))
    assert raw_memcached.set(token_key(base + "ab"), (b"", 0))
    writer = memcached(memcached_server, key_prefix=base + "ab")
    reader = memcached(memcached_server, key_prefix=base + "a")
    assert writer.set("c:d", ADMIN)
    name = memcached_key(base + "ab:c:d")
    assert raw_memcached.get(name) is not None  # the collision is real...
    unsigned = MemcachedCache([f"{memcached_server.host}:{memcached_server.port}"])
    unsigned.key_prefix = base + "a"
    assert unsigned.has("d")
    assert reader.get("d") is None  # ...and the MAC turns it into a miss
    assert reader.get_many("d", "d") == [None, None]
    with pytest.raises(TypeError):
        reader.inc("d")
    assert writer.get("c:d") == ADMIN  # inc left it as it was
    for cache in (writer, reader, unsigned):
        cache.close()


def test_a_long_key_entry_moved_to_another_long_key_of_the_same_start_is_a_miss(
    memcached_server: MemcachedServer, raw_memcached: Client
) -> None:
    """Keys memcached cannot take are sent hashed, their first 200 characters readable."""
    start = unique("long") + "x" * 260
    first, second = start + "1", start + " é\udc80"
    names = [memcached_key(first), memcached_key(second)]
    assert names[0] != names[1] and names[0][:200] == names[1][:200]
    for prefix in ("", unique("long-ns")):
        cache = memcached(memcached_server, key_prefix=prefix or None)
        assert cache.set_many({first: "reader", second: ADMIN}) == [first, second]
        assert cache.get_many(first, second, first) == ["reader", ADMIN, "reader"]
        if prefix:  # the names inside the namespace, as the cache built them
            token = raw_memcached.get(token_key(prefix))[0].decode()
            names = [memcached_key(f"{prefix}{token}:{key}") for key in (first, second)]
        assert raw_memcached.set(names[0], raw_memcached.get(names[1]))
        assert cache.get(first) is None
        assert cache.get_many(first, second, first) == [None, ADMIN, None]
        cache.close()


def test_guarded_and_old_counter_flags_never_let_a_forgery_through(
    memcached_server: MemcachedServer, raw_memcached: Client, tmp_path: pathlib.Path
) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Touch(marker))
    cache = memcached(memcached_server)
    key = unique("guard")
    assert cache.set(key, ADMIN)
    name = memcached_key(key)
    genuine, flags = raw_memcached.get(name)
    # a signed payload starts with its mark, never with a byte memcached takes for a number
    assert flags == FLAG_SERIALIZED and genuine[0] not in NUMERIC_START
    assert cache.get(key) == ADMIN
    other = unique("guard-other")
    forgeries = {
        "unsigned behind the guard": (b"!" + evil, FLAG_GUARDED),
        "moved to another key": (genuine, FLAG_SERIALIZED),
        "moved behind the guard": (b"!" + genuine, FLAG_GUARDED),
        "a counter that holds a pickle": (evil, FLAG_COUNTER_V1),
    }
    for why, item in forgeries.items():
        assert raw_memcached.set(memcached_key(other), item), why
        assert cache.get(other) is None, why
        assert cache.get_many(other, key) == [None, ADMIN], why
        with pytest.raises(TypeError):
            cache.inc(other)
    assert not marker.exists()
    cache.close()


@dataclass(frozen=True)
class _Touch:
    """Unpickling it creates a file: proof that a payload reached ``pickle.loads``."""

    path: pathlib.Path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.path,))


def test_a_cleared_memcached_namespace_comes_back_whole_with_its_old_token(
    memcached_server: MemcachedServer, raw_memcached: Client
) -> None:
    """clear() with a key_prefix replaces the token and leaves the entries to expire: whoever
    writes the old token back brings every one back, and they verify (the doc text proposed
    in the report says so)."""
    prefix = unique("cleared")
    cache = memcached(memcached_server, key_prefix=prefix)
    assert cache.set("role:1", ADMIN)
    old_token = raw_memcached.get(token_key(prefix))
    assert cache.clear()
    assert cache.get("role:1") is None
    assert cache.set("role:1", "reader")
    assert raw_memcached.set(token_key(prefix), old_token)
    assert cache.get("role:1") == ADMIN
    cache.close()


# -- what the MAC does not cover: the store ------------------------------------------------------


def test_caches_sharing_a_secret_prefix_and_key_accept_each_others_entries_across_stores(
    redis_server: RedisServer, tmp_path: pathlib.Path
) -> None:
    """The MAC binds key_prefix and key, not the store: a genuine entry copied to the same key
    of another Redis database, or from a cache directory to Redis, verifies there (what the
    doc text proposed in the report says; ``CACHEPLUG_SECRET`` gives every cache one secret)."""
    key = unique("role")
    sessions = RedisCache(port=redis_server.port, db=1, secret=SECRET)
    roles = RedisCache(port=redis_server.port, db=0, secret=SECRET)
    files = FileSystemCache(tmp_path / "files", secret=SECRET)
    raw_sessions = redis.Redis(port=redis_server.port, db=1)
    raw_roles = redis.Redis(port=redis_server.port, db=0)
    try:
        assert sessions.set(key, ADMIN)
        raw_roles.set(key, stored(raw_sessions, key))
        assert roles.get(key) == ADMIN
        assert files.set(key + "-file", ["from", "files"])
        payload = pathlib.Path(files._path(key + "-file")).read_bytes()[12:]  # past the header
        raw_roles.set(key + "-file", payload)
        assert roles.get(key + "-file") == ["from", "files"]
        # another key_prefix on the same store is enough to keep them apart
        apart = RedisCache(port=redis_server.port, db=0, key_prefix="roles:", secret=SECRET)
        raw_roles.set("roles:" + key, stored(raw_sessions, key))
        assert apart.get(key) is None
    finally:
        raw_roles.delete(key, key + "-file", "roles:" + key)
        raw_sessions.delete(key)


# -- the secret itself ---------------------------------------------------------------------------


def test_a_secret_from_the_environment_that_is_not_utf8_signs_with_its_bytes(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = b"k3y\xff\xfe-of-latin-1"
    monkeypatch.setenv("CACHEPLUG_SECRET", secret.decode("utf-8", "surrogateescape"))
    from_env = FileSystemCache(tmp_path / "env")
    assert from_env.set("role:1", ADMIN)
    assert FileSystemCache(tmp_path / "env", secret=secret).get("role:1") == ADMIN


def test_a_secret_utf8_cannot_encode_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigurationError) as refused:
        SimpleCache(secret="k3y-\udcff-hidden")
    assert "\\udcff" not in str(refused.value) and "\udcff" not in str(refused.value)
    assert refused.value.__context__ is None  # nothing chained shows it either


class CountedPrefix:
    """A callable ``key_prefix`` that counts how often it is asked."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.calls = prefix, 0

    def __call__(self) -> str:
        self.calls += 1
        return self.prefix


def test_a_callable_prefix_is_asked_once_per_operation(redis_server: RedisServer) -> None:
    """The name and the MAC come from one answer of the callable: asked once per call."""
    prefix = CountedPrefix(unique("counted") + ":")
    cache = RedisCache(port=redis_server.port, key_prefix=prefix, secret=SECRET)
    calls: list[Callable[[], object]] = [
        lambda: cache.set("a", ADMIN),
        lambda: cache.add("b", [1]),
        lambda: cache.get("a"),
        lambda: cache.get_many("a", "b", "missing"),
        lambda: cache.set_many({"c": "x", "d": 4}),
        lambda: cache.has("a"),
        lambda: cache.inc("n", 2),
        lambda: cache.delete("a"),
        lambda: cache.delete_many("b", "c"),
        cache.clear,
    ]
    try:
        for call in calls:
            before = prefix.calls
            call()
            assert prefix.calls - before == 1, call
        assert cache.stats()["errors"] == 0
    finally:
        cache.close()
