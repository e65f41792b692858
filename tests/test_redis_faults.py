"""RedisCache under faults: a server killed mid-workload, a hung cluster node, and entries forged
in the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import pathlib
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import redis
import test_redis
from servers import RedisCluster, RedisServer
from waiting import paused_process, wait_until

from cacheplug import RedisCache

WAIT = 30.0  # seconds; only reached when something is broken


@dataclass
class Workload:
    """A bounded loop of operations on one cache, recording every answer per phase."""

    cache: RedisCache
    max_rounds: int = 20_000
    phase: str = "up"
    answers: dict[str, list[tuple[str, Any, Any]]] = field(default_factory=dict)
    failures: list[BaseException] = field(default_factory=list)
    warm: threading.Event = field(default_factory=threading.Event)
    saw_outage: threading.Event = field(default_factory=threading.Event)
    recovered: threading.Event = field(default_factory=threading.Event)
    rounds: int = 0
    switched: threading.Event = field(default_factory=threading.Event)
    pace: threading.Event = field(default_factory=threading.Event)  # never set

    def switch(self, phase: str) -> None:
        """Enter ``phase`` once the worker has finished every round of the previous one."""
        self.switched.clear()
        self.phase = phase
        assert self.switched.wait(WAIT), f"the worker never reached phase {phase!r}"

    def run(self) -> None:
        last = self.phase
        try:
            for i in range(self.max_rounds):
                self.rounds = i + 1
                phase = self.phase
                if phase != last:
                    last = phase
                    self.switched.set()
                self._round(phase, i)
                if i == 200:
                    self.warm.set()
                if phase == "recovered" and len(self.answers.get("recovered", [])) >= 50 * 6:
                    self.recovered.set()
                    return
        except BaseException as err:  # reported by the test, not lost in the thread
            self.failures.append(err)

    def _round(self, phase: str, i: int) -> None:
        cache, key = self.cache, f"k{i % 50}"
        record = self.answers.setdefault(phase, []).append
        stored = cache.set(key, {"i": i})
        record(("set", stored, True))
        record(("get", cache.get(key), {"i": i}))
        record(("inc", cache.inc("counter"), int))
        record(("get_many", cache.get_many(key, "absent"), [{"i": i}, None]))
        record(("has", cache.has(key), True))
        record(("delete", cache.delete(key), True))
        if stored is False:
            self.saw_outage.set()
            # Inside dead_timeout an outage answers in microseconds: pace the loop.
            self.pace.wait(0.001)


OUTAGE_ANSWERS = {"set": False, "get": None, "inc": None, "get_many": [None, None]}
OUTAGE_ANSWERS |= {"has": False, "delete": False}


def check(answer: tuple[str, Any, Any], *, allow_outage: bool, allow_success: bool) -> bool:
    operation, got, expected = answer
    success = isinstance(got, int) if expected is int else got == expected
    return (allow_success and success) or (allow_outage and got == OUTAGE_ANSWERS[operation])


@pytest.fixture
def workload(fresh_redis_server: RedisServer) -> Iterator[Workload]:
    cache = RedisCache(port=fresh_redis_server.port, key_prefix="work:", serializer="msgpack")
    yield Workload(cache)
    cache.close()


def test_kill_mid_workload_gives_outage_values_then_full_recovery(
    fresh_redis_server: RedisServer, workload: Workload
) -> None:
    worker = threading.Thread(target=workload.run)
    worker.start()
    try:
        assert workload.warm.wait(WAIT)
        workload.switch("killing")
        fresh_redis_server.kill()  # SIGKILL while the worker is mid-operation
        workload.switch("down")
        assert workload.saw_outage.wait(WAIT)
        workload.switch("restarting")
        fresh_redis_server.restart()
        wait_until(lambda: workload.cache.set("probe", 1))  # dead_timeout is over
        workload.switch("recovered")
        assert workload.recovered.wait(WAIT)
    finally:
        workload.phase = "recovered"
        worker.join(WAIT)
    assert not worker.is_alive()
    assert workload.failures == []
    assert workload.rounds < workload.max_rounds
    answers = workload.answers
    assert answers["down"]
    assert all(check(a, allow_outage=False, allow_success=True) for a in answers["up"])
    assert all(check(a, allow_outage=True, allow_success=False) for a in answers["down"])
    for racing in ("killing", "restarting"):
        assert all(check(a, allow_outage=True, allow_success=True) for a in answers.get(racing, []))
    assert all(check(a, allow_outage=False, allow_success=True) for a in answers["recovered"])
    # The restarted server lost the data; every increment since then is counted.
    since_restart = answers.get("restarting", []) + answers["recovered"]
    counted = sum(1 for op, got, _ in since_restart if op == "inc" and got is not None)
    assert workload.cache.inc("counter") == counted + 1
    assert workload.cache.get("k0") is None  # rounds end by deleting their key


# -- a hung server ---------------------------------------------------------------------------------


@contextlib.contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """The server stopped with SIGSTOP: connections open, nothing answered, until the block ends."""
    assert server.pid is not None
    with paused_process(server.pid):
        yield


def test_commands_cut_off_by_a_timeout_are_never_sent_twice(
    fresh_redis_server: RedisServer,
) -> None:
    cache = RedisCache(port=fresh_redis_server.port, socket_timeout=1.0, dead_timeout=0)
    raw = redis.Redis(port=fresh_redis_server.port)
    assert cache.inc("n") == 1
    answers: list[int | None] = []
    started = threading.Event()

    def increment() -> None:
        started.set()
        answers.append(cache.inc("n"))

    worker = threading.Thread(target=increment)
    with paused(fresh_redis_server):
        worker.start()
        assert started.wait(WAIT)
        # Past the 1 s timeout, while a retry would be reconnecting: it would then resend.
        threading.Event().wait(1.4)
    worker.join(WAIT)
    assert answers in ([None], [2])  # None: timed out, though the server has it queued
    wait_until(lambda: raw.get("n") != b"1")
    assert raw.get("n") == b"2"
    assert cache.inc("n") == 3
    raw.close()


def test_a_hung_server_costs_one_timeout_per_dead_timeout(
    fresh_redis_server: RedisServer,
) -> None:
    cache = RedisCache(port=fresh_redis_server.port, socket_timeout=0.3)  # dead_timeout 1 s
    assert cache.set("k", "v") is True
    with paused(fresh_redis_server):
        started = time.monotonic()
        assert cache.get("k") is None  # waits for the socket timeout once
        first = time.monotonic() - started
        started = time.monotonic()
        answers = [(cache.get("k"), cache.set("k", 1), cache.inc("n")) for _ in range(20)]
        rest = time.monotonic() - started
    assert answers == [(None, False, None)] * 20
    assert 0.25 < first < 2.0
    assert rest < 0.5  # 60 calls inside the dead time: none waited 0.3 s for the server
    assert wait_until(lambda: cache.get("k") == "v") < cache.dead_timeout + 2
    assert cache.inc("n") == 1


def test_after_the_dead_time_one_call_tries_the_hung_server_and_the_others_do_not_wait(
    fresh_redis_server: RedisServer,
) -> None:
    timeout, dead = 0.3, 0.3
    cache = RedisCache(port=fresh_redis_server.port, socket_timeout=timeout, dead_timeout=dead)
    assert cache.set("k", "v") is True
    stalls: list[float] = []
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            started = time.monotonic()
            assert cache.get("k") is None
            if time.monotonic() - started > timeout / 2:
                stalls.append(started)
            stop.wait(0.005)

    with paused(fresh_redis_server):
        assert cache.get("k") is None  # the first failure starts the dead time
        threads = [threading.Thread(target=work) for _ in range(8)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        stop.wait(2.0)
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    # one waiting call per dead window (a wait, then the dead time); with every thread trying
    # the server when the dead time ends, each window cost eight
    assert 1 <= len(stalls) <= elapsed / (timeout + dead) + 2
    assert wait_until(lambda: cache.get("k") == "v") < dead + 2
    assert cache.inc("n") == 1


def test_a_user_the_acl_forbids_ping_gets_the_server_back_after_the_dead_time(
    fresh_redis_server: RedisServer,
) -> None:
    fresh_redis_server.command("ACL", "SETUSER", "app", "on", ">pw", "~*", "+get", "+set")
    cache = RedisCache(
        port=fresh_redis_server.port, username="app", password="pw", socket_timeout=0.3
    )
    assert cache.set("k", "v") is True
    with paused(fresh_redis_server):
        assert cache.get("k") is None  # the server is asked again with a PING, which fails
    assert wait_until(lambda: cache.get("k") == "v") < cache.dead_timeout + 2


def test_a_hung_cluster_node_costs_one_timeout_per_call_and_live_nodes_answer() -> None:
    timeout = 0.5
    with RedisCluster() as cluster:
        for server in cluster.servers:  # live nodes keep their slots while one hangs
            server.command("CONFIG", "SET", "cluster-require-full-coverage", "no")
        cache = RedisCache(startup_nodes=cluster.nodes, key_prefix="hung:", socket_timeout=timeout)
        keys = [f"k{i}" for i in range(40)]
        assert sorted(cache.set_many(dict.fromkeys(keys, 1))) == sorted(keys)
        hung = cluster.servers[1]
        with redis.Redis(port=hung.port) as node:
            on_hung = set(node.keys("hung:*"))
        alive = [key for key in keys if f"hung:{key}".encode() not in on_hung]
        assert 0 < len(alive) < len(keys)
        calls: dict[str, Callable[[], list[Any]]] = {
            "get_many": lambda: cache.get_many(*keys),
            "set_many": lambda: cache.set_many(dict.fromkeys(keys, 2)),
            "expire": lambda: cache.set_many(dict.fromkeys(keys, 3), timeout=-1),
            "delete_many": lambda: cache.delete_many(*keys),
        }
        answers: dict[str, list[Any]] = {}
        seconds: dict[str, float] = {}
        misses = cache.stats()["misses"]
        assert hung.pid is not None
        with paused_process(hung.pid):
            for name, call in calls.items():
                started = time.monotonic()
                answers[name] = call()
                seconds[name] = time.monotonic() - started
        assert answers == {
            "get_many": [1 if key in alive else None for key in keys],
            "set_many": alive,
            "expire": alive,
            "delete_many": [],  # expired just before
        }
        assert all(spent < 1.8 * timeout for spent in seconds.values()), seconds
        assert cache.stats()["misses"] == misses  # the hung node's keys are errors, not misses
        assert wait_until(lambda: cache.set_many(dict.fromkeys(keys, 4)) == keys) < WAIT
        assert cache.get_many(*keys) == [4] * len(keys)
        assert sorted(cache.delete_many(*keys)) == sorted(keys)


def test_a_cluster_down_after_a_node_died_costs_one_wait_per_call() -> None:
    with RedisCluster() as cluster:
        cache = RedisCache(startup_nodes=cluster.nodes, key_prefix="down:", socket_timeout=0.5)
        keys = [f"k{i}" for i in range(40)]
        assert cache.set_many(dict.fromkeys(keys, 1)) == keys
        assert cache.inc("n") == 1
        for server in cluster.servers:  # the live nodes give the dead one up sooner
            server.command("CONFIG", "SET", "cluster-node-timeout", "200")
        dead, live = cluster.servers[1], cluster.servers[0]
        dead.kill()
        wait_until(lambda: b"cluster_state:fail" in bytes(live.command("CLUSTER", "INFO")))  # type: ignore[arg-type]
        misses = cache.stats()["misses"]
        started = time.monotonic()
        answers = (cache.get_many(*keys), cache.set_many(dict.fromkeys(keys, 2)), cache.inc("n"))
        spent = time.monotonic() - started
        assert answers == ([None] * len(keys), [], None)
        assert cache.stats()["misses"] == misses  # keys not read are errors, not misses
        # redis-py waits 0.25 s before it gives up on a CLUSTERDOWN command: once per call here
        assert spent < 2.5, spent
        cluster.start()  # the dead node again, on its port
        assert wait_until(lambda: cache.set_many(dict.fromkeys(keys, 3)) == keys) < WAIT
        assert cache.get_many(*keys) == [3] * len(keys)


# -- errors that say nothing about the server's health or the stored value ------------------------


@pytest.mark.parametrize(
    "pool_class",
    [redis.ConnectionPool, partial(redis.BlockingConnectionPool, timeout=0.01)],
    ids=["ConnectionPool", "BlockingConnectionPool"],
)
def test_an_exhausted_connection_pool_leaves_no_dead_time(
    redis_server: RedisServer, pool_class: Callable[..., redis.ConnectionPool]
) -> None:
    pool = pool_class(port=redis_server.port, max_connections=1)
    cache = RedisCache(redis.Redis(connection_pool=pool), key_prefix="exhausted:")
    assert cache.set("k", "v") is True
    held = pool.get_connection()  # another thread's call, in flight
    try:
        assert cache.get("k") is None  # no connection to ask with: answered as an outage
        assert cache.stats()["errors"] == 1
    finally:
        pool.release(held)
    # The server never failed: the very next call asks it.
    assert (cache.get("k"), cache.set("k", "w"), cache.inc("n")) == ("v", True, 1)
    cache.clear()
    pool.disconnect()


def test_inc_refused_for_lack_of_memory_is_an_outage_not_a_type_error(
    fresh_redis_server: RedisServer,
) -> None:
    cache = RedisCache(port=fresh_redis_server.port)
    assert cache.inc("n") == 1
    fresh_redis_server.command("CONFIG", "SET", "maxmemory", "1")  # noeviction: writes refused
    try:
        assert cache.inc("n") is None
        assert cache.stats()["errors"] == 1
    finally:
        fresh_redis_server.command("CONFIG", "SET", "maxmemory", "0")
    assert cache.inc("n") == 2


# -- signed payloads ----------------------------------------------------------------------------


raw = test_redis.raw  # the fixture: a plain redis-py client on the session server


class MarkerFile:
    """A pickle whose loading creates a file: stands for any code an attacker would run."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.path,))


