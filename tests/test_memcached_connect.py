"""A batch over several memcached servers connects to them at the same time: servers that drop
connection attempts cost it one ``connect_timeout`` in all, not one each."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from servers import MemcachedServer
from test_memcached import address
from test_memcached_multi import cacheplug_lines

from cacheplug import MemcachedCache
from cacheplug.core.url import host_port

CONNECT_TIMEOUT = 1.0
KEYS = [f"k{i}" for i in range(60)]  # enough that every server of three holds some


def silent_listener() -> tuple[socket.socket, socket.socket]:
    """A listener whose accept queue is full: the kernel drops further connection attempts, as
    a firewall or a host gone from the network does. Its listening socket and the filler."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # room for one connection, which the filler takes
    filler = socket.create_connection(listener.getsockname(), timeout=5)
    return listener, filler


@pytest.fixture
def dropping() -> Iterator[list[str]]:
    """Addresses of three servers that drop connection attempts."""
    made = [silent_listener() for _ in range(3)]
    yield [host_port(*listener.getsockname()) for listener, _ in made]
    for listener, filler in made:
        filler.close()
        listener.close()


def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return host_port(*probe.getsockname())


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    answer = call()
    return answer, time.monotonic() - start


BATCHES: dict[str, Callable[[MemcachedCache], Any]] = {
    "get_many": lambda cache: cache.get_many(*KEYS),
    "get_dict": lambda cache: cache.get_dict(*KEYS),
    "set_many": lambda cache: cache.set_many(dict.fromkeys(KEYS, "v")),
    "delete_many": lambda cache: cache.delete_many(*KEYS),
    "clear": lambda cache: cache.clear(),
}
OUTAGE: dict[str, Any] = {
    "get_many": [None] * len(KEYS),
    "get_dict": dict.fromkeys(KEYS),
    "set_many": [],
    "delete_many": [],
    "clear": False,
}


@pytest.mark.parametrize("prefix", ["", "app:"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_a_batch_waits_one_connect_timeout_however_many_servers_drop_connections(
    dropping: list[str], batch: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = MemcachedCache(
        dropping, connect_timeout=CONNECT_TIMEOUT, dead_timeout=60, key_prefix=prefix
    )
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        answer, took = timed(lambda: BATCHES[batch](cache))
    assert answer == OUTAGE[batch]
    # one after another, the three connects would take 3 s
    assert CONNECT_TIMEOUT * 0.9 < took < CONNECT_TIMEOUT * 2
    assert len(cacheplug_lines(caplog)) == 1  # one line (rate-limited) for the batch
    for server in cache._servers:  # each connect failed on its own, and was told apart
        assert server.failure == "TimeoutError: timed out"
        assert server.down_until > time.monotonic()
    # all three sit out their dead time: the next batch tries none of them
    _, took = timed(lambda: BATCHES[batch](cache))
    assert took < CONNECT_TIMEOUT / 2
    assert cache.stats()["errors"] >= 6


def test_a_healthy_server_answers_beside_servers_that_drop_connections(
    memcached_server: MemcachedServer, dropping: list[str]
) -> None:
    cache = MemcachedCache(
        [address(memcached_server), *dropping[:2]],
        connect_timeout=CONNECT_TIMEOUT,
        dead_timeout=60,
    )
    cache.delete_many(*KEYS)  # leftovers of other tests on the shared server
    stored, took = timed(lambda: cache.set_many({key: key.upper() for key in KEYS}))
    assert took < CONNECT_TIMEOUT * 2
    assert 0 < len(stored) < len(KEYS)  # the healthy server's share, and only that
    assert stored == [key for key in KEYS if key in stored]
    values = cache.get_many(*KEYS)
    assert values == [key.upper() if key in stored else None for key in KEYS]


def test_refused_and_unresolvable_servers_fail_alone_in_a_cold_batch(
    memcached_server: MemcachedServer, caplog: pytest.LogCaptureFixture
) -> None:
    refused = closed_port()
    unresolvable = "no-such-host.invalid:11211"
    cache = MemcachedCache(
        [refused, address(memcached_server), unresolvable], connect_timeout=CONNECT_TIMEOUT
    )
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        stored = cache.set_many(dict.fromkeys(KEYS, 1.5))
    assert 0 < len(stored) < len(KEYS)
    assert cache.get_dict(*KEYS) == {key: 1.5 if key in stored else None for key in KEYS}
    assert len(cacheplug_lines(caplog)) == 1
    failures = {server.name: server.failure for server in cache._servers}
    assert failures[refused].startswith("ConnectionRefusedError")
    assert failures[unresolvable].startswith("gaierror")
    assert failures[address(memcached_server)] == ""


def test_a_cold_batch_over_healthy_servers_starts_no_thread(
    memcached_server: MemcachedServer,
    fresh_memcached_server: MemcachedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[str] = []
    start = threading.Thread.start

    def counted(self: threading.Thread) -> None:
        started.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", counted)
    servers = [address(memcached_server), address(fresh_memcached_server)]
    cache = MemcachedCache(servers)
    assert cache.set_many({key: [key] for key in KEYS}) == KEYS
    assert cache.get_many(*KEYS) == [[key] for key in KEYS]
    assert started == []  # each connected at its first try, in the calling thread
    for server in cache._servers:
        assert len(server._idle) == 1  # one connection each, pooled again


def test_the_connecting_threads_are_gone_after_the_batch(
    memcached_server: MemcachedServer, dropping: list[str]
) -> None:
    before = set(threading.enumerate())
    cache = MemcachedCache([address(memcached_server), *dropping], connect_timeout=0.3)
    stored = cache.set_many({key: key for key in KEYS})
    assert 0 < len(stored) < len(KEYS)
    assert set(threading.enumerate()) <= before


def test_a_cold_batch_connects_in_turn_when_no_thread_can_start(
    memcached_server: MemcachedServer, dropping: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)  # as at exit, or out of threads
    cache = MemcachedCache([address(memcached_server), *dropping], connect_timeout=0.3)
    stored = cache.set_many({key: key for key in KEYS})
    assert 0 < len(stored) < len(KEYS)  # the healthy server's share
    assert cache.get_dict(*KEYS) == {key: key if key in stored else None for key in KEYS}
    assert all(server.failure == "TimeoutError: timed out" for server in cache._servers[1:])


def test_a_cold_batch_at_interpreter_exit_answers(
    memcached_server: MemcachedServer, dropping: list[str]
) -> None:
    # at exit Python 3.12 starts no thread: the servers still unanswered connect in turn
    servers = [address(memcached_server), *dropping]
    script = f"""
import atexit
from cacheplug import MemcachedCache

cache = MemcachedCache({servers!r}, connect_timeout=0.3)

@atexit.register
def flush() -> None:
    keys = [f"exit{{i}}" for i in range(60)]
    stored = cache.set_many(dict.fromkeys(keys, 1))
    print(0 < len(stored) < 60, cache.get_many(*stored) == [1] * len(stored))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (0, "True True\n")
    # only the outage's log line (Python's last-resort handler): no traceback
    assert done.stderr.startswith("MemcachedCache.set_many failed"), done.stderr
    assert "Traceback" not in done.stderr
