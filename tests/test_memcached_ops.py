"""MemcachedCache in the situations operations teams meet: stalled servers, busy threads."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from servers import MemcachedServer
from test_memcached import address
from waiting import wait_until

from cacheplug import BaseCache, ConfigurationError, MemcachedCache, from_url


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


class Hung(Exception):
    """A call still waited long after its timeout."""


@pytest.fixture
def ticking_signal() -> Iterator[None]:
    """A signal every 20 ms with a handler that returns (a profiler, a SIGCHLD handler), and
    ``Hung`` raised in a call still running 5 s later, so a hang fails instead of blocking."""

    def hung(signum: int, frame: object) -> None:
        raise Hung

    previous = (
        signal.signal(signal.SIGALRM, lambda signum, frame: None),
        signal.getsignal(signal.SIGUSR1),
    )
    signal.signal(signal.SIGUSR1, hung)
    signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
    guard = threading.Timer(5, os.kill, (os.getpid(), signal.SIGUSR1))
    guard.start()
    try:
        yield
    finally:
        guard.cancel()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous[0])
        signal.signal(signal.SIGUSR1, previous[1])


@pytest.mark.parametrize("prefix", [None, "app:"])
def test_a_stalled_server_fails_within_the_timeout_while_signals_arrive(
    silent_server: str, ticking_signal: None, prefix: str | None
) -> None:
    """With kernel socket timeouts, each signal restarted the wait (Python retries a read a
    signal interrupted): a signal more often than the timeout made every call hang forever."""
    cache = MemcachedCache([silent_server], timeout=0.2, dead_timeout=0, key_prefix=prefix)
    for call in (
        lambda: cache.get("k"),
        lambda: cache.set("k", "v"),
        lambda: cache.inc("n"),
        lambda: cache.get_many("k", "j"),
    ):
        began = time.monotonic()
        assert call() in (None, False, [None, None])
        assert time.monotonic() - began < 1.5


def test_a_large_value_to_a_stalled_server_fails_within_the_timeout(silent_server: str) -> None:
    """A write of several MB waited one timeout per partial send: 3.5 timeouts for 8 MB."""
    cache = MemcachedCache([silent_server], timeout=0.25, dead_timeout=0)
    for value in (b"x" * (8 << 20), {"a": b"y" * (4 << 20), "b": b"z" * (4 << 20)}):
        began = time.monotonic()
        if isinstance(value, bytes):
            assert cache.set("big", value) is False
        else:
            assert cache.set_many(value) == []
        assert time.monotonic() - began < 0.6


# -- addresses: unix sockets, IPv6, names that do not resolve --------------------------------------


@pytest.fixture(scope="module")
def unix_socket() -> Iterator[str]:
    """The path of a memcached listening on a unix socket only."""
    directory = Path(tempfile.mkdtemp(prefix="cacheplug-mc-"))
    path = str(directory / "memcached.sock")
    user = ["-u", "root"] if os.geteuid() == 0 else []
    process = subprocess.Popen(["memcached", "-s", path, "-U", "0", *user])
    try:
        wait_until(lambda: answers(path))
        yield path
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def answers(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(path)
            sock.sendall(b"version\r\n")
            return sock.recv(100).startswith(b"VERSION ")
    except OSError:
        return False


def works(cache: BaseCache) -> None:
    cache.clear()
    assert cache.set("a", "v") is True
    assert cache.inc("n") == 1
    assert cache.get_many("a", "n", "missing") == ["v", 1, None]
    assert cache.has("a") is True
    assert cache.delete("a") is True


def fails_as_an_outage(cache: MemcachedCache) -> None:
    began = time.monotonic()
    assert cache.set("a", "v") is False
    assert cache.get("a") is None
    assert cache.inc("n") is None
    assert cache.get_many("a", "b") == [None, None]
    assert cache.clear() is False
    assert time.monotonic() - began < 0.5
    assert cache.stats()["errors"] == 5


@pytest.mark.parametrize("form", ["path", "unix:path"])
def test_a_unix_socket_server(unix_socket: str, form: str) -> None:
    works(MemcachedCache([form.replace("path", unix_socket)], key_prefix="app:"))
    works(MemcachedCache(form.replace("path", unix_socket)))


def test_a_unix_socket_path_in_a_url(unix_socket: str) -> None:
    """A percent-encoded socket path as the URL's host was sent to DNS as a host name with port
    11211, so the cache never reached the server."""
    cache = from_url(f"memcached://{quote(unix_socket, safe='')}?key_prefix=app:")
    assert unix_socket in repr(cache) and "11211" not in repr(cache)
    works(cache)
    with pytest.raises(ConfigurationError, match="unix socket path takes no port"):
        from_url(f"memcached://{quote(unix_socket, safe='')}:11211")


def test_a_unix_socket_that_does_not_exist() -> None:
    fails_as_an_outage(MemcachedCache(["/nonexistent/memcached.sock"]))


def test_a_host_name_that_does_not_resolve() -> None:
    fails_as_an_outage(MemcachedCache(["no-such-host.invalid:11211"]))


def test_an_ipv6_server() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with MemcachedServer(extra_args=["-l", "::1"]) as server:
        works(MemcachedCache([f"[::1]:{server.port}"]))
        works(MemcachedCache([("::1", server.port)], key_prefix="app:"))
        works(from_url(f"memcached://[::1]:{server.port}"))


def test_values_larger_than_the_socket_buffer_arrive_whole() -> None:
    """A request the first write cannot take at once is finished by sendall, byte for byte."""
    with MemcachedServer(extra_args=["-I", "32m"]) as server:
        cache = MemcachedCache([f"{server.host}:{server.port}"], timeout=5)
        value = os.urandom(12 << 20)
        assert cache.set("big", value) is True
        assert cache.get("big") == value
        assert cache.set_many({"a": value[: 5 << 20], "b": value[5 << 20 :]}) == ["a", "b"]
        assert b"".join(cache.get_many("a", "b")) == value
        assert cache.add("big", b"other") is False
        assert cache.get("big") == value


def test_a_cache_dropped_without_close_closes_its_sockets_and_is_freed(
    memcached_server: MemcachedServer,
) -> None:
    # apps that never close their cache (Flask-Caching, app factories in test suites) must not
    # leave pooled sockets behind for the garbage collector to warn about
    gc.collect()
    cache = MemcachedCache([memcached_server.url.removeprefix("memcached://")], max_pool_size=4)
    threads = [threading.Thread(target=cache.set_many, args=({"a": 1, "b": 2},)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.get_many("a", "b") == [1, 2]
    alive = weakref.ref(cache)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        del cache
        gc.collect()
    assert alive() is None
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
