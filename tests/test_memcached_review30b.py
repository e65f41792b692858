"""MemcachedCache where the second review 30 found it wrong: ``inc`` on a memcached started
with ``-C`` (CAS disabled), a large ``get_many`` over a link slower than its size per timeout."""

from __future__ import annotations

import itertools
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from servers import MemcachedServer
from test_memcached import address
from test_memcached_leftovers import TricklingRelay

from cacheplug import MemcachedCache

THREADS = 8
ROUNDS = 25
BIG = 2**62 + 5  # stored through the serializer: memcached's incr refuses it
_names = itertools.count()
_Answer = TypeVar("_Answer")


@pytest.fixture(scope="module")
def cas_disabled() -> Iterator[MemcachedServer]:
    """A memcached started with ``-C``: no CAS ids, every compare-and-swap refused."""
    with MemcachedServer(extra_args=["-C"]) as server:
        yield server


def fresh_key() -> str:
    # never flush_all a -C server: without CAS ids it also drops what is written in the
    # rest of that second
    return f"k{next(_names)}"


def in_threads(work: Callable[[], _Answer], count: int = THREADS) -> list[_Answer]:
    """The answers of ``work`` run in ``count`` threads at once; raises if one never ends."""
    answers: list[_Answer] = []
    start = threading.Barrier(count)

    def run() -> None:
        start.wait()
        answers.append(work())

    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(8)  # a bound for a hang only: the calls take milliseconds
    assert not any(thread.is_alive() for thread in threads), "inc never returned"
    return answers


@pytest.mark.parametrize("key_prefix", ["", "p:"])
def test_inc_that_must_compare_and_swap_on_a_cas_disabled_server_refuses_instead_of_spinning(
    cas_disabled: MemcachedServer, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = MemcachedCache([address(cas_disabled)], key_prefix=key_prefix)
    big, counter = fresh_key(), fresh_key()
    assert cache.set(big, BIG)
    assert cache.inc(counter, 10) == 10
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        answers = in_threads(lambda: cache.inc(big, 1))
        large_delta = cache.inc(counter, 2**40)
    assert answers == [None] * THREADS  # never a lost update passed off as counted
    assert large_delta is None
    assert cache.get(big) == BIG
    assert cache.get(counter) == 10
    assert cache.stats()["errors"] == THREADS + 1
    assert "runs with CAS disabled (-C)" in caplog.text


def test_inc_on_a_cas_disabled_server_still_counts_counters_and_refuses_non_integers(
    cas_disabled: MemcachedServer,
) -> None:
    cache = MemcachedCache([address(cas_disabled)])
    counter, text = fresh_key(), fresh_key()
    assert cache.inc(counter, 0) == 0
    answers = in_threads(lambda: [cache.inc(counter, 1) for _ in range(ROUNDS)])
    assert cache.get(counter) == THREADS * ROUNDS  # memcached's own incr: atomic without CAS
    assert sorted(n for got in answers for n in got) == list(range(1, THREADS * ROUNDS + 1))
    assert cache.set(text, "seven")
    with pytest.raises(TypeError):
        cache.inc(text)  # read only, no write to check
    assert cache.get(text) == "seven"
    assert cache.stats()["errors"] == 0


def test_compare_and_swap_increments_lose_nothing_on_a_normal_server(
    memcached_server: MemcachedServer,
) -> None:
    cache = MemcachedCache([address(memcached_server)])
    big = fresh_key()
    assert cache.set(big, BIG)
    answers = in_threads(lambda: [cache.inc(big, 1) for _ in range(ROUNDS)])
    assert cache.get(big) == BIG + THREADS * ROUNDS
    counted = sorted(n for got in answers for n in got)
    assert counted == list(range(BIG + 1, BIG + THREADS * ROUNDS + 1))
    assert cache.inc(big, 2**40) == BIG + THREADS * ROUNDS + 2**40
    assert cache.stats()["errors"] == 0


class PacedRelay(TricklingRelay):
    """A relay that, once told to, passes replies 64 kB at a time with a pause before each: a
    steady link well above 1 MB per timeout (the rate a ``set_many`` batch needs), far below
    a large reply per timeout."""

    PAUSE = 0.004

    def _pass(self, client: socket.socket, data: bytes) -> None:
        if not self.trickle:
            client.sendall(data)
            return
        for start in range(0, len(data), 65536):
            if self.stopped.wait(self.PAUSE):
                return
            client.sendall(data[start : start + 65536])


def test_a_large_get_many_over_a_steady_slow_link_is_read_not_failed_as_a_timeout(
    memcached_server: MemcachedServer,
) -> None:
    relay = PacedRelay(memcached_server.address, 0.0)
    try:
        # 9 MB: some 140 pauses, at least 0.55 s, over the timeout (the fix allows 3.8 s)
        cache = MemcachedCache([f"127.0.0.1:{relay.port}"], key_prefix="slow:", timeout=0.4)
        values = {f"large{number}": bytes([number]) * 900_000 for number in range(10)}
        assert cache.set_many(values) == list(values)
        relay.trickle = True
        assert cache.get_many(*values) == list(values.values())
        assert cache.stats()["errors"] == 0
    finally:
        relay.stopped.set()
        relay.close()
