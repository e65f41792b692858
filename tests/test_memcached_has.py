"""MemcachedCache.has in a namespace (key_prefix): existence only, never the value, with the
namespace token read back in the same round trip; and what a namespace token that other
clients keep removing does to the server's health."""

from __future__ import annotations

import functools
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymemcache.exceptions import MemcacheServerError, MemcacheUnknownError
from servers import MemcachedServer
from test_memcached import address, raw_client
from test_memcached_wire import (
    PREFIXED_WRITES,
    PiecesClient,
    ScriptedServer,
    token_reply,
)

from cacheplug import MemcachedCache
from cacheplug.backends import _memcached_wire as wire
from cacheplug.backends._memcached_commands import CREATE_ATTEMPTS
from cacheplug.backends._memcached_namespace import token_key

MB = 1_000_000


class CountingSockets:
    """A socket module for pymemcache whose sockets count the requests sent (one ``sendall``
    each, then its reply is read: one round trip) and the bytes received."""

    def __init__(self) -> None:
        self.requests = 0
        self.received = 0
        counts = self

        class CountingSocket(socket.socket):
            def sendall(self, data: Any, flags: int = 0) -> None:
                counts.requests += 1
                super().sendall(data, flags)

            def recv(self, size: int, flags: int = 0) -> bytes:
                data = super().recv(size, flags)
                counts.received += len(data)
                return data

        self.socket = CountingSocket

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    def during(self, call: Callable[[], object]) -> tuple[object, int, int]:
        """``call()``'s answer, and the requests it sent and the bytes it received."""
        requests, received = self.requests, self.received
        answer = call()
        return answer, self.requests - requests, self.received - received


def counted(cache: MemcachedCache) -> CountingSockets:
    """Counts of the requests and replies on every connection ``cache`` opens from now on."""
    counts = CountingSockets()
    cache.close()
    for server in cache._servers:
        server._factory = functools.partial(server._factory, socket_module=counts)
    return counts


def bytes_written(server: MemcachedServer) -> tuple[int, int]:
    """What memcached has sent to its clients so far, and the length of this ``stats`` reply.

    memcached counts a reply once its worker thread has sent it, and each ``stats`` goes on a
    new connection, served by any worker: the next one may not see this reply counted yet.
    """
    lines = server._request("stats")
    for line in lines:
        if line.startswith("STAT bytes_written "):
            return int(line.split()[2]), sum(len(line) + 2 for line in lines)
    raise AssertionError("memcached stats without bytes_written")


@pytest.fixture
def server(memcached_server: MemcachedServer) -> MemcachedServer:
    memcached_server.flush()
    return memcached_server


@pytest.fixture
def cache(server: MemcachedServer) -> Iterator[MemcachedCache]:
    with MemcachedCache([address(server)], key_prefix="has:") as made:
        yield made


# -- existence only ------------------------------------------------------------------------------


def test_has_in_a_namespace_does_not_download_the_value(
    server: MemcachedServer, cache: MemcachedCache
) -> None:
    """has went through the namespace's get: a 1 MB value cost 1 MB of traffic."""
    counts = counted(cache)
    assert cache.set("big", b"x" * MB) is True
    assert cache.has("big") is True  # the token is known and a connection pooled
    before, stats_reply = bytes_written(server)
    answer, requests, received = counts.during(lambda: cache.has("big"))
    sent = bytes_written(server)[0] - before  # the first stats reply, when already counted
    assert (answer, requests) == (True, 1)
    assert received < 200 and sent < stats_reply + 200, (received, sent, stats_reply)
    assert cache.stats()["hits"] == cache.stats()["misses"] == 0  # has is not a read


def test_has_in_a_namespace_answers_every_kind_of_entry(cache: MemcachedCache) -> None:
    values = {"text": "v", "count": 7, "empty": b"", "none": None, "big": b"y" * MB}
    assert cache.set_many(values) == list(values)
    assert cache.inc("counter") == 1
    assert [cache.has(key) for key in [*values, "counter"]] == [True] * 6
    assert cache.has("missing") is False
    assert cache.delete("text") is True
    assert cache.has("text") is False
    assert cache.set("gone", "v", timeout=-1) is True
    assert cache.has("gone") is False


def test_has_in_a_namespace_takes_one_round_trip_once_the_token_is_known(
    cache: MemcachedCache,
) -> None:
    """A cache that has not seen the token yet reads it first (and creates it when missing):
    the key's name in memcached holds the token, so no request can name the key before."""
    counts = counted(cache)
    assert counts.during(lambda: cache.has("k"))[:2] == (False, 3)  # get, add, has
    assert counts.during(lambda: cache.has("k"))[:2] == (False, 1)
    assert cache.set("k", "v") is True
    with MemcachedCache(cache._servers[0].name, key_prefix="has:") as other:
        other_counts = counted(other)
        assert other_counts.during(lambda: other.has("k"))[:2] == (True, 2)  # get, has
        assert other_counts.during(lambda: other.has("k"))[:2] == (True, 1)


# -- the namespace's guarantees ------------------------------------------------------------------


