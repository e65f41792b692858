"""Defects found reviewing the day's changes to the backends, the CLI, Flask and URLs, each
checked on real servers.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from servers import RedisServer
from test_redis_ops import Interrupted, assert_own_replies, interrupted_before_reading
from waiting import paused_process

from cacheplug import RedisCache


def connections_received(servers: list[RedisServer]) -> int:
    """Connections the servers accepted so far (each count made here is one more)."""
    total = 0
    for server in servers:
        info = server.command("INFO", "stats")
        assert isinstance(info, bytes)
        total += int(info.split(b"total_connections_received:")[1].split()[0])
    return total


@pytest.fixture(params=["server", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> Iterator[tuple[RedisCache, list[RedisServer]]]:
    """A cache holding a, b, ä and ``count`` at 10, and the servers it uses."""
    if request.param == "server":
        servers = [request.getfixturevalue("fresh_redis_server")]
        cache = RedisCache(port=servers[0].port, key_prefix="p:")
    else:
        servers = request.getfixturevalue("redis_cluster").servers
        prefix = f"review-{uuid.uuid4().hex}:"  # the cluster is shared with other tests
        cache = RedisCache(startup_nodes=[s.address for s in servers], key_prefix=prefix)
    for key, value in {"a": "A", "b": "B", "ä": "AE", "count": 10}.items():
        assert cache.set(key, value) is True
    yield cache, servers
    cache.clear()
    cache.close()


def every_call(cache: RedisCache) -> None:
    cache.get("a")
    cache.get("ä")
    cache.set("z", "Z")
    cache.get_many("a", "b", "ä")
    cache.set_many({"y": 1, "x": 2})
    cache.has("a")
    cache.add("q", 1)
    cache.inc("n")
    cache.delete("absent")


def test_calls_inside_an_except_block_keep_their_connections(
    redis_target: tuple[RedisCache, list[RedisServer]],
) -> None:
    # The pools closed every connection given back while any BaseException was being handled,
    # so a cache used in an `except KeyboardInterrupt:` block reconnected on every call.
    cache, servers = redis_target
    every_call(cache)  # every node connected once
    try:
        raise Interrupted
    except Interrupted:
        before = connections_received(servers)
        for _ in range(20):
            every_call(cache)
        assert connections_received(servers) - before == len(servers)  # the counts' own


def test_a_call_cut_short_inside_an_except_block_leaves_no_reply(
    redis_target: tuple[RedisCache, list[RedisServer]],
) -> None:
    cache, servers = redis_target
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        # Paused, the servers answer the cut-off GET only once the next call has begun.
        with contextlib.ExitStack() as paused:
            for server in servers:
                assert server.pid is not None
                paused.enter_context(paused_process(server.pid))
            with interrupted_before_reading(), pytest.raises(Interrupted):
                cache.get("a")
        assert_own_replies(cache)
