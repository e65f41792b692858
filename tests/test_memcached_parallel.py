"""MemcachedCache's batch calls over several real servers: every server gets its request before
the batch waits on any reply, so servers that hang cost one timeout together, not one each; an
interrupted batch pools none of its connections, and hung servers are counted, logged once and
skipped for their dead time."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
import test_memcached_multi as multi
from servers import MemcachedServer
from test_memcached import Deadline, accepted_connections, address
from test_memcached_multi import KEYS, PREFIXES, cacheplug_lines, owners, three, unread_bytes
from waiting import paused_process, wait_until

from cacheplug import MemcachedCache

__all__ = ["three"]  # the fixture, imported for pytest

BATCHES: dict[str, Callable[[MemcachedCache], Any]] = {
    "get_dict": lambda cache: cache.get_dict(*KEYS),
    **multi.BATCHES,  # get_many, set_many (value 2) and delete_many of KEYS, in this order
    "clear": lambda cache: cache.clear(),
}
#: What each batch answers when every server holds every key (value 1) and answers.
ANSWERS: dict[str, Any] = {
    "get_many": [1] * len(KEYS),
    "get_dict": dict.fromkeys(KEYS, 1),
    "set_many": KEYS,
    "delete_many": KEYS,
    "clear": True,
}


@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("key_prefix", PREFIXES)
def test_a_batch_sends_to_every_server_before_it_waits_on_any(
    three: list[MemcachedServer], key_prefix: str, batch: str
) -> None:
    cache = MemcachedCache([address(s) for s in three], key_prefix=key_prefix, timeout=10)
    assert cache.set_many(dict.fromkeys(KEYS, 1)) == KEYS  # every namespace token known
    hung = three[:2]
    answers: list[Any] = []
    worker = threading.Thread(target=lambda: answers.append(BATCHES[batch](cache)), daemon=True)
    try:
        with contextlib.ExitStack() as paused:
            for server in hung:
                assert server.pid is not None
                paused.enter_context(paused_process(server.pid))
            worker.start()
            # one after another, the second paused server got nothing while the batch
            # waited on the first
            wait_until(lambda: all(unread_bytes(server.port) for server in hung), timeout=3)
    finally:
        if worker.ident is not None:
            worker.join(timeout=15)
    assert not worker.is_alive()
    assert answers == [ANSWERS[batch]]  # both answered once resumed, within the timeout
    assert cache.stats()["errors"] == 0


@pytest.mark.parametrize("key_prefix", PREFIXES)
def test_two_servers_that_never_answer_fail_their_keys_are_logged_once_then_skipped(
    three: list[MemcachedServer], caplog: pytest.LogCaptureFixture, key_prefix: str
) -> None:
    with socket.socket() as first, socket.socket() as second:  # accept, never reply
        silent = [first, second]
        for listener in silent:
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
        names = [address(three[0])] + [
            "{}:{}".format(*listener.getsockname()) for listener in silent
        ]
        cache = MemcachedCache(names, key_prefix=key_prefix, timeout=0.2, dead_timeout=30)
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            stored = cache.set_many(dict.fromkeys(KEYS, 1))  # meets both
            assert 0 < len(stored) < len(KEYS)
            assert cache.stats()["errors"] == 2  # one per hung server
            before = cache.stats()
            held = [1 if key in stored else None for key in KEYS]
            assert cache.get_many(*KEYS) == held
            after = cache.stats()
            assert after["hits"] - before["hits"] == len(stored)
            assert after["misses"] == before["misses"]  # the rest are errors, not misses
            assert after["errors"] > before["errors"]
            # each batch skips both for their dead time (delete_many runs after set_many)
            answers = {name: batch(cache) for name, batch in BATCHES.items()}
        assert answers == {
            "get_many": held,
            "get_dict": dict(zip(KEYS, held, strict=True)),
            "set_many": stored,
            "delete_many": stored,
            "clear": False,
        }
        (line,) = cacheplug_lines(caplog)  # the first failure's: the rest rate-limited
        assert "timed out" in line
        for listener in silent:
            listener.setblocking(False)
        # only the first call tried each
        assert [len(accepted_connections(listener)) for listener in silent] == [1, 1]


@pytest.mark.parametrize("key_prefix", PREFIXES)
def test_a_batch_interrupted_while_a_server_hangs_pools_none_of_its_connections(
    three: list[MemcachedServer], key_prefix: str
) -> None:
    """The other servers' replies may wait unread when the interruption lands: their
    connections are closed too, or the next batch would read those old values."""
    servers = [address(s) for s in three]
    hung = three[0]
    # a prefixed key is placed as a plain one named prefix + key: the hung server's key first
    plain = MemcachedCache(servers)
    assert plain.set_many({key_prefix + key: 0 for key in KEYS}) == [key_prefix + k for k in KEYS]
    where = owners(three, [key_prefix + key for key in KEYS])
    keys = sorted(KEYS, key=lambda key: where[key_prefix + key] != hung.port)
    assert where[key_prefix + keys[0]] == hung.port != where[key_prefix + keys[-1]]
    cache = MemcachedCache(servers, key_prefix=key_prefix, timeout=5)
    writer = MemcachedCache(servers, key_prefix=key_prefix)
    assert writer.set_many(dict.fromkeys(keys, "old")) == keys
    assert cache.get_many(*keys) == ["old"] * len(keys)  # a pooled connection per server

    def expire(signum: int, frame: Any) -> None:
        raise Deadline

    previous = signal.signal(signal.SIGALRM, expire)
    assert hung.pid is not None
    try:
        with paused_process(hung.pid):
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(Deadline):
                cache.get_many(*keys)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert writer.set_many(dict.fromkeys(keys, "new")) == keys
    assert cache.get_many(*keys) == ["new"] * len(keys)
    assert cache.stats()["errors"] == 0
