"""Fault injection: memcached is killed with SIGKILL under a running workload, then restarted."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from servers import MemcachedServer
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
