"""MemcachedCache at the edges: far expiry times, forked children, stalled and restarted servers."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from servers import MemcachedServer
from test_memcached import address, server_stat, server_ttl
from waiting import paused_process

from cacheplug import MemcachedCache

YEAR = 365 * 24 * 3600


@pytest.fixture
def cache(memcached_server: MemcachedServer) -> Iterator[MemcachedCache]:
    memcached_server.flush()
    with MemcachedCache([address(memcached_server)]) as made:
        yield made


# -- far expiry times ------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [12 * YEAR, 20 * YEAR, 10**10, 10**12])
def test_timeouts_past_memcacheds_32_bit_clock_keep_the_entry(
    cache: MemcachedCache, memcached_server: MemcachedServer, timeout: int
) -> None:
    """memcached reads exptime as a signed 32-bit number: a later time used to wrap around,
    so the entry was stored already expired (or, past 2**32, never expiring) while set said True."""
    assert cache.set("far", "v", timeout=timeout) is True
    assert cache.set_many({"far2": "v"}, timeout=timeout) == ["far2"]
    assert cache.add("far3", "v", timeout=timeout) is True
    assert cache.get_many("far", "far2", "far3") == ["v", "v", "v"]
    for key in ("far", "far2", "far3"):
        assert server_ttl(memcached_server, key) > 10 * YEAR


def test_far_default_timeout_applies_to_new_counters(memcached_server: MemcachedServer) -> None:
    memcached_server.flush()
    with MemcachedCache([address(memcached_server)], default_timeout=50 * YEAR) as cache:
        assert cache.inc("n") == 1
        assert cache.inc("n") == 2
        assert server_ttl(memcached_server, "n") > 10 * YEAR


# -- forked children -------------------------------------------------------------------------------


def test_a_forked_child_never_talks_on_the_parents_connections(
    fresh_memcached_server: MemcachedServer,
) -> None:
    """A child that inherited a pooled socket and asked on it left a reply the parent then read
    as the answer to its own next call (set -> False, values of other keys)."""
    server = fresh_memcached_server
    assert server.pid is not None
    cache = MemcachedCache([address(server)], timeout=0.2)
    assert cache.set("k", "parent") is True  # the connection is now pooled
    with paused_process(server.pid):  # the child's request is answered only after it left
        child = os.fork()
        if child == 0:
            try:
                cache.get("k")
            finally:
                os._exit(0)
        os.waitpid(child, 0)
    assert cache.set("k2", "v") is True
    assert cache.get_many("k", "k2") == ["parent", "v"]
    assert cache.stats()["errors"] == 0


# -- stalled and restarted servers -----------------------------------------------------------------


def test_a_stalled_server_costs_one_timeout_and_one_connection(
    fresh_memcached_server: MemcachedServer,
) -> None:
    """A reply that does not come in time is no sign of a stale pooled connection: the call
    used to be sent again on a new connection, doubling the wait the docs promise."""
    server = fresh_memcached_server
    assert server.pid is not None
    cache = MemcachedCache([address(server)], timeout=0.25)
    assert cache.set("k", "v") is True  # the connection is now pooled
    connections = server_stat(server, "total_connections")
    with paused_process(server.pid):
        start = time.monotonic()
        assert cache.get("k") is None
        waited = time.monotonic() - start
    assert server_stat(server, "total_connections") == connections + 1  # only this stats call
    assert waited < 2 * 0.25


@pytest.mark.parametrize("key_prefix", ["", "p:"])
def test_restart_then_inc_first_costs_no_failure(
    fresh_memcached_server: MemcachedServer, key_prefix: str
) -> None:
    """incr is never sent twice, so on a pooled connection the restart had closed it failed,
    and the failure took the healthy server out of service for dead_timeout."""
    server = fresh_memcached_server
    cache = MemcachedCache([address(server)], key_prefix=key_prefix)
    assert cache.inc("n", 5) == 5
    server.kill()
    server.restart()  # the pooled connection now points at a dead process
    assert cache.inc("n") == 1  # the data is gone, but the call reached the new server
    assert cache.dec("m") == -1
    assert cache.set("k", "v") is True
    assert cache.get("k") == "v"
    assert cache.stats()["errors"] == 0


@pytest.mark.parametrize("key_prefix", ["", "p:"])
def test_restart_then_add_or_delete_first_costs_no_failure(
    fresh_memcached_server: MemcachedServer, key_prefix: str
) -> None:
    """add and delete are never sent twice either: a pooled connection a restart closed is
    replaced before they are sent, not after they failed on it."""
    server = fresh_memcached_server
    cache = MemcachedCache([address(server)], key_prefix=key_prefix)

    def restart_with_a_pooled_connection() -> None:
        assert cache.set("a", 0) is True
        server.kill()  # a graceful stop waits a second for open connections
        server.restart()

    # the data is gone each time, but every call reached the new server
    restart_with_a_pooled_connection()
    assert cache.add("a", 1) is True
    restart_with_a_pooled_connection()
    assert cache.delete("a") is False
    restart_with_a_pooled_connection()
    assert cache.delete_many("a", "b") == []
    assert cache.stats()["errors"] == 0
