"""MemcachedCache's namespace (key_prefix) under review: clears racing every call, tokens lost or
replaced by anything, prefixes that start one another, counters past -2**62 and lost replies
while the known token is stale."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pymemcache.exceptions import MemcacheClientError
from servers import MemcachedServer
from test_memcached import RawClient, address, raw_client
from test_memcached_faults import ReplyDroppingProxy

from cacheplug import MemcachedCache
from cacheplug.backends._memcached_keys import memcached_key
from cacheplug.backends._memcached_namespace import token_key

FILLER_SIZES = range(24, 48, 4)  # as test_memcached_edge: reaches a counter's size class


@pytest.fixture
def both(
    memcached_server: MemcachedServer, fresh_memcached_server: MemcachedServer
) -> list[MemcachedServer]:
    memcached_server.flush()
    return [memcached_server, fresh_memcached_server]


@pytest.fixture
def two_servers(both: list[MemcachedServer]) -> list[str]:
    return [address(server) for server in both]


# -- clears racing calls ---------------------------------------------------------------------------


@dataclass
class History:
    """Calls and clears with the ticks they started and ended at, one clock for all threads."""

    clears: list[tuple[int, int]] = field(default_factory=list)
    calls: list[tuple[str, int, int, int, Any, Any]] = field(default_factory=list)
    _ticks: Iterator[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def tick(self) -> int:
        with self._lock:
            return next(self._ticks)

    def overlaps(self, start: int, end: int) -> bool:
        """Whether a clear ran at some point of [start, end]."""
        return any(begun <= end and ended >= start for begun, ended in self.clears)

    def cleared_between(self, start: int, end: int) -> bool:
        """Whether a whole clear ran after ``start`` and returned before ``end``."""
        return any(begun > start and ended < end for begun, ended in self.clears)


def test_calls_racing_clears_from_other_processes_answer_in_clear_order(
    memcached_server: MemcachedServer,
) -> None:
    """Each thread has its own caches, as processes would: an inc after a clear returned starts
    from the delta, an inc no clear overlaps goes on from the last, and a value set is read by
    a cache that never saw the token (or by one that did) unless a clear overlaps."""
    servers = [address(memcached_server)]
    history = History()
    stop = threading.Event()
    errors: list[BaseException] = []

    def clearer() -> None:
        with MemcachedCache(servers, key_prefix="race:") as cache:
            while not stop.is_set():
                start = history.tick()
                assert cache.clear() is True
                history.clears.append((start, history.tick()))

    def worker(number: int) -> None:
        key, caches = f"n{number}", []
        try:
            writer = MemcachedCache(servers, key_prefix="race:")
            reader = MemcachedCache(servers, key_prefix="race:")
            caches += [writer, reader]
            for i in range(300):
                start = history.tick()
                count = writer.inc(key)
                history.calls.append(("inc", number, start, history.tick(), count, None))
                start = history.tick()
                assert writer.set(f"s{number}", i) is True
                fresh = MemcachedCache(servers, key_prefix="race:")
                caches.append(fresh)
                seen = (reader.get(f"s{number}"), fresh.get_many(f"s{number}"))
                history.calls.append(("set", number, start, history.tick(), i, seen))
        except BaseException as err:  # reported below, not lost in the thread
            errors.append(err)
        finally:
            for cache in caches:
                cache.close()

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    clearing = threading.Thread(target=clearer)
    clearing.start()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)
    stop.set()
    clearing.join(timeout=10)
    assert not errors, errors[0]
    assert len(history.clears) > 10, "no clear raced the calls: the test proves nothing"
    last: dict[int, tuple[int, int, int]] = {}
    for kind, number, start, end, answer, seen in history.calls:
        if kind == "set":
            assert seen[0] in (None, answer) and seen[1] in ([None], [answer])
            if not history.overlaps(start, end):
                assert seen == (answer, [answer])
            continue
        assert answer is not None
        if number in last:
            previous, previous_start, previous_end = last[number]
            if history.cleared_between(previous_end, start):
                assert answer == 1
            elif not history.overlaps(previous_start, end):
                assert answer == previous + 1
        last[number] = (answer, start, end)


# -- the token lost or replaced ------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"two words",
        b"\xff\xfe",
        b"\r\nEND\r\n" * 1000,
        b"VALUE x 0 1\r\nx\r\nEND\r\n",
        b"x" * 300_000,
    ],
    ids=["empty", "space", "not-ascii", "protocol-lines", "a-value-line", "300kB"],
)
def test_a_token_replaced_by_anything_is_a_namespace_like_any_other(
    both: list[MemcachedServer], two_servers: list[str], garbage: bytes
) -> None:
    with (
        MemcachedCache(two_servers, key_prefix="g:") as cache,
        MemcachedCache(two_servers, key_prefix="g:") as other,
    ):
        keys = [f"k{i}" for i in range(20)]
        assert cache.set_many(dict.fromkeys(keys, "old")) == keys
        for server in both:
            assert raw_client(server).set(token_key("g:"), garbage) is True
        assert cache.get_many(*keys) == [None] * 20
        assert cache.has("k0") is False
        assert cache.add("k0", "added") is True
        assert cache.inc("k1", 3) == 3
        assert cache.set_many({"k2": "many"}) == ["k2"]
        assert cache.delete("k3") is False
        assert other.get_many("k0", "k1", "k2") == ["added", 3, "many"]
        assert other.delete_many("k0", "k3") == ["k0"]
        assert other.clear() is True
        assert cache.get_many("k1", "k2") == [None, None]
        assert cache.inc("k1") == 1
        assert cache.stats()["errors"] == other.stats()["errors"] == 0


def test_one_servers_token_replaced_empties_only_that_servers_keys(two_servers: list[str]) -> None:
    with MemcachedCache(two_servers, key_prefix="one:") as cache:
        keys = [f"k{i}" for i in range(60)]
        assert cache.set_many(dict.fromkeys(keys, "v")) == keys
        first = cache._servers[0]
        on_first = {key for key in keys if cache._server(key, cache._namespace) is first}
        assert 0 < len(on_first) < len(keys)
        assert RawClient(first.address, default_noreply=False).set(token_key("one:"), b"x") is True
        assert cache.get_many(*keys) == [None if key in on_first else "v" for key in keys]
        assert [cache.add(key, "new") for key in keys] == [key in on_first for key in keys]
        assert first.token == "x"


def test_prefixes_where_one_starts_the_other_clear_apart(two_servers: list[str]) -> None:
    keys = [f"k{i}" for i in range(30)] + [f":k{i}" for i in range(30)]
    with (
        MemcachedCache(two_servers, key_prefix="a") as short,
        MemcachedCache(two_servers, key_prefix="a:") as long,
    ):
        assert short.set_many(dict.fromkeys(keys, "short")) == keys
        assert long.set_many(dict.fromkeys(keys, "long")) == keys
        assert short.clear() is True
        assert short.get_many(*keys) == [None] * 60
        assert long.get_many(*keys) == ["long"] * 60
        assert short.set_many(dict.fromkeys(keys, "short")) == keys
        assert long.clear() is True
        assert short.get_many(*keys) == ["short"] * 60
        assert long.get_many(*keys) == [None] * 60


# -- counters ------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "s3cret"])
@pytest.mark.parametrize("serializer", ["pickle", "json", "msgpack"])
def test_counters_past_minus_2_62_under_a_prefix_count_whatever_the_freed_memory_held(
    memcached_server: MemcachedServer, serializer: str, secret: str | None
) -> None:
    """Counters below -2**62 are stored at 2**63 or more, where memcached may call them
    non-numeric (memcached#1105): inc goes by compare-and-swap on the namespaced entry."""
    memcached_server.flush()
    raw = raw_client(memcached_server)
    options: dict[str, Any] = {"key_prefix": "cas:", "serializer": serializer, "secret": secret}
    with MemcachedCache([address(memcached_server)], **options) as cache:
        assert cache.set("warm", 1) is True  # the token is known: the entries' names too
        token = cache._servers[0].token
        refused = 0
        for size in FILLER_SIZES:
            key = f"low{size}"
            name = memcached_key(f"cas:{token}:{key}")
            assert raw.set(name, b"-" * size) is True
            assert raw.delete(name) is True
            assert cache.set(key, -(2**62) - 2) is True
            try:
                raw.incr(name, 0)
            except MemcacheClientError:
                refused += 1
            assert cache.dec(key, 3) == -(2**62) - 5
            assert cache.inc(key, 10) == -(2**62) + 5
            assert cache.get(key) == -(2**62) + 5
        assert refused, "no filler reached the counters' memory: the test proves nothing"
        assert cache.stats()["errors"] == 0


# -- a lost reply while the known token is stale --------------------------------------------

ONCE_WRITES: list[tuple[Callable[[MemcachedCache], object], object]] = [
    (lambda cache: cache.add("new", 1), False),
    (lambda cache: cache.delete("k"), False),
    (lambda cache: cache.delete_many("k"), []),
    (lambda cache: cache.inc("n"), None),
]


@pytest.mark.parametrize(
    ("write", "outage"), ONCE_WRITES, ids=["add", "delete", "delete_many", "inc"]
)
def test_a_write_under_a_stale_token_whose_reply_was_lost_fails_once_and_recovers(
    fresh_memcached_server: MemcachedServer,
    write: Callable[[MemcachedCache], object],
    outage: object,
) -> None:
    server = fresh_memcached_server
    proxy = ReplyDroppingProxy(server.address)
    cache = MemcachedCache([f"127.0.0.1:{proxy.port}"], key_prefix="p:", dead_timeout=0)
    try:
        with MemcachedCache([address(server)], key_prefix="p:") as other:
            assert cache.set("k", 1) is True  # the token is known, and the connection pooled
            assert other.clear() is True  # ... and now stale
            assert other.set_many({"k": 2, "n": 5}) == ["k", "n"]
            proxy.drop_reply()
            assert write(cache) == outage
            assert cache.stats()["errors"] == 1
            assert other.get_many("k", "n", "new") == [2, 5, None]  # the write reached no key
            assert cache.get("k") == 2
            current = raw_client(server).get(token_key("p:"))
            assert cache._servers[0].token == current.decode()
    finally:
        cache.close()
        proxy.close()


# -- key_prefix reassigned on a live cache ---------------------------------------------------------


class Reassigning(logging.Handler):
    """Reassigns a cache's key_prefix on the first record logged: another thread doing so at
    that moment of a call."""

    def __init__(self, cache: MemcachedCache, prefix: str) -> None:
        super().__init__()
        self.cache, self.prefix, self.done = cache, prefix, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.done:
            self.done = True
            self.cache.key_prefix = self.prefix


def test_set_many_overlapping_a_prefix_reassignment_stores_under_one_prefix(
    two_servers: list[str],
) -> None:
    """set_many placed its keys on the servers by the prefix it began with, then wrote each
    server's batch under the prefix of that moment: a batch after a reassignment went under the
    new prefix onto the servers of the old one, where no cache with either prefix looks."""
    too_large = b"x" * (2 << 20)  # refused by memcached: logged in the middle of the call
    with (
        MemcachedCache(two_servers, key_prefix="old:") as cache,
        MemcachedCache(two_servers, key_prefix="old:") as old,
        MemcachedCache(two_servers, key_prefix="new:") as new,
    ):
        first = cache._servers[0]
        big = next(f"big{i}" for i in itertools.count() if cache._ring(f"old:big{i}") is first)
        keys = [f"k{i}" for i in range(40)]
        handler = Reassigning(cache, "new:")
        logging.getLogger("cacheplug").addHandler(handler)
        try:
            stored = cache.set_many({big: too_large, **dict.fromkeys(keys, "v")})
        finally:
            logging.getLogger("cacheplug").removeHandler(handler)
        assert handler.done and cache.key_prefix == "new:"
        assert big not in stored and stored
        unreadable = [key for key in stored if "v" not in (old.get(key), new.get(key))]
        assert unreadable == []