def test_has_sees_a_clear_by_another_client(server: MemcachedServer, cache: MemcachedCache) -> None:
    with MemcachedCache([address(server)], key_prefix="has:") as other:
        counts = counted(cache)
        assert cache.set("k", "v") is True
        assert cache.has("k") is True
        assert other.clear() is True
        # the entry under the old token is still stored: has asks again under the new one
        assert counts.during(lambda: cache.has("k"))[:2] == (False, 2)
        assert other.set("k", "again") is True
        assert counts.during(lambda: cache.has("k"))[:2] == (True, 1)
        assert cache._servers[0].token == other._servers[0].token


def test_has_after_the_token_was_lost_is_false_in_a_new_namespace(
    server: MemcachedServer, cache: MemcachedCache
) -> None:
    assert cache.set("k", "v") is True
    assert raw_client(server).delete(token_key("has:")) is True  # evicted, or a restart
    assert cache.has("k") is False
    created = raw_client(server).get(token_key("has:"))
    assert created is not None and cache._servers[0].token == created.decode()
    with MemcachedCache([address(server)], key_prefix="has:") as other:
        assert other.set("k", "new") is True
        assert cache.has("k") is True
    assert cache.stats()["errors"] == 0


def test_a_storm_of_clears_cannot_starve_has(
    server: MemcachedServer, cache: MemcachedCache
) -> None:
    """Each has asks at most twice (the token it knew, then the one it read back), however
    many clears another client makes meanwhile."""
    stop = threading.Event()
    clears = 0

    def clearer() -> None:
        nonlocal clears
        with MemcachedCache([address(server)], key_prefix="has:") as other:
            while not stop.is_set():
                assert other.clear() is True
                clears += 1

    counts = counted(cache)
    assert cache.has("k") is False  # the token is known
    thread = threading.Thread(target=clearer)
    thread.start()
    asked: list[int] = []
    try:
        for _ in range(20_000):
            assert cache.set("k", "v") is True
            answer, requests, _ = counts.during(lambda: cache.has("k"))
            assert answer in (True, False)
            asked.append(requests)
            if asked.count(2) >= 20:
                break
    finally:
        stop.set()
        thread.join(timeout=10)
    assert clears and 2 in asked, "no clear raced has: the test proves nothing"
    assert max(asked) == 2
    assert cache.stats()["errors"] == 0


def test_has_asks_again_once_under_a_token_a_clear_replaced() -> None:
    # the token known is "aaa"; right after the meta get the server says the namespace is now
    # "bbb": has asks again there; a clear replacing "bbb" too overlaps this call, so the
    # second answer stands
    server = ScriptedServer([b"EN\r\n" + token_reply(b"bbb"), b"HD\r\n" + token_reply(b"ccc")])
    cache = MemcachedCache([f"127.0.0.1:{server.port}"], key_prefix="p:", timeout=2)
    cache._servers[0].seen_token("aaa")
    try:
        assert cache.has("k") is True
        assert cache._servers[0].token == "ccc"
        assert server.script == []
        assert cache.stats()["errors"] == 0
    finally:
        cache.close()
        server.close()


def test_has_under_a_token_read_in_the_same_call_asks_once() -> None:
    # the token is read during the call, so a change after it is a clear that overlaps the
    # call: has counts as made before it
    server = ScriptedServer([token_reply(b"aaa"), b"HD\r\n" + token_reply(b"bbb")])
    cache = MemcachedCache([f"127.0.0.1:{server.port}"], key_prefix="p:", timeout=2)
    counts = counted(cache)
    try:
        assert counts.during(lambda: cache.has("k"))[:2] == (True, 2)  # get of the token, has
        assert cache._servers[0].token == "bbb"
        assert server.script == []
    finally:
        cache.close()
        server.close()


@settings(max_examples=200, deadline=None)
@given(
    token=st.one_of(st.none(), st.binary(min_size=1, max_size=16).map(lambda b: b.hex().encode())),
    head=st.sampled_from([(b"HD", True), (b"EN", False)]),
    cuts=st.lists(st.integers(0, 200)),
)
def test_exists_with_the_token_read_back_parses_a_reply_cut_anywhere(
    token: bytes | None, head: tuple[bytes, bool], cuts: list[int]
) -> None:
    line, stored = head
    seen = b"END\r\n" if token is None else b"VALUE t 0 %d\r\n%s\r\nEND\r\n" % (len(token), token)
    client = PiecesClient(line + b"\r\n" + seen, cuts)
    assert wire.exists_seeing(client, "k", "t") == (stored, token)


@pytest.mark.parametrize(
    "reply",
    [
        b"VA 1\r\nx\r\nEND\r\n",  # a value nobody asked for
        b"SERVER_ERROR out of memory\r\nEND\r\n",
        b"HD\r\nVALUE u 0 3\r\nabc\r\nEND\r\n",  # another key than the token's
        b"HD\r\nEND\r\nEN\r\n",  # a line too many: out of step
    ],
)
def test_exists_with_the_token_read_back_drops_the_connection_on_a_damaged_reply(
    reply: bytes,
) -> None:
    client = PiecesClient(reply, [])
    with pytest.raises((MemcacheServerError, MemcacheUnknownError)):
        wire.exists_seeing(client, "k", "t")
    assert client.sock is None


