"""MemcachedCache at the edges: far expiry times, forked children, stalled and restarted servers."""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Iterator

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError
from servers import MemcachedServer
from test_memcached import address, raw_client, server_stat, server_ttl
from waiting import paused_process

from cacheplug import MemcachedCache
from cacheplug.backends._memcached_counters import FLAG_COUNTER, FLAG_GUARDED, FLAG_SERIALIZED

DAY = 24 * 3600
YEAR = 365 * DAY
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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


# -- counters in memory memcached reused -----------------------------------------------------------
# memcached 1.6.18 (memcached/memcached#1105) parses an incr target of 2**63 or more with
# safe_strtoull, which looks for a minus sign with strchr: item data is not NUL-terminated, so the
# scan runs on into whatever the item's memory held before, and a '-' there makes incr answer
# "non-numeric". A chunk freed by delete goes to the next item of its size class; fillers of a few
# sizes around a counter's 19-20 digits reach its class whatever the slab layout.

FILLER_SIZES = range(24, 48, 4)


def leave_in_freed_memory(raw: Client, key: str, fill: bytes) -> None:
    """Store ``fill`` and delete it: its bytes stay in the chunk memcached hands out next."""
    assert raw.set(key, fill) is True
    assert raw.delete(key) is True


def memcached_refuses(raw: Client, key: str) -> bool:
    """Whether memcached's own incr calls the stored number non-numeric (incr 0 changes nothing)."""
    try:
        raw.incr(key, 0)
    except MemcacheClientError:
        return True
    return False


@pytest.fixture
def raw(memcached_server: MemcachedServer) -> Iterator[Client]:
    client = raw_client(memcached_server)
    yield client
    client.close()


@pytest.mark.parametrize(
    ("start", "delta"),
    [
        (5, 1),
        (0, -1),
        (-5, 3),
        (2**62, 1),
        (INT64_MAX - 1, 1),
        (INT64_MIN + 1, -1),
        (-(2**62) - 7, -1),
        (2**62 + 3, -(2**62) - 10),
        (-(2**62) - 3, 2**62 + 10),
    ],
)
def test_inc_counts_whatever_the_freed_memory_held(
    cache: MemcachedCache, raw: Client, start: int, delta: int
) -> None:
    """Every counter >= 0 was stored at 2**63 or more, so inc raised TypeError there."""
    refused = 0
    for size in FILLER_SIZES:
        key = f"dash{size}"
        leave_in_freed_memory(raw, key, b"-" * size)
        assert cache.set(key, start) is True
        refused += memcached_refuses(raw, key)
        assert cache.get(key) == start
        assert cache.inc(key, delta) == start + delta
        assert cache.get(key) == start + delta
        assert cache.dec(key, delta) == start
        assert cache.get(key) == start
    if abs(start) >= 2**62:  # stored at 2**63 or more: the trap is armed somewhere
        assert refused, "no filler reached the counter's memory: the test proves nothing"


@pytest.mark.parametrize(
    ("start", "delta"),
    [
        # 2 digits grow to 20: the wrapped result goes to a new item, in the dashes
        (INT64_MIN + 10, -11),
        # 19 digits grow to 20 on the way past INT64_MAX
        (5_300_000_000_000_000_000, 2**63 - 5_300_000_000_000_000_000),
    ],
)
def test_overflow_undo_in_freed_memory_restores_the_value(
    cache: MemcachedCache, raw: Client, start: int, delta: int
) -> None:
    """The undo of an overflow is an incr too: when memcached called the wrapped number
    non-numeric, the undo was dropped and OverflowError raised with the value changed."""
    for size in FILLER_SIZES:
        key = f"undo{size}"
        leave_in_freed_memory(raw, key, b"\0" * size)  # the counter itself is readable
        assert cache.set(key, start) is True
        leave_in_freed_memory(raw, f"UNDO{size}", b"-" * size)  # where a grown result goes
        with pytest.raises(OverflowError):
            cache.inc(key, delta)
        assert cache.get(key) == start


@pytest.mark.parametrize("timeout", [5000, 0, 40 * DAY])
def test_inc_in_freed_memory_keeps_the_expiry(
    cache: MemcachedCache, raw: Client, memcached_server: MemcachedServer, timeout: int
) -> None:
    for size in FILLER_SIZES:
        key = f"ttl{size}"
        leave_in_freed_memory(raw, key, b"-" * size)
        assert cache.set(key, 2**62 + 1, timeout=timeout) is True
        before = server_ttl(memcached_server, key)
        assert cache.inc(key) == 2**62 + 2
        # a relative exptime is kept to the second; past 30 days it is a unix time
        assert before - 2 <= server_ttl(memcached_server, key) <= before + (timeout > 30 * DAY)


