"""Defects found reviewing the day's changes to the backends, the CLI, Flask and URLs, each
checked on real servers.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_redis_ops import (
    Interrupted,
    Target,
    assert_own_replies,
    interrupted_before_reading,
    target,
)

from cacheplug import RedisCache

__all__ = ["target"]  # the fixture, a cache on a server and on a cluster


def connections_received(cache: RedisCache) -> int:
    """Connections the cache's servers accepted so far, asked through the cache's client."""
    client: Any = cache._client
    if cache._cluster:
        stats = client.info("stats", target_nodes=client.ALL_NODES).values()
    else:
        stats = [client.info("stats")]
    return sum(node["total_connections_received"] for node in stats)


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


def test_calls_inside_an_except_block_keep_their_connections(target: Target) -> None:
    # The pools closed every connection given back while any BaseException was being handled,
    # so a cache used in an `except KeyboardInterrupt:` block reconnected on every call.
    every_call(target.cache)  # every node connected once
    try:
        raise Interrupted
    except Interrupted:
        before = connections_received(target.cache)
        for _ in range(20):
            every_call(target.cache)
        assert connections_received(target.cache) == before


def test_a_call_cut_short_inside_an_except_block_leaves_no_reply(target: Target) -> None:
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        # Paused, the servers answer the cut-off GET only once the next call has begun.
        with target.paused(), interrupted_before_reading(), pytest.raises(Interrupted):
            target.cache.get("a")
        assert_own_replies(target.cache)