# -- outages ---------------------------------------------------------------------------------------


def test_has_in_a_namespace_during_an_outage_is_false_logged_and_counted(
    fresh_memcached_server: MemcachedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = fresh_memcached_server
    with MemcachedCache([address(server)], key_prefix="has:", dead_timeout=0) as cache:
        assert cache.set("k", "v") is True
        assert cache.has("k") is True
        server.kill()
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            assert cache.has("k") is False
        assert cache.stats()["errors"] == 1
        assert "MemcachedCache.has failed" in caplog.text
        server.restart()
        assert cache.has("k") is False  # memcached lost everything: a new, empty namespace
        assert cache.set("k", "v") is True
        assert cache.has("k") is True
        assert cache.stats()["errors"] == 1


# -- a token that other clients keep removing ----------------------------------------------------

#: Every attempt to read the token misses, and every attempt to create it finds one: another
#: client created it meanwhile and removed it again before the next read.
DROPPED = [b"END\r\n", b"NOT_STORED\r\n"] * CREATE_ATTEMPTS

CALLS: list[tuple[Callable[[MemcachedCache], object], bytes, object, object]] = [
    (lambda cache: cache.has("k"), b"HD\r\n", True, False),
    (*PREFIXED_WRITES[0], False),  # set
    (*PREFIXED_WRITES[-1], None),  # inc
]


@pytest.mark.parametrize(("call", "lines", "answer", "outage"), CALLS, ids=["has", "set", "inc"])
def test_a_token_dropped_through_every_attempt_fails_the_call_not_the_server(
    call: Callable[[MemcachedCache], object],
    lines: bytes,
    answer: object,
    outage: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """load_token gave up with a ConnectionError: the healthy server was marked down for
    dead_timeout (every call of every thread answered outage values meanwhile) and its idle
    connections closed."""
    script = [*DROPPED, token_reply(b"aaa"), lines + token_reply(b"aaa")]
    server = ScriptedServer(list(script))
    cache = MemcachedCache([f"127.0.0.1:{server.port}"], key_prefix="p:", timeout=2)
    try:
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            assert call(cache) == outage
        assert cache.stats()["errors"] == 1
        assert "namespace token" in caplog.text
        assert cache._servers[0].down_until == 0.0
        assert call(cache) == answer  # at once, on the same connection
        assert server.script == [] and server.connections == 1
        assert cache.stats()["errors"] == 1
    finally:
        cache.close()
        server.close()


def test_a_token_lost_then_dropped_through_every_attempt_is_not_sent_again() -> None:
    """On a pooled connection, the ConnectionError also made the call run again whole on a new
    connection (as after a server restart), another CREATE_ATTEMPTS tries, and closed the
    server's idle connections."""
    hit = b"HD\r\n" + token_reply(b"aaa")
    lost = b"EN\r\nEND\r\n"  # the token is gone: has reads it again (load_token)
    server = ScriptedServer([token_reply(b"aaa"), hit, lost, *DROPPED, hit])
    cache = MemcachedCache([f"127.0.0.1:{server.port}"], key_prefix="p:", timeout=2)
    try:
        assert cache.has("k") is True
        assert cache.has("k") is False
        assert cache.stats()["errors"] == 1
        assert cache._servers[0].down_until == 0.0
        assert cache.has("k") is True
        assert server.script == [] and server.connections == 1
    finally:
        cache.close()
        server.close()


def test_set_many_under_a_token_dropped_through_every_attempt_is_not_sent_key_by_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The failed batch was sent again key by key, and each key met the same vanishing token:
    up to 2 * CREATE_ATTEMPTS more round trips per key, in the middle of a clear storm."""
    mapping = {"a": 1, "b": "two", "c": [3]}
    stored = b"STORED\r\n" * len(mapping)
    server = ScriptedServer([*DROPPED, token_reply(b"aaa"), stored + token_reply(b"aaa")])
    cache = MemcachedCache([f"127.0.0.1:{server.port}"], key_prefix="p:", timeout=2)
    try:
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            assert cache.set_many(mapping) == []
        assert "namespace token" in caplog.text
        assert cache.stats()["errors"] == 1
        assert cache._servers[0].down_until == 0.0
        assert cache.set_many(mapping) == list(mapping)  # the next call: one batch
        assert server.script == [] and server.connections == 1
        assert cache.stats()["errors"] == 1
    finally:
        cache.close()
        server.close()


def test_an_empty_token_stored_by_another_client_is_known_after_one_read(
    server: MemcachedServer, cache: MemcachedCache
) -> None:
    """An empty token was taken for none seen yet: every later call read it again first."""
    raw = raw_client(server)
    raw.set(token_key("has:"), b"", noreply=False)
    counts = counted(cache)
    assert counts.during(lambda: cache.set("k", "v"))[:2] == (True, 2)  # get of the token, set
    assert counts.during(lambda: cache.has("k"))[:2] == (True, 1)
    assert counts.during(lambda: cache.get("k"))[:2] == ("v", 1)
