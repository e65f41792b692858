"""The one-timeout deadline on the rest of a memcached reply (``LATE`` in ``_memcached_replies``,
session 19's ``_LATE``), under threads, pools, several servers and caches, replies cut at random
points, failed replies and reconnections, a fork mid-reply; and a reply whole in one read still
costs no deadline work."""

from __future__ import annotations

import itertools
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import FORKS_BESIDE_A_THREAD
from servers import MemcachedServer
from test_fork_leftovers import fork_and_ask
from test_memcached_leftovers import TricklingRelay
from test_memcached_multi import cacheplug_lines
from waiting import wait_until

from cacheplug import MemcachedCache
from cacheplug.backends import _memcached_replies as replies


class CuttingRelay(TricklingRelay):
    """A TCP relay to a memcached server that cuts each piece of a reply it receives at up to
    ``cuts`` random points and passes the pieces after the first with a random pause of up to
    ``max_delay`` seconds each (always far below the caches' timeout). ``first_delay``: a pause
    before the first byte of each reply too. ``hold``: once set, the next reply passes its
    first half, sets ``holding`` and waits for ``release`` before its second half (or, with
    ``cut_off``, closes the connection instead)."""

    def __init__(self, target: tuple[str, int], max_delay: float, cuts: int = 3) -> None:
        super().__init__(target, 0.0)
        self.trickle = True
        self._max_delay = max_delay
        self._cuts = cuts
        self._random = random.Random(19)
        self.first_delay = 0.0
        self.pieces = 0  # pieces passed after a cut
        self.hold = threading.Event()
        self.holding = threading.Event()
        self.release = threading.Event()
        self.cut_off = False

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        # every piece leaves at once (Nagle would merge the pieces the test means to cut)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super()._relay(client, upstream)

    def _pass(self, client: socket.socket, data: bytes) -> None:
        if self.first_delay and self.stopped.wait(self.first_delay):
            return
        if self.hold.is_set():
            self.hold.clear()
            client.sendall(data[: len(data) // 2])
            self.holding.set()
            # bounded: a test that never releases fails on its own
            if not self.release.wait(10.0) or self.stopped.is_set():
                return
            if self.cut_off:  # the server side goes in the middle of the reply
                self.cut_off = False
                client.shutdown(socket.SHUT_RDWR)
                return
            # a pause, so that the second half comes in a read of its own
            if not self.stopped.wait(0.02):
                client.sendall(data[len(data) // 2 :])
            return
        if not self.trickle or len(data) < 2:
            client.sendall(data)
            return
        count = self._random.randint(0, min(self._cuts, len(data) - 1))
        cuts = sorted(self._random.sample(range(1, len(data)), count))
        for start, stop in itertools.pairwise([0, *cuts, len(data)]):
            if start:
                self.pieces += 1
                if self._random.random() < 0.7 and self.stopped.wait(
                    self._random.uniform(0, self._max_delay)
                ):
                    return
            client.sendall(data[start:stop])


def open_relay(server: MemcachedServer, max_delay: float, cuts: int = 3) -> CuttingRelay:
    return CuttingRelay(server.address, max_delay, cuts)


def shut(relay: CuttingRelay) -> None:
    relay.stopped.set()
    relay.release.set()
    relay.close()


@pytest.fixture(scope="module")
def two_more() -> Iterator[list[MemcachedServer]]:
    """Two memcached servers besides the session's: three in all for the ring."""
    started = [MemcachedServer().start() for _ in range(2)]
    yield started
    for server in started:
        server.kill()
        server.stop()


class Counting:
    """Counts the calls of a function of the replies module, replaced for the block."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.calls = 0
        original: Callable[..., Any] = getattr(replies, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(replies, name, counted)


def pooled_sockets(caches: list[MemcachedCache]) -> set[socket.socket]:
    return {
        client.sock
        for cache in caches
        for server in cache._servers
        for client in list(server._idle)
        if client.sock is not None
    }


def open_late() -> set[socket.socket]:
    """The sockets in ``LATE`` still open."""
    return {sock for sock in list(replies.LATE) if sock.fileno() >= 0}


# -- 1. threads x caches x servers through a relay cutting replies at random --------------------

THREADS = 8
ROUNDS = 20
STRESS_TIMEOUT = 3.0  # each pause <= 3 ms, each reply's pauses far below it
RUN = f"dl{os.getpid()}-{time.monotonic_ns()}"  # keys of this run only: the servers are shared


def _value(rng: random.Random, thread: int, key: int) -> str:
    # a CRLF and an END inside some values: a cut there must not end the reply
    tail = "\r\nEND\r\n" if key % 3 == 0 else ""
    return f"{thread}-{key}{tail}" + "x" * rng.choice([0, 10, 200, 3000])


def _workload(thread: int, caches: list[MemcachedCache], problems: list[str]) -> None:
    rng = random.Random(thread)
    counts = [0] * len(caches)
    try:
        for round_ in range(ROUNDS):
            for index, cache in enumerate(caches):
                where = f"thread {thread} round {round_} cache {index}"
                name = f"{RUN}-c{index}-t{thread}"  # the caches without a prefix share servers
                keys = [f"{name}-r{round_}-k{k}" for k in range(rng.choice([1, 5, 13, 20]))]
                values = {key: _value(rng, thread, k) for k, key in enumerate(keys)}

                def check(what: str, got: object, want: object, where: str = where) -> None:
                    if got != want:
                        problems.append(f"{where}: {what} -> {got!r:.120}, want {want!r:.120}")

                check("set_many", sorted(cache.set_many(values)), sorted(keys))
                check("get_many", cache.get_many(*keys, "absent"), [*values.values(), None])
                check("get", cache.get(keys[-1]), values[keys[-1]])
                counts[index] += 1
                check("inc", cache.inc(f"{name}-n"), counts[index])
                # pymemcache's own calls on the same pooled sockets, no send_request of the wire's
                check("add", cache.add(keys[0], "again"), False)
                check("add new", cache.add(f"{name}-r{round_}-new", 1), True)
                check("delete", cache.delete(f"{name}-r{round_}-new"), True)
                check("has", cache.has(keys[0]), True)
                check("delete_many", sorted(cache.delete_many(*keys)), sorted(keys))
                check("get_many after", cache.get_many(*keys), [None] * len(keys))
    except BaseException as err:  # reported by the test, not lost in the thread
        problems.append(f"thread {thread} raised {err!r}")


def test_threads_on_pooled_caches_through_cut_replies_get_every_answer_right(
    memcached_server: MemcachedServer,
    two_more: list[MemcachedServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    relays = [open_relay(server, 0.003) for server in [memcached_server, *two_more]]
    try:
        one, three = [f"127.0.0.1:{relays[0].port}"], [f"127.0.0.1:{r.port}" for r in relays]
        caches = [
            MemcachedCache(one, timeout=STRESS_TIMEOUT),
            MemcachedCache(one, key_prefix="dl1:", timeout=STRESS_TIMEOUT),
            # a pool smaller than the threads: connections are closed and opened all along
            MemcachedCache(three, timeout=STRESS_TIMEOUT, max_pool_size=2),
            MemcachedCache(three, key_prefix="dl3:", timeout=STRESS_TIMEOUT),
        ]
        before = set(replies.LATE)
        late = Counting(monkeypatch, "_late")
        problems: list[str] = []
        threads = [
            threading.Thread(target=_workload, args=(t, caches, problems)) for t in range(THREADS)
        ]
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        assert problems == []
        assert [cache.stats()["errors"] for cache in caches] == [0, 0, 0, 0]
        assert cacheplug_lines(caplog) == []
        # the relay did cut replies, and the cache read their rest against a deadline
        assert sum(relay.pieces for relay in relays) > 1000
        assert late.calls > 500
        # left: at most the idle pooled sockets whose last reply came in parts
        mine = open_late() - before
        assert mine <= pooled_sockets(caches)
        for cache in caches:
            cache.close()
        assert open_late() - before == set()
        # closed sockets go at the next reply that comes in parts
        relays[0].trickle, relays[0].first_delay = False, 0.0
        relays[0].hold.set()
        relays[0].release.set()
        again = MemcachedCache(one, timeout=STRESS_TIMEOUT)
        assert again.set("after", "y" * 100) is True
        assert set(replies.LATE) - before <= pooled_sockets([again])
        assert len(replies.LATE) <= len(before) + 1
    finally:
        for relay in relays:
            shut(relay)


# -- 2. a deadline never outlives its reply ----------------------------------------------------

TIMEOUT = 0.3
LATE_START = 0.1  # the first byte of a reply comes this late: a stale deadline would fail it


@pytest.fixture
def relay(memcached_server: MemcachedServer) -> Iterator[CuttingRelay]:
    made = open_relay(memcached_server, 0.01)
    yield made
    shut(made)


def _past(sock: socket.socket) -> bool:
    return time.monotonic() > replies.LATE[sock] + 0.01


def cut_in_two(relay: CuttingRelay, cache: MemcachedCache, keys: list[str]) -> socket.socket:
    """``get_many`` of ``keys``, its reply in two parts: its pooled socket, left in ``LATE``."""
    relay.hold.set()
    relay.release.set()
    assert cache.get_many(*keys) == ["v" * 300] * len(keys)
    (server,) = cache._servers
    (sock,) = [client.sock for client in server._idle]
    assert sock in replies.LATE
    return sock  # type: ignore[no-any-return]


@pytest.mark.parametrize("key_prefix", ["", "st:"])
@pytest.mark.parametrize(
    "between",
    ["nothing", "add", "delete", "timed out", "closed mid-reply"],
)
def test_a_deadline_never_fires_on_a_later_reply(
    relay: CuttingRelay, key_prefix: str, between: str
) -> None:
    cache = MemcachedCache(
        [f"127.0.0.1:{relay.port}"], key_prefix=key_prefix, timeout=TIMEOUT, dead_timeout=0
    )
    other = MemcachedCache([f"127.0.0.1:{relay.port}"], key_prefix=key_prefix, timeout=TIMEOUT)
    keys = [f"{RUN}-s{i}" for i in range(13)]
    values = dict.fromkeys(keys, "v" * 300)
    relay.trickle = False
    assert cache.set_many(values) == keys  # connected, the token known
    assert other.get_many(*keys) == [values[k] for k in keys]
    relay.trickle = True
    # a reply of each cache's socket came in parts: the entries stay, their deadlines pass
    other_sock = cut_in_two(relay, other, keys)
    sock = cut_in_two(relay, cache, keys)
    (mine,) = cache._servers
    first = keys[0]
    if between == "add":
        assert cache.add(first, "no") is False  # pymemcache's own call: no send_request
    elif between == "delete":
        assert cache.delete(first) is True
        assert cache.set(first, values[first]) is True
    elif between in ("timed out", "closed mid-reply"):
        relay.hold.set()
        if between == "timed out":
            relay.release.clear()
            assert cache.get_many(*keys) == [None] * len(keys)
            assert cache.stats()["errors"] == 1
            relay.release.set()
        else:
            relay.cut_off = True
            # the pooled connection broke: get_many goes once more, on a new one
            assert cache.get_many(*keys) == [values[k] for k in keys]
        assert sock.fileno() == -1
        # reconnected: a new socket, on the closed one's descriptor in 3 of 4 runs seen
        assert cache.set(first, values[first]) is True
        (sock,) = [client.sock for client in mine._idle]
        assert sock.fileno() >= 0
    wait_until(lambda: sock not in replies.LATE or _past(sock), timeout=5.0)
    wait_until(lambda: _past(other_sock), timeout=5.0)
    errors = cache.stats()["errors"]
    # every call type, each reply's first byte late and its rest cut: none may time out
    relay.first_delay = LATE_START
    assert cache.get(keys[1]) == values[keys[1]]
    assert cache.get_many(*keys) == [values[k] for k in keys]
    assert cache.set(keys[2], values[keys[2]]) is True
    assert cache.set_many(values) == keys
    assert cache.inc(f"{RUN}-n") is not None
    assert cache.has(keys[1]) is True
    assert sorted(cache.delete_many(*keys[3:5])) == sorted(keys[3:5])
    assert other.get_many(*keys) == [None if k in keys[3:5] else values[k] for k in keys]
    assert cache.stats()["errors"] == errors
    assert other.stats()["errors"] == 0
    relay.first_delay = 0.0


# -- 3. a fork while a parent thread is mid-reply -----------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("key_prefix", ["", "fk:"])
@FORKS_BESIDE_A_THREAD
def test_a_child_forked_while_a_parent_thread_is_mid_reply_works_normally(
    relay: CuttingRelay, key_prefix: str
) -> None:
    cache = MemcachedCache([f"127.0.0.1:{relay.port}"], key_prefix=key_prefix, timeout=2.0)
    keys = [f"f{i}" for i in range(13)]
    values = {key: key * 100 for key in keys}
    assert cache.set_many(values) == keys
    relay.release.clear()
    relay.hold.set()
    answers: list[object] = []
    parent = threading.Thread(target=lambda: answers.append(cache.get_many(*keys)))
    parent.start()
    try:
        assert relay.holding.wait(5.0)
        (server,) = cache._servers
        # its socket is in LATE
        wait_until(lambda: any(c.sock in replies.LATE for c in list(server._clients)), 5.0)
        release = threading.Event()

        def child() -> object:
            # the same cache and a new one, replies cut and each first byte late, while the
            # parent's socket, mid-reply, is in the child's LATE
            relay_child = MemcachedCache(
                [f"127.0.0.1:{relay.port}"], key_prefix=key_prefix, timeout=2.0
            )
            seen: list[object] = [cache.get_many(*keys) == list(values.values())]
            seen.append(cache.set("c", "x" * 500))
            seen.append(relay_child.get("c") == "x" * 500)
            seen.append(sorted(relay_child.delete_many("c", "f0")) == ["c", "f0"])
            seen.append(cache.inc("fork-n") is not None)
            seen.append(cache.stats()["errors"] + relay_child.stats()["errors"])
            return seen

        relay.first_delay = 0.05
        answer = fork_and_ask(child, release)
    finally:
        relay.first_delay = 0.0
        relay.release.set()
        parent.join(5.0)
    assert answer == repr([True, True, True, True, True, 0])
    assert answers == [list(values.values())]
    assert cache.stats()["errors"] == 0


# -- 4. a reply whole in one read does no deadline work -------------------------------------------

WHOLE: dict[str, Callable[[MemcachedCache], object]] = {
    "get": lambda cache: cache.get("w0"),
    "get_many": lambda cache: cache.get_many(*[f"w{i}" for i in range(20)]),
    "set": lambda cache: cache.set("w0", "v"),
    "set_many": lambda cache: cache.set_many({f"w{i}": "v" for i in range(20)}),
    "delete_many": lambda cache: cache.delete_many("w1", "w2", "absent"),
    "inc": lambda cache: cache.inc("w-n"),
    "has": lambda cache: cache.has("w0"),
}


@pytest.mark.parametrize("call", list(WHOLE))
@pytest.mark.parametrize("key_prefix", ["", "wh:"])
def test_a_reply_whole_in_one_read_does_no_deadline_work(
    relay: CuttingRelay,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    key_prefix: str,
) -> None:
    cache = MemcachedCache([f"127.0.0.1:{relay.port}"], key_prefix=key_prefix, timeout=2.0)
    other = MemcachedCache([f"127.0.0.1:{relay.port}"], timeout=2.0)
    many = [f"w{i}" for i in range(20)]
    assert cache.set_many(dict.fromkeys(many, "v")) == many
    # an entry of another socket left in LATE, and one of this cache's own socket: their last
    # replies came in two parts
    for made in (other, cache):
        relay.hold.set()
        relay.release.set()
        assert made.get_many(*many) == ["v"] * 20
    assert pooled_sockets([other]) <= open_late()
    assert pooled_sockets([cache]) <= open_late()
    relay.trickle = False
    readable, late, rest = (Counting(monkeypatch, n) for n in ("readable", "_late", "_rest"))
    for _ in range(5):
        WHOLE[call](cache)
    assert (readable.calls, late.calls, rest.calls) == (0, 0, 0)
    assert cache.stats()["errors"] == 0
