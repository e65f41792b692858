"""RedisCache on a Redis Cluster in operation: slots resharded under load, a graceful and a hard
failover, a node added, a client built while a node was down, and ``clear`` after each change.

Every test builds a cluster of its own with ``redis-cli --cluster create`` and changes its topology
behind the cache's back; the cache is never rebuilt.
"""

from __future__ import annotations

import random
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from servers import RedisServer
from waiting import wait_until

from cacheplug import RedisCache

WAIT = 30.0  # seconds; only reached when something is broken
PASSWORD = "cluster-ops-pw"
WINDOW = 60  # calls of the workload while a slot is half-migrated, and again once it moved


class OpsCluster:
    """A Redis Cluster built by ``redis-cli``, with replicas when asked, whose slots, roles and
    nodes a test changes by hand."""

    def __init__(self, masters: int = 3, replicas: int = 0, password: str | None = None) -> None:
        self.password = password
        self.servers = [self._node() for _ in range(masters * (1 + replicas))]
        self.replicas = replicas

    def _node(self) -> RedisServer:
        config = {"repl-diskless-sync-delay": "0"}  # replicas sync at once, not after 5 s
        if self.password:
            config["masterauth"] = self.password
        return RedisServer(cluster=True, password=self.password, config=config)

    def start(self) -> OpsCluster:
        for server in self.servers:
            server.start()
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        subprocess.run(
            ["redis-cli", *auth, "--cluster", "create"]
            + [f"{server.host}:{server.port}" for server in self.servers]
            + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=WAIT,
        )
        self.wait_settled()
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.kill()
            server.stop()

    @property
    def live(self) -> list[RedisServer]:
        return [server for server in self.servers if server.running]

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [server.address for server in self.servers]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{s.host}:{s.port}" for s in self.servers)

    def cluster(self, server: RedisServer, *args: str | int) -> str:
        reply = server.command("CLUSTER", *args)
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def settled(self) -> bool:
        """Every live node sees every node, all slots served, and each replica in sync."""
        live = self.live
        for server in live:
            info = self.cluster(server, "INFO")
            if "cluster_state:ok" not in info or f"known_nodes:{len(self.servers)}" not in info:
                return False
        table = self.table(live[0])
        if sum(len(row["slots"]) for row in table if row["primary"]) != 16384:
            return False
        replicas = [s for s in live if not self.row(s, table)["primary"]]
        return len(replicas) == len(live) - sum(r["primary"] for r in table if r["live"]) and all(
            b"master_link_status:up" in bytes(s.command("INFO", "replication"))  # type: ignore[arg-type]
            for s in replicas
        )

    def wait_settled(self) -> None:
        wait_until(self.settled, WAIT)

    def table(self, server: RedisServer | None = None) -> list[dict[str, Any]]:
        """The rows of ``CLUSTER NODES`` as ``server`` (a live node) sees them."""
        rows = []
        for line in self.cluster(server or self.live[0], "NODES").splitlines():
            fields = line.split()
            slots: set[int] = set()
            for span in fields[8:]:
                if not span.startswith("["):  # [slot->-id] marks a migration, not a slot
                    first, _, last = span.partition("-")
                    slots.update(range(int(first), int(last or first) + 1))
            rows.append(
                {
                    "id": fields[0],
                    "port": int(fields[1].split("@")[0].rsplit(":", 1)[1]),
                    "primary": "master" in fields[2],
                    "live": "fail" not in fields[2],
                    "of": fields[3],
                    "slots": slots,
                }
            )
        return rows

    def row(self, server: RedisServer, table: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return next(r for r in (table or self.table()) if r["port"] == server.port)

    def server(self, node_id: str) -> RedisServer:
        return next(s for s in self.servers if self.row(s)["id"] == node_id)

    def owner(self, key: str) -> RedisServer:
        """The primary serving ``key``'s slot."""
        slot = self.slot(key)
        return self.server(next(r["id"] for r in self.table() if slot in r["slots"]))

    def slot(self, key: str) -> int:
        return int(self.cluster(self.live[0], "KEYSLOT", key))

    def replica_of(self, primary: RedisServer) -> RedisServer:
        primary_id = self.row(primary)["id"]
        return self.server(next(r["id"] for r in self.table() if r["of"] == primary_id))

    def begin_move(self, slot: int, target: RedisServer) -> RedisServer:
        """Mark ``slot`` as migrating to ``target``, its keys still on its source (returned)."""
        source = self.server(next(r["id"] for r in self.table() if slot in r["slots"]))
        self.cluster(target, "SETSLOT", slot, "IMPORTING", self.row(source)["id"])
        self.cluster(source, "SETSLOT", slot, "MIGRATING", self.row(target)["id"])
        return source

    def migrate(self, source: RedisServer, target: RedisServer, *names: str) -> None:
        auth = ("AUTH", self.password) if self.password else ()
        source.command("MIGRATE", target.host, target.port, "", 0, 5000, *auth, "KEYS", *names)

    def end_move(self, slot: int, source: RedisServer, target: RedisServer) -> None:
        """Give ``slot`` to ``target`` on every primary, target and source first."""
        target_id = self.row(target)["id"]
        rest = [s for s in self.live if s not in (source, target) and self.row(s)["primary"]]
        for server in (target, source, *rest):
            self.cluster(server, "SETSLOT", slot, "NODE", target_id)

    def move_slot(self, slot: int, target: RedisServer, batch: int = 100) -> None:
        """Move ``slot`` and its keys to ``target``, ``batch`` keys per ``MIGRATE``."""
        source = self.begin_move(slot, target)
        while names := self.names(source, slot, batch):
            self.migrate(source, target, *names)
        self.end_move(slot, source, target)

    def names(self, server: RedisServer, slot: int, count: int) -> list[str]:
        """Up to ``count`` names of keys that ``server`` holds in ``slot``."""
        reply = server.command("CLUSTER", "GETKEYSINSLOT", slot, count)
        assert isinstance(reply, list)
        return [name.decode() for name in reply if isinstance(name, bytes)]

    def add_primary(self) -> RedisServer:
        """A new empty primary, joined to the cluster and seen by every node."""
        server = self._node().start()
        self.servers.append(server)
        first = self.servers[0]
        self.cluster(first, "MEET", server.host, server.port, server.bus_port)
        self.wait_settled()
        return server


@pytest.fixture
def clusters() -> Iterator[Callable[..., OpsCluster]]:
    """Builds clusters of the test's own (``OpsCluster`` arguments); all stopped at the end."""
    made: list[OpsCluster] = []

    def make(*args: Any, **kwargs: Any) -> OpsCluster:
        cluster = OpsCluster(*args, **kwargs)
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.stop()


def tagged(group: int, count: int) -> list[str]:
    """``count`` keys sharing one slot (a hash tag), as related keys are often kept."""
    return [f"{{g{group}}}:{i}" for i in range(count)]


# -- 1. live resharding -----------------------------------------------------------------------


def test_every_call_on_a_slot_in_mid_migration_answers_as_before(
    clusters: Callable[..., OpsCluster],
) -> None:
    cluster = clusters()
    cache = RedisCache(startup_nodes=[cluster.servers[0].address], key_prefix="mid")
    keys = tagged(1, 10)
    assert cache.set_many({key: key for key in keys}) == keys
    assert cache.inc(keys[0] + ":n") == 1
    slot = cluster.slot("mid" + keys[0])
    target = next(s for s in cluster.servers if s is not cluster.owner("mid" + keys[0]))
    source = cluster.begin_move(slot, target)
    # half of the keys on each side: MGET of both halves gets TRYAGAIN, one key ASK
    cluster.migrate(source, target, *("mid" + key for key in [*keys[:5], keys[0] + ":n"]))
    assert cache.get_many(*keys) == keys
    assert cache.get_dict(*keys[3:7]) == {key: key for key in keys[3:7]}
    assert [cache.get(key) for key in keys] == keys
    assert [cache.has(key) for key in keys] == [True] * len(keys)
    assert cache.set_many({key: key + "2" for key in keys}) == keys
    assert cache.get_many(*keys, "absent") == [key + "2" for key in keys] + [None]
    assert cache.inc(keys[0] + ":n") == 2
    assert cache.inc(keys[1] + ":n") == 1  # a new key in a migrating slot lands on the target
    assert [cache.add(key, 0) for key in keys[3:7]] == [False] * 4
    assert cache.delete_many(*keys[:7], "absent") == keys[:7]
    assert cache.get_many(*keys) == [None] * 7 + [key + "2" for key in keys[7:]]
    assert cache.stats()["errors"] == 0
    cluster.move_slot(slot, target)  # the rest of the keys
    assert cache.get_many(*keys[6:]) == [None] + [key + "2" for key in keys[7:]]
    assert cache.stats()["errors"] == 0


def move_under_load(
    cluster: OpsCluster, slot: int, target: RedisServer, calls: Callable[[], int]
) -> None:
    """Move ``slot`` to ``target`` key by key, letting the workload make ``WINDOW`` calls while
    half of the keys are on each side, and as many once the slot moved."""
    source = cluster.begin_move(slot, target)
    names = cluster.names(source, slot, 1000)
    for name in names[: len(names) // 2]:
        cluster.migrate(source, target, name)
    made = calls()
    wait_until(lambda: calls() >= made + WINDOW, WAIT)
    cluster.move_slot(slot, target, batch=1)
    made = calls()
    wait_until(lambda: calls() >= made + WINDOW, WAIT)


def test_resharding_under_load_keeps_every_answer_right(
    clusters: Callable[..., OpsCluster],
) -> None:
    cluster = clusters()
    cache = RedisCache(startup_nodes=cluster.nodes, key_prefix="load:")
    groups = [tagged(group, 20) for group in range(6)]
    keys = [key for group in groups for key in group]
    threads = 4
    stop = threading.Event()
    wrong: list[Any] = []
    counted = [0] * threads
    calls = [0] * threads

    def check(key: str, value: Any) -> None:
        if value is not None and not (isinstance(value, str) and value.startswith(key + "=")):
            wrong.append((key, value))

    def work(worker: int) -> None:
        rnd = random.Random(worker)
        counter = f"{{c{worker}}}"
        try:
            while not stop.is_set():
                group = rnd.choice(groups)
                key = rnd.choice(group)
                value = f"{key}={rnd.random()}"
                choice = rnd.randrange(7)
                calls[worker] += 1
                if choice == 0:
                    assert cache.set(key, value) is True
                elif choice == 1:
                    check(key, cache.get(key))
                elif choice == 2:
                    cache.add(key, value)
                elif choice == 3:
                    counted[worker] += 1
                    assert cache.inc(counter) == counted[worker]
                elif choice == 4:
                    some = rnd.sample(group, 8)
                    for name, got in zip(some, cache.get_many(*some), strict=True):
                        check(name, got)
                elif choice == 5:
                    mapping = {name: f"{name}={rnd.random()}" for name in rnd.sample(group, 8)}
                    assert sorted(cache.set_many(mapping)) == sorted(mapping)
                else:
                    some = rnd.sample(group, 3)
                    assert set(cache.delete_many(*some)) <= set(some)
        except BaseException as err:  # reported by the main thread
            wrong.append(err)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    try:
        primaries = list(cluster.servers)
        for step in range(3):
            for group in groups:
                slot = cluster.slot("load:" + group[0])
                owner = cluster.owner("load:" + group[0])
                target = primaries[(primaries.index(owner) + 1 + step) % len(primaries)]
                if target is not owner:
                    move_under_load(cluster, slot, target, lambda: sum(calls))
    finally:
        stop.set()
        for worker in workers:
            worker.join(WAIT)
    assert wrong == []
    assert sum(counted) > 0
    assert [cache.get(f"{{c{n}}}") for n in range(threads)] == [c or None for c in counted]
    assert cache.get_many(*keys) == [cache.get(key) for key in keys]
    assert cache.stats()["errors"] == 0
