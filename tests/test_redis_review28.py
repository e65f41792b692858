"""Adversarial review of RedisCache against the contract: keys another client
made with other Redis types, and answers that differ from SimpleCache's."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from servers import RedisCluster, RedisServer
from test_redis_review import _messages

from cacheplug import RedisCache

OUTAGE = "failed, answering as the contract says"


@pytest.fixture(params=["server", "cluster"])
def cache(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis_cluster: RedisCluster
) -> Iterator[RedisCache]:
    if request.param == "cluster":
        built = RedisCache(startup_nodes=redis_cluster.nodes, key_prefix="{r28}:")
    else:
        built = RedisCache(port=redis_server.port, key_prefix="{r28}:")
    yield built
    built.clear()
    built.close()


def test_a_key_of_another_redis_type_reads_as_an_unreadable_entry_not_an_outage(
    cache: RedisCache, caplog: pytest.LogCaptureFixture
) -> None:
    # GET on a list another client made failed with WRONGTYPE, which get took for an engine
    # failure: logged as an outage ("RedisCache.get failed, answering as the contract says"),
    # counted with no miss, and get_or_set then counted two failed lookups instead of the one
    # unreadable entry it counts for a payload that does not decode.
    raw = cache._write_client
    raw.rpush("{r28}:list", "x")
    raw.set("{r28}:garbage", b"\x80not a pickle")
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert cache.get("list") is None
        lines = _messages(cache, caplog)
        assert len(lines) == 1 and OUTAGE not in lines[0]
        assert lines[0].startswith("unreadable entry 'list' read as a miss: ")
        assert "holds a Redis list" in lines[0]
        assert cache.stats()["misses"] == 1 and cache.stats()["errors"] == 1
        assert cache._by_thread.outage == 0  # no engine failure noted for get_or_set

        before = cache.stats()
        assert cache.get_or_set("garbage", lambda: "rebuilt") == "rebuilt"
        garbage = {k: v - before[k] for k, v in cache.stats().items()}
        before = cache.stats()
        assert cache.get_or_set("list", lambda: "rebuilt") == "rebuilt"
        listed = {k: v - before[k] for k, v in cache.stats().items()}
        assert (
            listed == garbage == {**dict.fromkeys(before, 0), "misses": 1, "sets": 1, "errors": 1}
        )
        assert all(OUTAGE not in line for line in _messages(cache, caplog))
    assert cache.get("list") == "rebuilt"  # overwritten by SET, as the garbage was
    assert cache.has("list")


def test_repr_shows_a_callable_key_prefix_without_calling_it() -> None:
    # repr called the prefix: one that reads a request's context raised outside a request
    # (a log line or a debugger showing the cache failed), and one answering per call showed
    # whichever prefix it answered then.
    asked: list[str] = []

    def tenant_prefix() -> str:
        asked.append("asked")
        raise RuntimeError("working outside of request context")

    cache = RedisCache(port=6390, key_prefix=tenant_prefix, secret="s3cret")
    shown = (
        "RedisCache(localhost:6390/0, default_timeout=300, key_prefix=<callable "
        "test_redis_review28.test_repr_shows_a_callable_key_prefix_without_calling_it."
        "<locals>.tenant_prefix>, serializer='pickle', signed=True)"
    )
    assert repr(cache) == str(cache) == shown
    assert asked == []
    cache.key_prefix = "plain:"  # a str prefix shows as before
    assert repr(cache) == (
        "RedisCache(localhost:6390/0, default_timeout=300, key_prefix='plain:', "
        "serializer='pickle', signed=True)"
    )
