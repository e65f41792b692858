"""Fault injection: memcached killed under a running workload; connections reset mid-command."""

from __future__ import annotations

import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from servers import MemcachedServer
from test_memcached import server_stat
from waiting import wait_until

from cacheplug import MemcachedCache

MAX_OPS = 200_000  # the workload stops by itself even if the test never tells it to


@dataclass
class Workload:
    """One thread running a bounded mix of operations and checking every answer."""

    cache: MemcachedCache
    ops: int = 0
    failures: int = 0
    streak: int = 0  # iterations in a row that succeeded; k0..k49 span every server
    violations: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        cache, stored, counter = self.cache, {}, 0
        try:
            for i in range(MAX_OPS):
                if self.stop.is_set():
                    return
                key = f"k{i % 50}"
                ok = cache.set(key, i)
                self.check(type(ok) is bool, f"set -> {ok!r}")
                stored[key] = i if ok else None
                got = cache.get(key)
                self.check(got in (None, stored[key]), f"get -> {got!r}, stored {stored[key]!r}")
                count = cache.inc("counter")
                self.check(count is None or count in (1, counter + 1), f"inc -> {count!r}")
                counter = count if count is not None else counter
                many = cache.get_many(key, "absent")
                self.check(len(many) == 2 and many[1] is None, f"get_many -> {many!r}")
                deleted = cache.delete_many("absent")
                self.check(deleted == [], f"delete_many -> {deleted!r}")
                if ok and got == i:
                    self.streak += 1
                else:
                    self.failures += 1
                    self.streak = 0
                self.ops += 1
        except BaseException as err:  # reported by the test, not lost in the thread
            self.errors.append(err)

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.violations.append(message)


def run_through_a_kill(cache: MemcachedCache, victim: MemcachedServer) -> Workload:
    workload = Workload(cache)
    thread = threading.Thread(target=workload.run)
    thread.start()
    try:
        wait_until(lambda: workload.ops >= 100 or not thread.is_alive())
        victim.kill()
        seen = workload.failures
        wait_until(lambda: workload.failures >= seen + 20 or not thread.is_alive())
        victim.restart()
        wait_until(lambda: workload.streak >= 100 or not thread.is_alive())
    finally:
        workload.stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert workload.errors == []  # nothing reached the caller
    assert workload.violations == []  # every answer was a contract value
    assert workload.failures >= 20  # the outage was seen
    assert workload.streak >= 100  # and every key works again
    return workload


@pytest.mark.parametrize("key_prefix", ["", "app:"])
def test_kill_mid_workload_then_full_recovery(
    fresh_memcached_server: MemcachedServer, key_prefix: str
) -> None:
    cache = MemcachedCache(
        [f"{fresh_memcached_server.host}:{fresh_memcached_server.port}"],
        key_prefix=key_prefix,
        dead_timeout=0.2,
    )
    run_through_a_kill(cache, fresh_memcached_server)
    assert_fully_working(cache)


def test_kill_one_of_two_servers_mid_workload(
    fresh_memcached_server: MemcachedServer, memcached_server: MemcachedServer
) -> None:
    servers = [fresh_memcached_server, memcached_server]
    # a prefix, so the final clear() changes a token instead of flushing the shared server
    cache = MemcachedCache(
        [f"{s.host}:{s.port}" for s in servers], key_prefix="two:", dead_timeout=0.2
    )
    run_through_a_kill(cache, fresh_memcached_server)
    assert_fully_working(cache)
    keys = [f"after{i}" for i in range(40)]
    assert sorted(cache.set_many(dict.fromkeys(keys, 1))) == sorted(keys)
    assert cache.get_many(*keys) == [1] * 40


def assert_fully_working(cache: MemcachedCache) -> None:
    values: dict[str, Any] = {"a": 1, "b": "two", "c": [3]}
    assert sorted(cache.set_many(values)) == ["a", "b", "c"]
    assert cache.get_many("a", "b", "c") == [1, "two", [3]]
    assert cache.add("a", 9) is False
    assert cache.delete("a") is True
    assert cache.inc("fresh-counter") == 1
    assert cache.has("b") is True
    assert cache.clear() is True
    assert cache.get("b") is None


