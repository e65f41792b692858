"""Session 20 review of the memcached batch that connects to several servers at once
(``connect_all``, 363debc): many threads over healthy and dropping servers with small pools,
calls cut short while connections are being made, a fork meanwhile, reconnections after a
server restart, a unix socket server beside TCP ones."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FORKS_BESIDE_A_THREAD
from servers import MemcachedServer
from test_fork_leftovers import fork_and_ask
from test_hostile_options import HungError, bounded
from test_memcached import address
from test_memcached_connect import silent_listener
from waiting import wait_until

from cacheplug import MemcachedCache
from cacheplug.core.url import host_port

KEYS = [f"k{i}" for i in range(60)]


@pytest.fixture
def dropping() -> Iterator[list[tuple[socket.socket, str]]]:
    """Two servers that drop connection attempts: each listener and its address."""
    made = [silent_listener() for _ in range(2)]
    yield [(listener, host_port(*listener.getsockname())) for listener, _ in made]
    for listener, filler in made:
        filler.close()
        listener.close()


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the directory's own descriptor, gone meanwhile
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def connecting() -> list[threading.Thread]:
    # not is_alive(): on Python 3.11 a join cut short by an exception marks a thread stopped
    return [thread for thread in threading.enumerate() if thread.name == "cacheplug-connect"]


def first_on(cache: MemcachedCache, name: str, keys: list[str]) -> list[str]:
    """``keys`` ordered so that the batch's first server (the one the calling thread connects
    to) is the server called ``name``."""
    return sorted(keys, key=lambda key: cache._ring(key).name != name)


def own_keys(cache: MemcachedCache, names: set[str], count: int, tag: str) -> list[str]:
    """``count`` keys held by the servers called ``names``."""
    keys = (f"{tag}{i}" for i in range(100_000))
    return [key for key in keys if cache._ring(key).name in names][:count]


# -- 1. many threads, cold batches, healthy and dropping servers, small pools -----------------


def test_threads_doing_cold_batches_over_healthy_and_dropping_servers(
    memcached_server: MemcachedServer,
    fresh_memcached_server: MemcachedServer,
    dropping: list[tuple[socket.socket, str]],
) -> None:
    healthy = [address(memcached_server), address(fresh_memcached_server)]
    down = [name for _, name in dropping]
    threads, rounds = 12, 8
    gc.collect()  # sockets other tests left to the collector must not close during this one
    before = open_sockets()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        cache = MemcachedCache(
            [healthy[0], down[0], healthy[1], down[1]],
            connect_timeout=0.3,
            timeout=10,  # a loaded machine: no reply timeout on the healthy servers
            dead_timeout=0.05,  # the dropping servers are tried again, and again
            max_pool_size=2,
            key_prefix="s20:",
        )
        errors: list[BaseException] = []
        wrong: list[tuple[int, int, str]] = []
        start = threading.Barrier(threads)

        def work(number: int) -> None:
            try:
                keys = [f"t{number}-{key}" for key in KEYS]
                on_healthy = {key for key in keys if cache._ring("s20:" + key).name in healthy}
                start.wait(30)
                for round_ in range(rounds):
                    values = {key: (number, round_, key) for key in keys}
                    stored = cache.set_many(values)
                    if set(stored) != on_healthy:
                        wrong.append((number, round_, "set_many"))
                    expected = [values[key] if key in on_healthy else None for key in keys]
                    if cache.get_many(*keys) != expected:
                        wrong.append((number, round_, "get_many"))
                    if cache.get_dict(*keys) != dict(zip(keys, expected, strict=True)):
                        wrong.append((number, round_, "get_dict"))
                    cache.delete_many(*keys)
                    if cache.get_many(*keys) != [None] * len(keys):
                        wrong.append((number, round_, "deleted"))
            except BaseException as err:
                errors.append(err)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert not any(worker.is_alive() for worker in workers)
        assert errors == []
        assert wrong == []
        wait_until(lambda: not connecting(), timeout=30)
        for server in cache._servers:
            assert len(server._idle) <= 2
            if server.name in down:
                assert server.failure == "TimeoutError: timed out"
            else:
                assert server.failure == ""
                assert server.down_until == 0.0
        cache.close()
        gc.collect()
        assert open_sockets() == before
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


# -- 2. a batch cut short while it connects ----------------------------------------------------


def test_a_connect_finishing_after_the_batch_was_cut_short_closes_its_socket(
    memcached_server: MemcachedServer, dropping: list[tuple[socket.socket, str]]
) -> None:
    listener, down = dropping[0]
    healthy = address(memcached_server)
    cache = MemcachedCache([healthy, down], connect_timeout=10, dead_timeout=60)
    keys = first_on(cache, healthy, KEYS)  # the calling thread connects fast, then joins
    gc.collect()  # sockets other tests left to the collector must not close during this one
    before = open_sockets()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(HungError), bounded(0.3):
            cache.get_many(*keys)
        # room in the full accept queue: the helper's next SYN gets in, its connect succeeds
        accepted, _ = listener.accept()
        wait_until(lambda: not connecting(), timeout=30)  # the kernel retries SYNs after 1s, 3s
        # nothing went back to a pool, and no client kept the socket the helper opened
        assert [len(server._idle) for server in cache._servers] == [0, 0]
        assert [client.sock for server in cache._servers for client in server._clients] == [
            None
        ] * sum(len(server._clients) for server in cache._servers)
        opened = open_sockets()
        gc.collect()
        with accepted:
            assert opened == before + 1  # the accepted end only
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
    listener.close()  # the next call is refused there at once
    on_healthy = [key for key in keys if cache._ring(key).name == healthy]
    assert cache.set_many(dict.fromkeys(keys, 1)) == on_healthy
    cache.close()


@pytest.mark.parametrize("where", ["join", "own connect"])
def test_a_batch_cut_short_while_connecting_raises_pools_nothing_and_recovers(
    memcached_server: MemcachedServer,
    dropping: list[tuple[socket.socket, str]],
    where: str,
) -> None:
    _, down = dropping[0]
    healthy = address(memcached_server)
    cache = MemcachedCache([healthy, down], connect_timeout=1.0, dead_timeout=60)
    keys = first_on(cache, healthy if where == "join" else down, KEYS)
    on_healthy = [key for key in keys if cache._ring(key).name == healthy]
    cache.set_many(dict.fromkeys(on_healthy, "v"))  # the dropping server is now down
    cache._servers[1].down_until = 0.0  # and tried again: the next batch connects to both
    for server in cache._servers:
        server.discard_idle()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(HungError), bounded(0.2):
            cache.get_many(*keys)
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
    assert [len(server._idle) for server in cache._servers] == [0, 0]
    assert cache._servers[1].down_until == 0.0  # not marked down by the cut-short call
    wait_until(lambda: not connecting(), timeout=30)
    got = cache.get_many(*keys)  # the dropping server fails alone again
    assert got == ["v" if key in on_healthy else None for key in keys]
    assert cache._servers[1].failure == "TimeoutError: timed out"
    assert [client.sock is not None for client in cache._servers[0]._idle] == [True]
    cache.close()


# -- 3. a fork while connecting threads run ----------------------------------------------------


@FORKS_BESIDE_A_THREAD
def test_a_child_forked_while_a_batch_connects_answers(
    memcached_server: MemcachedServer,
    fresh_memcached_server: MemcachedServer,
    dropping: list[tuple[socket.socket, str]],
) -> None:
    healthy = [address(memcached_server), address(fresh_memcached_server)]
    _, down = dropping[0]
    cache = MemcachedCache([*healthy, down], connect_timeout=5.0, dead_timeout=60)
    mine = own_keys(cache, set(healthy), 30, "fork")
    assert {cache._ring(key).name for key in mine} == set(healthy)
    cache.set_many({key: key.upper() for key in mine})
    for server in cache._servers:
        server.discard_idle()
    batch = first_on(cache, down, [*mine, *own_keys(cache, {down}, 5, "fork-down")])
    answers: list[Any] = []
    parent = threading.Thread(target=lambda: answers.append(cache.get_many(*batch)))
    parent.start()
    # both healthy servers connected by helpers; the caller still connects to the dropping one
    wait_until(
        lambda: (
            not connecting()
            and all(
                any(client.sock is not None for client in server._clients)
                for server in cache._servers[:2]
            )
        ),
        timeout=10,
    )
    assert parent.is_alive()
    answer = fork_and_ask(lambda: cache.get_many(*mine), threading.Event())
    assert answer == repr([key.upper() for key in mine])
    parent.join(30)
    assert answers == [[key.upper() if key in mine else None for key in batch]]
    cache.close()


@FORKS_BESIDE_A_THREAD
def test_a_child_forked_while_helper_threads_connect_answers(
    memcached_server: MemcachedServer,
    fresh_memcached_server: MemcachedServer,
    dropping: list[tuple[socket.socket, str]],
) -> None:
    healthy = [address(memcached_server), address(fresh_memcached_server)]
    downs = [name for _, name in dropping]
    cache = MemcachedCache([*healthy, *downs], connect_timeout=3.0, dead_timeout=60)
    mine = own_keys(cache, set(healthy), 30, "forkh")
    cache.set_many({key: key for key in mine})
    for server in cache._servers:
        server.discard_idle()
    batch = first_on(cache, healthy[0], [*mine, *own_keys(cache, set(downs), 8, "forkh-down")])
    answers: list[Any] = []
    parent = threading.Thread(target=lambda: answers.append(cache.get_many(*batch)))
    parent.start()
    # the dropping servers' helpers wait on their connects: fork from this thread meanwhile
    wait_until(lambda: bool(connecting() or answers), timeout=10)
    answer = fork_and_ask(lambda: cache.get_many(*mine), threading.Event())
    assert answer == repr(mine)
    parent.join(30)
    assert answers == [[key if key in mine else None for key in batch]]
    cache.close()


# -- 4. reconnects -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "app:"])
def test_batches_after_both_servers_restart_answer_right(
    memcached_server: MemcachedServer, fresh_memcached_server: MemcachedServer, prefix: str
) -> None:
    with MemcachedServer() as other:
        servers = [address(fresh_memcached_server), address(other)]
        cache = MemcachedCache(servers, key_prefix=prefix, dead_timeout=60)

        def restart() -> None:  # every pooled connection closed by the servers
            for server in (fresh_memcached_server, other):
                server.kill()  # a crash: no graceful second
                server.restart()

        for round_ in range(2):
            values = {key: (round_, key) for key in KEYS}
            if round_:
                restart()
            assert cache.set_many(values) == KEYS  # resent on new connections
            assert cache.get_many(*KEYS) == list(values.values())
            assert cache.delete_many(*KEYS) == KEYS
            assert cache.set_many(values) == KEYS
            restart()
            # sent once: the idle check closes both, then they connect at the same time
            assert cache.delete_many(*KEYS) == []  # the servers restarted empty
            assert cache.set_many(values) == KEYS
            restart()
            assert cache.get_many(*KEYS) == [None] * len(KEYS)  # resent on new connections
            assert cache.set_many(values) == KEYS
            restart()
            assert cache.clear()
            assert cache.get_dict(*KEYS) == dict.fromkeys(KEYS)
            assert cache.stats()["errors"] == 0
            for server in cache._servers:
                assert server.failure == ""
                assert all(client.sock is not None for client in server._idle)
        cache.close()


# -- 5. a unix socket server beside TCP ones ------------------------------------------------


@pytest.fixture
def unix_memcached(tmp_path: Path) -> Iterator[str]:
    """A memcached server on a unix socket only: its path."""
    path = str(tmp_path / "memcached.sock")
    args = ["memcached", "-s", path, "-m", "16"]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    process = subprocess.Popen(args)
    try:
        wait_until(lambda: os.path.exists(path), timeout=20)
        yield path
    finally:
        process.kill()
        process.wait(20)


def test_a_unix_socket_server_beside_tcp_ones_in_a_cold_batch(
    memcached_server: MemcachedServer,
    unix_memcached: str,
    dropping: list[tuple[socket.socket, str]],
) -> None:
    _, down = dropping[0]
    names = [address(memcached_server), unix_memcached, down]
    cache = MemcachedCache(names, connect_timeout=0.5, dead_timeout=60)
    for first in names:
        for server in cache._servers:
            server.discard_idle()
            server.down_until = 0.0
        keys = first_on(cache, first, [f"u-{first}-{key}" for key in KEYS])
        up = [key for key in keys if cache._ring(key).name != down]
        assert {cache._ring(key).name for key in up} == set(names[:2])
        assert cache.set_many(dict.fromkeys(keys, first)) == up
        for server in cache._servers:
            server.discard_idle()
        assert cache.get_many(*keys) == [first if key in up else None for key in keys]
        assert cache._servers[2].failure == "TimeoutError: timed out"
    cache.close()


def test_a_deadline_in_the_callers_own_connect_is_raised_at_once(
    dropping: list[tuple[socket.socket, str]],
) -> None:
    (first, down), (second, other) = dropping
    cache = MemcachedCache([down, other], connect_timeout=3, dead_timeout=60)
    keys = first_on(cache, down, KEYS)
    still_connecting: list[list[threading.Thread]] = []
    try:
        with pytest.raises(HungError), bounded(0.3):
            try:
                cache.get_many(*keys)
            finally:
                still_connecting.append(connecting())
    finally:
        first.close()  # the next SYN the kernel retries is refused: the helper ends
        second.close()
        wait_until(lambda: not connecting(), timeout=30)
    assert still_connecting[0]  # raised while the helper still waited for its connect
    assert [server.failure for server in cache._servers] == ["", ""]
    assert [len(server._idle) for server in cache._servers] == [0, 0]
