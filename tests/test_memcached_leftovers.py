"""MemcachedCache leftovers of session 18: a prefixed batch write on one server as one plain call,
a reply that trickles in after its first bytes, and why a skipped server failed in the log."""

from __future__ import annotations

import inspect
import logging
import select
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest
from servers import MemcachedServer
from test_memcached import address
from test_memcached_faults import ReplyDroppingProxy
from test_memcached_multi import cacheplug_lines

import cacheplug
from cacheplug import MemcachedCache

CACHEPLUG_DIR = cacheplug.__file__.rpartition("/")[0]


# -- a prefixed set_many / delete_many on one server is one plain call ----------------------------


def steps_run(call: Callable[[], object]) -> list[str]:
    """The cacheplug generator functions (the pipelined path's steps) that ``call`` runs."""
    seen: list[str] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        code = frame.f_code
        if (
            event == "call"
            and code.co_flags & inspect.CO_GENERATOR
            and code.co_name != "<genexpr>"
            and code.co_filename.startswith(CACHEPLUG_DIR)
        ):
            seen.append(code.co_qualname)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return seen


@pytest.mark.parametrize("batch", ["set_many", "delete_many"])
def test_a_prefixed_batch_write_on_one_server_is_one_plain_call(
    memcached_server: MemcachedServer, batch: str
) -> None:
    cache = MemcachedCache([address(memcached_server)], key_prefix="leftovers:")
    keys = [f"k{i}" for i in range(10)]
    assert cache.set_many(dict.fromkeys(keys, "v")) == keys  # the namespace token is known
    write: Callable[[], object] = (
        (lambda: cache.set_many(dict.fromkeys(keys, "w")))
        if batch == "set_many"
        else (lambda: cache.delete_many(*keys))
    )
    answers: list[object] = []
    assert steps_run(lambda: answers.append(write())) == []
    assert answers == [keys]
    assert cache.get_many(*keys) == (["w"] * 10 if batch == "set_many" else [None] * 10)
    assert cache.stats()["errors"] == 0


# -- a reply that trickles in ---------------------------------------------------------------------


class TricklingRelay(ReplyDroppingProxy):
    """A TCP relay to a memcached server that, once told to, passes each reply's first bytes at
    once and the rest one byte every ``interval`` seconds: a server (or path) that keeps the
    connection alive but stalls mid-reply."""

    def __init__(self, target: tuple[str, int], interval: float) -> None:
        self._interval = interval
        self.trickle = False
        self.stopped = threading.Event()  # the rest of each reply is never sent
        super().__init__(target)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        with client, upstream:
            while not self.stopped.is_set():
                ready, _, _ = select.select([client, upstream], [], [], 0.5)
                try:
                    if client in ready:
                        data = client.recv(65536)
                        if not data:
                            return
                        upstream.sendall(data)
                    if upstream in ready:
                        data = upstream.recv(65536)
                        if not data:
                            return
                        self._pass(client, data)
                except OSError:  # the cache closed its side mid-reply
                    return

    def _pass(self, client: socket.socket, data: bytes) -> None:
        if not self.trickle:
            client.sendall(data)
            return
        half = len(data) // 2
        client.sendall(data[:half])
        for byte in data[half:]:
            if self.stopped.wait(self._interval):
                return
            client.sendall(bytes([byte]))


TIMEOUT = 0.5
INTERVAL = 0.02  # far within TIMEOUT: each byte alone comes in time, the reply as a whole not
#: Calls whose second half of a reply (a 200-byte value, 30 STORED lines; under a key_prefix
#: also the namespace token) takes over four timeouts to trickle in.
TRICKLED: dict[str, Callable[[MemcachedCache], object]] = {
    "get": lambda cache: cache.get("slow"),
    "set_many": lambda cache: cache.set_many({f"w{i}": 1 for i in range(30)}),
}
#: The outage answer of each.
OUTAGE: dict[str, object] = {"get": None, "set_many": []}


@pytest.fixture
def relay(memcached_server: MemcachedServer) -> Iterator[TricklingRelay]:
    made = TricklingRelay(memcached_server.address, INTERVAL)
    yield made
    made.stopped.set()
    made.close()


@pytest.mark.parametrize("call", list(TRICKLED))
@pytest.mark.parametrize("key_prefix", ["", "t:"])
def test_a_reply_that_trickles_in_fails_the_call_as_a_timeout(
    relay: TricklingRelay, caplog: pytest.LogCaptureFixture, call: str, key_prefix: str
) -> None:
    cache = MemcachedCache(
        [f"127.0.0.1:{relay.port}"], key_prefix=key_prefix, timeout=TIMEOUT, dead_timeout=0
    )
    assert cache.set("slow", "x" * 200) is True  # connected, the namespace token known
    relay.trickle = True
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        answer = TRICKLED[call](cache)
    relay.stopped.set()
    assert answer == OUTAGE[call]
    assert cache.stats()["errors"] == 1
    (line,) = cacheplug_lines(caplog)
    assert "timed out" in line


# -- the log says why a skipped server failed ----------------------------------------------------


@pytest.fixture
def silent() -> Iterator[socket.socket]:
    """A listener that accepts connections and never replies: a hung server."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener


def refused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed: nothing listens there


@pytest.mark.parametrize("failure", ["timed out", "Connection refused"])
@pytest.mark.parametrize("batch", [False, True], ids=["get", "get_many"])
def test_a_skipped_server_is_logged_with_the_error_it_failed_with(
    memcached_server: MemcachedServer,
    silent: socket.socket,
    caplog: pytest.LogCaptureFixture,
    failure: str,
    batch: bool,
) -> None:
    host, port = silent.getsockname() if failure == "timed out" else ("127.0.0.1", refused_port())
    failing = f"{host}:{port}"
    # with get_many, a live server too: the batch goes through the pipelined path
    names = [failing, address(memcached_server)] if batch else [failing]
    cache = MemcachedCache(names, timeout=0.2, connect_timeout=0.2, dead_timeout=60)
    keys = [f"key{i}" for i in range(30)]  # some on each server
    call: Callable[[], Any] = (lambda: cache.get_many(*keys)) if batch else (lambda: cache.get("a"))
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        call()  # fails, marks the server down: logged
        cache._last_logged["backend"] -= 61  # a minute later, the next line is logged
        call()  # within the dead time: skips it
    first, skipped = cacheplug_lines(caplog)
    assert failure.lower() in first.lower()
    assert "failed recently" in skipped
    assert failing in skipped
    assert failure.lower() in skipped.lower()
