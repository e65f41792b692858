"""RedisCache leftovers of session 18: get_many of non-ASCII names packs its command once, a
pool with the user's own ``command_packer`` gets every command through it, and a large value
that a full connection pool kept from being sent is no value Redis refused.
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, ClassVar

import pytest
import redis
from redis.connection import HiredisRespSerializer, PythonRespSerializer
from redis.utils import HIREDIS_AVAILABLE
from servers import RedisServer
from test_nonascii_keys import REDIS_KEYS, SURROGATE_KEYS, Relay

from cacheplug import RedisCache
from cacheplug.backends import _redis_wire as wire

_prefixes = itertools.count()


def unique_prefix(start: str = "") -> str:
    return f"{start}left{next(_prefixes)}:"


# -- get_many of non-ASCII names ----------------------------------------------------------------


@pytest.fixture
def relay(redis_server: RedisServer) -> Iterator[Relay]:
    made = Relay(redis_server.port)
    yield made
    made.close()


#: lists of names whose first name is not ASCII (the others of every kind), or is ASCII
MANY = {
    "non-ascii": [f"é{i}" for i in range(10)],
    "first-other": ["ключ-first", "ascii", *REDIS_KEYS, *SURROGATE_KEYS],
    "first-ascii": ["ascii", *REDIS_KEYS, *SURROGATE_KEYS],
    "pieces": [f"{key}{i}" for i in range(1200) for key in ("🔑", "k")],  # two MGET pieces
}


@pytest.mark.parametrize("prefix", ["", "pre:", "é:"])
@pytest.mark.parametrize("keys", list(MANY.values()), ids=list(MANY))
def test_get_many_sends_the_bytes_redis_py_sends(
    relay: Relay, prefix: str, keys: list[str]
) -> None:
    packed = RedisCache(port=relay.port, db=5, key_prefix=unique_prefix(prefix))
    layered = RedisCache(port=relay.port, db=5, key_prefix=packed.key_prefix)
    layered._direct = False  # through redis-py's client layer: what redis-py sends
    assert packed.set_many({key: [key] for key in keys[::3]}) == keys[::3]
    assert layered.get("warm") is None  # its connection made before the recording
    sent = []
    for cache in (layered, packed):
        relay.take()
        values = cache.get_many(*keys)
        sent.append((values, relay.take()))  # the replies were read: all it sent is here
    assert sent[1] == sent[0]
    assert sent[1][0] == [[key] if i % 3 == 0 else None for i, key in enumerate(keys)]
    assert sent[1][1].count(b"MGET") == len(wire.mget_pieces(keys))
    packed.clear()
    packed.close()
    layered.close()


def _str_joins(call: Any) -> int:
    """How often ``call()`` joins str pieces (each join builds a whole command's text)."""
    joins = 0

    def profile(_frame: FrameType, event: str, arg: Any) -> None:
        nonlocal joins
        if (
            event == "c_call"
            and getattr(arg, "__name__", "") == "join"
            and type(getattr(arg, "__self__", None)) is str
        ):
            joins += 1

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return joins


def test_non_ascii_names_are_packed_once() -> None:
    # callgrind measures the cost (see the session's report); this pins its cause
    names = [f"cp:é{i}" for i in range(100)]
    assert _str_joins(lambda: wire.packed_mget(names)) == 0
    assert _str_joins(lambda: wire.packed_mget([f"cp:{i}" for i in range(100)])) == 1  # ASCII


# -- a command packer of the user's ---------------------------------------------------------------


class RecordingPacker:
    """A user's command packer: redis-py's own, noting each command's name."""

    commands: ClassVar[list[str]] = []

    def __init__(self) -> None:
        self._packer = (
            HiredisRespSerializer() if HIREDIS_AVAILABLE else PythonRespSerializer(6000, str.encode)
        )

    def pack(self, *args: Any) -> Any:
        self.commands.append(str(args[0]))
        return self._packer.pack(*args)


def test_a_pool_with_its_own_command_packer_packs_every_command(
    redis_server: RedisServer,
) -> None:
    pool = redis.ConnectionPool(port=redis_server.port, db=5, command_packer=RecordingPacker())
    cache = RedisCache(redis.Redis(connection_pool=pool), key_prefix=unique_prefix())
    assert cache.has("k") is False  # the connection made (HELLO, SELECT...) and reused
    RecordingPacker.commands = []
    assert cache.set("k", [1]) is True
    assert cache.set("é", [2], timeout=0) is True
    assert cache.get("k") == [1]
    assert cache.get_many("k", "é", "absent") == [[1], [2], None]
    assert cache.set("k", 3, timeout=-1) is True
    assert RecordingPacker.commands == ["SET", "SET", "GET", "MGET", "DEL"]
    cache.clear()
    pool.disconnect()


def test_a_pool_without_a_packer_keeps_the_packed_path(redis_server: RedisServer) -> None:
    pool = redis.ConnectionPool(port=redis_server.port, db=5)
    assert wire.direct_ok(redis.Redis(connection_pool=pool)) is True
    pool = redis.ConnectionPool(port=redis_server.port, db=5, command_packer=None)
    assert wire.direct_ok(redis.Redis(connection_pool=pool)) is True


# -- a full connection pool --------------------------------------------------------------------


class CountingPool(redis.ConnectionPool):
    """A user's pool that counts the connections asked of it."""

    asked = 0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.asked += 1
        return super().get_connection(*args, **kwargs)


LARGE = b"x" * 2**20  # sent alone, and told from a server down by a ping when it fails


def test_a_full_pool_is_no_refused_value(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    pool = CountingPool(port=redis_server.port, db=5, max_connections=1)
    client = redis.Redis(connection_pool=pool)
    held = pool.get_connection()  # another thread's call, in flight
    pool.asked = 0
    logged = []
    writes: list[Callable[[RedisCache], object]] = [
        lambda cache: cache.set("big", LARGE),
        lambda cache: cache.add("big", LARGE),
        lambda cache: cache.set_many({"a": LARGE, "b": LARGE, "c": LARGE}),
    ]
    try:
        for write in writes:
            cache = RedisCache(client, key_prefix=unique_prefix())  # a first log line each
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="cacheplug"):
                assert write(cache) in (False, [])
            assert cache.stats()["errors"] == 1
            logged.append(caplog.text)
            assert pool.asked == 1  # nothing sent: nothing to tell a refusal from an outage by
            pool.asked = 0
    finally:
        pool.release(held)
    assert all("Too many connections" in text and "closed" not in text for text in logged), logged
    cache = RedisCache(client, key_prefix=unique_prefix())
    assert cache.set_many({"a": LARGE, "b": 1}) == ["a", "b"]  # the next call uses the server
    cache.clear()
    pool.disconnect()