@pytest.fixture
def signed(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisCache]:
    monkeypatch.delenv("CACHEPLUG_SECRET", raising=False)
    cache = RedisCache(port=redis_server.port, key_prefix="signed:", secret="s3cret-key")
    yield cache
    cache.clear()
    cache.close()


def test_forged_pickle_is_never_loaded_with_a_secret(
    signed: RedisCache, raw: redis.Redis, redis_server: RedisServer, tmp_path: pathlib.Path
) -> None:
    marker = tmp_path / "pwned"
    raw.set("signed:evil", pickle.dumps(MarkerFile(marker)))
    errors = signed.stats()["errors"]
    assert signed.get("evil") is None
    assert signed.get_many("evil") == [None]
    assert not marker.exists()
    assert signed.stats()["errors"] == errors + 2
    # The same bytes read without a secret do run: the payload above is a real threat.
    unsigned = RedisCache(port=redis_server.port, key_prefix="signed:", secret=None)
    unsigned.get("evil")
    assert marker.exists()


def test_tampered_entry_is_a_miss(signed: RedisCache, raw: redis.Redis) -> None:
    signed.set("k", {"amount": 10})
    stored = raw.get("signed:k")
    assert isinstance(stored, bytes)
    payload = bytearray(stored)
    payload[-2] ^= 0x01
    raw.set("signed:k", bytes(payload))
    assert signed.get("k") is None


def test_entry_signed_with_another_secret_is_a_miss(
    signed: RedisCache, redis_server: RedisServer, raw: redis.Redis
) -> None:
    other = RedisCache(port=redis_server.port, key_prefix="signed:", secret="other-key")
    other.set("k", "theirs")
    assert other.get("k") == "theirs"
    assert signed.get("k") is None
    data = pickle.dumps("ours")
    # the MAC covers the entry: key_prefix and key, each after its length in bytes
    entry = b"cacheplug-entry:7:1:signed:k"
    mark = b"\xc1\xff"  # every signed payload starts with it
    raw.set("signed:k", mark + hmac.digest(b"s3cret-key", entry + data, hashlib.sha256) + data)
    assert signed.get("k") == "ours"
    raw.set("signed:k", mark + hmac.digest(b"s3cret-key", data, hashlib.sha256) + data)
    assert signed.get("k") is None  # signed for no entry


def test_counters_stay_plain_integers_when_signed(signed: RedisCache, raw: redis.Redis) -> None:
    assert signed.inc("n", 41) == 41
    assert signed.inc("n") == 42
    assert raw.get("signed:n") == b"42"
    assert signed.get("n") == 42
