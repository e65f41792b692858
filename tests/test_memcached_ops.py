"""MemcachedCache in the situations operations teams meet: stalled servers, busy threads."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from servers import MemcachedServer
from test_memcached import address

from cacheplug import MemcachedCache


@pytest.fixture
def silent_server() -> Iterator[str]:
    """The address of a server that accepts connections in the kernel and never replies."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        host, port = silent.getsockname()
        yield f"{host}:{port}"


def timed_in_threads(call: Callable[[], object], threads: int) -> list[float]:
    """Seconds each of ``threads`` threads, started together, took for ``call()``."""
    start = threading.Barrier(threads)
    took: list[float] = []

    def run() -> None:
        start.wait()
        began = time.monotonic()
        call()
        took.append(time.monotonic() - began)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return took


# -- a server that stopped answering ---------------------------------------------------------------


def test_after_the_dead_time_one_call_tries_the_stalled_server_and_the_others_do_not_wait(
    silent_server: str, memcached_server: MemcachedServer
) -> None:
    """When a failed server's dead time ended, every thread asking it at that moment waited a
    full timeout (8 threads: 8 stalls per dead_timeout instead of 1)."""
    cache = MemcachedCache([address(memcached_server), silent_server], timeout=0.4)
    keys = [f"herd{i}" for i in range(20)]
    assert cache.get_many(*keys) == [None] * len(keys)  # the silent server fails, counts as dead
    silent = next(server for server in cache._servers if server.name == silent_server)
    assert silent.down_until > time.monotonic()
    silent.down_until = time.monotonic() - 0.001  # its dead time is over
    took = timed_in_threads(lambda: cache.get_many(*keys), threads=8)
    assert sum(seconds >= 0.3 for seconds in took) == 1, sorted(took)
    assert silent.down_until > time.monotonic()  # the one that tried found it still dead


def test_a_server_that_answers_again_is_used_again(
    memcached_server: MemcachedServer,
) -> None:
    cache = MemcachedCache([address(memcached_server)], timeout=0.4)
    server = cache._servers[0]
    server.down_until = time.monotonic() - 0.001  # failed earlier, dead time over
    took = timed_in_threads(lambda: cache.set("back", "v"), threads=4)
    assert max(took) < 0.3
    assert server.down_until == 0.0
    assert cache.get("back") == "v"
    assert cache.stats()["errors"] <= 3  # the threads that came while one tried it