# -- a connection reset after memcached applied the command ---------------------------------------


class ReplyDroppingProxy:
    """A TCP relay to a memcached server that can lose one reply and reset the connection.

    What a network failure does after memcached applied a command and before its reply
    arrived: only the client's side of the connection breaks.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._target = target
        self._skip: int | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_reply(self, after: int = 0) -> None:
        """Relay ``after`` more replies, then swallow the next one and reset its connection."""
        self._skip = after

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        with client, upstream:
            while True:
                readable, _, _ = select.select([client, upstream], [], [])
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        return
                    upstream.sendall(data)
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    if self._skip == 0:
                        self._skip = None
                        # linger 0: closing sends a reset, as a broken network path does
                        client.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        return
                    if self._skip:
                        self._skip -= 1
                    client.sendall(data)


@pytest.fixture
def proxy(fresh_memcached_server: MemcachedServer) -> Iterator[ReplyDroppingProxy]:
    made = ReplyDroppingProxy(fresh_memcached_server.address)
    yield made
    made.close()


@pytest.fixture(params=["", "p:"])
def reset_cache(
    request: pytest.FixtureRequest, proxy: ReplyDroppingProxy
) -> Iterator[MemcachedCache]:
    # dead_timeout 0: the reset must not hide the stored state from the checks that follow
    cache = MemcachedCache([f"127.0.0.1:{proxy.port}"], key_prefix=request.param, dead_timeout=0)
    assert cache.set("warm", 1) is True  # the connection is now pooled
    yield cache
    cache.close()


def reset_the_next_write(proxy: ReplyDroppingProxy, *, after: int = 0) -> None:
    """Lose the reply to the next write (the cache knows its namespace token already: with a
    prefix, every write reads it back in its own round trip)."""
    proxy.drop_reply(after)


def test_add_whose_reply_was_lost_is_not_sent_again(
    reset_cache: MemcachedCache, proxy: ReplyDroppingProxy, fresh_memcached_server: MemcachedServer
) -> None:
    """A second add found the first one's entry and answered "the key exists" as if all was
    well; an add must not run twice, so the lost reply is an outage answer (False, an error)."""
    server, cache = fresh_memcached_server, reset_cache
    stores = server_stat(server, "cmd_set")
    reset_the_next_write(proxy)
    assert cache.add("a", "v") is False
    assert server_stat(server, "cmd_set") == stores + 1
    assert cache.stats()["errors"] == 1
    assert cache.get("a") == "v"


@pytest.mark.parametrize(
    "delete",
    [lambda cache: cache.delete("d"), lambda cache: cache.delete_many("d")],
    ids=["delete", "delete_many"],
)
def test_delete_whose_reply_was_lost_is_not_sent_again(
    reset_cache: MemcachedCache,
    proxy: ReplyDroppingProxy,
    fresh_memcached_server: MemcachedServer,
    delete: Callable[[MemcachedCache], object],
) -> None:
    server, cache = fresh_memcached_server, reset_cache
    assert cache.set("d", 1) is True
    hits, misses = server_stat(server, "delete_hits"), server_stat(server, "delete_misses")
    reset_the_next_write(proxy)
    assert delete(cache) in (False, [])
    assert server_stat(server, "delete_hits") == hits + 1
    assert server_stat(server, "delete_misses") == misses  # never sent a second time
    assert cache.stats()["errors"] == 1
    assert cache.has("d") is False


def test_new_counter_whose_creation_reply_was_lost_is_not_counted_twice(
    reset_cache: MemcachedCache, proxy: ReplyDroppingProxy
) -> None:
    """inc on a missing key creates it with add; a second add failed, so inc went on with
    an incr and answered (and stored) twice the delta."""
    cache = reset_cache
    # the incr that finds no counter, then the add
    reset_the_next_write(proxy, after=1)
    assert cache.inc("n", 5) is None
    assert cache.get("n") == 5