def test_concurrent_inc_in_freed_memory_loses_nothing(
    memcached_server: MemcachedServer, raw: Client
) -> None:
    """Threads with their own caches (as processes would be) count one counter across 2**62,
    where memcached starts calling it non-numeric: native incr and compare-and-swap interleave."""
    memcached_server.flush()
    start, rounds = 2**62 - 300, 150
    for n in range(40):  # every free chunk of the counter's size class holds dashes
        for size in FILLER_SIZES:
            raw.set(f"fill{n:03}-{size}", b"-" * size)
    for n in range(40):
        for size in FILLER_SIZES:
            raw.delete(f"fill{n:03}-{size}")
    caches = [MemcachedCache([address(memcached_server)]) for _ in range(4)]
    assert caches[0].set("shared", start) is True
    begin = threading.Barrier(len(caches))
    errors: list[BaseException] = []

    def work(cache: MemcachedCache, delta: int) -> None:
        begin.wait()
        try:
            for _ in range(rounds):
                assert cache.inc("shared", delta) is not None
        except BaseException as err:  # reported below, not lost in the thread
            errors.append(err)

    deltas = [3, 3, -1, -1]
    threads = [
        threading.Thread(target=work, args=pair) for pair in zip(caches, deltas, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[0]
    assert caches[0].get("shared") == start + rounds * sum(deltas)
    for cache in caches:
        cache.close()


# -- integers beyond 64 bits -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serializer", "value"),
    [
        *(("pickle", value) for value in (2**100, -(2**100), INT64_MAX + 1, INT64_MIN - 1)),
        *(("json", value) for value in (INT64_MAX + 1, 2**64 - 1)),  # what json encodes
    ],
)
def test_inc_on_an_int_beyond_64_bits_is_overflow_error(
    memcached_server: MemcachedServer, serializer: str, value: int
) -> None:
    """As on Redis (docs/backends.md); memcached called the serialized int non-numeric and
    inc raised TypeError."""
    with MemcachedCache([address(memcached_server)], serializer=serializer) as cache:
        assert cache.set("big", value) is True
        for delta in (1, -1, -value):
            with pytest.raises(OverflowError):
                cache.inc("big", delta)
            with pytest.raises(OverflowError):
                cache.dec("big", delta)
        assert cache.get("big") == value


@pytest.mark.parametrize("value", [True, 1.0, "1", [1]])
def test_inc_on_a_serialized_non_int_stays_type_error(cache: MemcachedCache, value: object) -> None:
    assert cache.set("v", value) is True
    with pytest.raises(TypeError):
        cache.inc("v")
    assert cache.get("v") == value


@pytest.mark.parametrize(
    ("flags", "data", "message"),
    [
        (FLAG_SERIALIZED, b"not a pickle", r"its stored value is unreadable \(.*pickle"),
        (FLAG_GUARDED, b"!1 not a pickle", r"its stored value is unreadable \(.*pickle"),
        (FLAG_COUNTER, b"abc", r"its stored value is unreadable \(a counter that holds no number"),
        (77, b"abc", r"an entry cacheplug did not write \(memcached flags 77\)"),
    ],
    ids=["serialized", "guarded", "counter", "foreign"],
)
def test_inc_on_an_unreadable_entry_says_so_and_it_stays(
    cache: MemcachedCache, raw: Client, flags: int, data: bytes, message: str
) -> None:
    """It said the entry 'holds a NoneType', as if None were stored."""
    raw.set("bad", data, flags=flags)
    with pytest.raises(TypeError, match=message):
        cache.inc("bad")
    assert raw.gets("bad")[0] == data


def test_inc_on_a_stored_none_names_its_type(cache: MemcachedCache) -> None:
    assert cache.set("none", None) is True
    with pytest.raises(TypeError, match="holds a NoneType, not an int"):
        cache.inc("none")


# -- counters written by earlier versions ----------------------------------------------------------

OLD_FLAG_COUNTER = 0x4302  # decimal of value + 2**63


@pytest.mark.parametrize("value", [0, 7, -7, INT64_MAX, INT64_MIN])
def test_counters_of_the_earlier_encoding_read_and_count(
    cache: MemcachedCache, raw: Client, value: int
) -> None:
    raw.set("old", b"%d" % (value + 2**63), flags=OLD_FLAG_COUNTER)
    assert cache.get("old") == value
    assert cache.get_many("old") == [value]
    if value < INT64_MAX:
        assert cache.inc("old") == value + 1
        assert cache.get("old") == value + 1
        assert cache.dec("old") == value
    else:
        with pytest.raises(OverflowError):
            cache.inc("old")
    assert cache.get("old") == value
    raw.set("padded", b"%d   " % (value + 2**63), flags=OLD_FLAG_COUNTER)  # as incr leaves it
    assert cache.get("padded") == value


def test_pickled_small_int_counts(cache: MemcachedCache, raw: Client) -> None:
    """An int the serializer wrote (by another client) counts, as SimpleCache counts it."""
    raw.set("pickled", pickle.dumps(41), flags=0x4300)
    assert cache.get("pickled") == 41
    assert cache.inc("pickled") == 42
    assert cache.get("pickled") == 42
