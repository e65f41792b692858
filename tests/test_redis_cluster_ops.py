"""RedisCache on a Redis Cluster in operation: slots resharded under load, a graceful and a hard
failover, a node added, a client built while a node was down, and ``clear`` after each change.

Every test builds a cluster of its own (``servers.join_cluster``) and changes its topology
behind the cache's back; the cache is never rebuilt.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.crc import key_slot
from servers import RedisServer, join_cluster, meet_cluster
from waiting import wait_until

from cacheplug import RedisCache, from_url

WAIT = 30.0  # seconds; only reached when something is broken
PASSWORD = "cluster-ops-pw"
PREFIXES = ("gone", "stay")  # of the keys clear deletes, and of those it leaves
WINDOW = 60  # calls of the workload while a slot is half-migrated, and again once it moved


class OpsCluster:
    """A Redis Cluster built by ``redis-cli``, with replicas when asked, whose slots, roles and
    nodes a test changes by hand."""

    def __init__(self, masters: int = 3, replicas: int = 0, password: str | None = None) -> None:
        self.password = password
        self.servers = [self._node() for _ in range(masters * (1 + replicas))]
        self.replicas = replicas
        self._ids: dict[int, str] = {}

    def _node(self) -> RedisServer:
        config = {"repl-diskless-sync-delay": "0"}  # replicas sync at once, not after 5 s
        if self.password:
            config["masterauth"] = self.password
        return RedisServer(cluster=True, password=self.password, config=config)

    def start(self) -> OpsCluster:
        for server in self.servers:
            server.start()
        join_cluster(self.servers, self.replicas)
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
        """Every live node sees every node and the same roles and slots, all slots are served
        and each live replica is in sync."""
        live = self.live
        for server in live:
            info = self.cluster(server, "INFO")
            if "cluster_state:ok" not in info or f"known_nodes:{len(self.servers)}" not in info:
                return False
        views = [self.table(server) for server in live]
        if any(view != views[0] for view in views):
            return False
        if sum(len(row["slots"]) for row in views[0] if row["primary"]) != 16384:
            return False
        return all(
            b"master_link_status:up" in bytes(s.command("INFO", "replication"))  # type: ignore[arg-type]
            for s in live
            if not self.row(s, views[0])["primary"]
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
        return sorted(rows, key=lambda row: str(row["id"]))

    def row(self, server: RedisServer, table: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return next(r for r in (table or self.table()) if r["port"] == server.port)

    def node_id(self, server: RedisServer) -> str:
        if server.port not in self._ids:
            self._ids[server.port] = self.cluster(server, "MYID")
        return self._ids[server.port]

    def server(self, node_id: str) -> RedisServer:
        return next(s for s in self.servers if self.node_id(s) == node_id)

    def owner(self, key: str) -> RedisServer:
        """The primary serving ``key``'s slot."""
        slot = key_slot(key.encode())
        return self.server(next(r["id"] for r in self.table() if slot in r["slots"]))

    def replica_of(self, primary: RedisServer) -> RedisServer:
        primary_id = self.node_id(primary)
        return self.server(next(r["id"] for r in self.table() if r["of"] == primary_id))

    def begin_move(self, slot: int, target: RedisServer) -> RedisServer:
        """Mark ``slot`` as migrating to ``target``, its keys still on its source (returned)."""
        source = self.server(next(r["id"] for r in self.table() if slot in r["slots"]))
        self.cluster(target, "SETSLOT", slot, "IMPORTING", self.node_id(source))
        self.cluster(source, "SETSLOT", slot, "MIGRATING", self.node_id(target))
        return source

    def migrate(self, source: RedisServer, target: RedisServer, *names: str) -> None:
        auth = ("AUTH", self.password) if self.password else ()
        source.command("MIGRATE", target.host, target.port, "", 0, 5000, *auth, "KEYS", *names)

    def end_move(self, slot: int, source: RedisServer, target: RedisServer) -> None:
        """Give ``slot`` to ``target`` on every primary, target and source first."""
        target_id = self.node_id(target)
        primaries = [self.server(r["id"]) for r in self.table() if r["primary"] and r["live"]]
        rest = [s for s in primaries if s not in (source, target)]
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
        meet_cluster(self.servers)
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
    slot = key_slot(("mid" + keys[0]).encode())
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
    other = RedisCache(startup_nodes=cluster.nodes, key_prefix="other")
    assert other.set(keys[0], "stays") is True  # the same slot: on the target now
    assert cache.clear() is True  # keys on both sides of the move
    assert cache.get_many(*keys) == [None] * len(keys)
    assert other.get(keys[0]) == "stays"
    assert cache.set_many({key: key for key in keys}) == keys
    cluster.move_slot(slot, target)  # the rest of the keys
    assert cache.get_many(*keys) == keys
    assert other.get(keys[0]) == "stays"
    assert cache.stats()["errors"] == 0


def test_get_many_on_a_slot_that_moved_and_is_moving_again_reads_every_key(
    clusters: Callable[..., OpsCluster],
) -> None:
    """The cache still maps the slot to its first owner: its MGET meets MOVED, then a slot in
    mid-migration at the node it was moved to."""
    cluster = clusters()
    cache = RedisCache(startup_nodes=[cluster.servers[0].address], key_prefix="twice")
    keys = tagged(1, 6)
    assert cache.set_many({key: key for key in keys}) == keys
    slot = key_slot(("twice" + keys[0]).encode())
    first = cluster.owner("twice" + keys[0])
    second, third = [server for server in cluster.servers if server is not first]
    cluster.move_slot(slot, second)
    source = cluster.begin_move(slot, third)
    cluster.migrate(source, third, *("twice" + key for key in keys[:3]))
    assert cache.get_many(*keys, "absent") == [*keys, None]
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
                slot = key_slot(("load:" + group[0]).encode())
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


# -- 3. a new node -----------------------------------------------------------------------------


def test_a_primary_added_and_given_slots_is_found_without_a_restart(
    clusters: Callable[..., OpsCluster],
) -> None:
    cluster = clusters()
    cache = RedisCache(startup_nodes=cluster.nodes, key_prefix="grow:")
    keys = [f"k{i}" for i in range(60)]
    assert cache.set_many({key: key for key in keys}) == keys
    assert cache.inc("n") == 1
    new = cluster.add_primary()
    slots = sorted({key_slot(("grow:" + key).encode()) for key in [*keys, "n"]})
    for slot in [key_slot(b"grow:n"), *slots[::2]]:
        cluster.move_slot(slot, new)
    held = cluster.names(new, key_slot(b"grow:n"), 10)
    assert held == ["grow:n"]
    assert cache.get_many(*keys) == keys
    assert [cache.get(key) for key in keys] == keys
    assert cache.inc("n") == 2
    assert cache.set_many({key: key + "2" for key in keys}) == keys
    assert cache.get_dict(*keys) == {key: key + "2" for key in keys}
    assert cache.add("n", 0) is False
    assert cache.delete_many(*keys) == keys
    assert cache.stats()["errors"] == 0
    assert new.command("DBSIZE") == 1  # the counter; the keys it got were deleted there


# -- 5. clear after the topology changed ----------------------------------------------------------


CLEARED = [f"k{i}" for i in range(300)]


def slots_of(keys: list[str]) -> list[int]:
    """The slots of ``keys`` under both prefixes of the ``clear`` test."""
    return sorted({key_slot(f"{prefix}:{key}".encode()) for key in keys for prefix in PREFIXES})


def reshard(cluster: OpsCluster) -> None:
    """Move a third of the keys' slots of the first primary to the second."""
    first, second = cluster.servers[:2]
    for slot in sorted(set(slots_of(CLEARED[::3])) & cluster.row(first)["slots"]):
        cluster.move_slot(slot, second)


def scale_out(cluster: OpsCluster) -> None:
    """Add a primary and move to it the slots of a quarter of the keys."""
    new = cluster.add_primary()
    for slot in slots_of(CLEARED[::4]):
        cluster.move_slot(slot, new)


def fail_over(cluster: OpsCluster, replica: RedisServer | None = None) -> None:
    """Promote ``replica`` (by default the first primary's) with ``CLUSTER FAILOVER``."""
    replica = replica or cluster.replica_of(cluster.servers[0])
    cluster.cluster(replica, "FAILOVER")
    wait_until(lambda: promoted(cluster, replica), WAIT)
    cluster.wait_settled()


@pytest.mark.parametrize(
    ("change", "replicas"),
    [(reshard, 0), (scale_out, 0), (fail_over, 1)],
    ids=["resharded", "scaled-out", "failed-over"],
)
def test_clear_reaches_every_primary_after_the_topology_changed(
    clusters: Callable[..., OpsCluster], change: Callable[[OpsCluster], None], replicas: int
) -> None:
    cluster = clusters(replicas=replicas)
    # clients that learnt the topology before the change and have not been used since
    gone, stay = PREFIXES
    prefixed = RedisCache(startup_nodes=cluster.nodes, key_prefix=f"{gone}:")
    plain = RedisCache(startup_nodes=cluster.nodes)
    other = RedisCache(startup_nodes=cluster.nodes, key_prefix=f"{stay}:")
    keys = CLEARED
    for cache in (prefixed, other):
        assert cache.set_many(dict.fromkeys(keys, 1)) == keys
    assert plain.get("k") is None
    change(cluster)

    def count(pattern: str) -> list[int]:
        primaries = [s for s in cluster.live if cluster.row(s)["primary"]]
        return [len(s.command("KEYS", pattern)) for s in primaries]  # type: ignore[arg-type]

    assert all(count("gone:*")), "keys under the prefix on every primary, new ones included"
    assert prefixed.clear() is True
    assert sum(count("gone:*")) == 0
    assert sum(count("stay:*")) == len(keys)
    assert plain.clear() is True
    assert sum(count("*")) == 0
    assert (prefixed.stats()["errors"], plain.stats()["errors"]) == (0, 0)


# -- 2. failover ---------------------------------------------------------------------------------


def promoted(cluster: OpsCluster, replica: RedisServer) -> bool:
    """Whether ``replica`` took over as a primary, as it sees itself."""
    return bool(cluster.row(replica, cluster.table(replica))["primary"])


def test_a_graceful_then_a_hard_failover_answer_outage_values_then_recover_by_themselves(
    clusters: Callable[..., OpsCluster], caplog: pytest.LogCaptureFixture
) -> None:
    cluster = clusters(replicas=1, password=PASSWORD)
    cache = from_url(cluster.url.replace("//", f"//:{PASSWORD}@") + "?key_prefix=fo:")
    assert isinstance(cache, RedisCache)
    keys = [f"k{i}" for i in range(60)]
    assert cache.set_many({key: key for key in keys}) == keys
    assert cache.inc("n") == 1
    caplog.set_level(logging.WARNING, logger="cacheplug")

    # graceful: the replica takes over with every write the primary had
    replica = cluster.replica_of(cluster.owner("fo:n"))
    fail_over(cluster, replica)
    assert cache.get_many(*keys) == keys
    assert cache.inc("n") == 2
    assert cache.set_many({key: key + "2" for key in keys}) == keys
    assert cache.stats()["errors"] == 0

    # hard: the new primary killed; its replica (the old primary) takes over after node-timeout
    victim, heir = replica, cluster.replica_of(replica)
    assert victim.command("WAIT", 1, int(WAIT * 1000)) == 1  # the replica has every write
    count = 2
    victim.kill()
    outages = 0
    while not promoted(cluster, heir):
        got, new = cache.get("n"), cache.inc("n")
        assert got in (None, count)
        if new is None:
            outages += 1
        else:
            count += 1
            assert new == count
        assert all(
            v in (None, key + "2") for key, v in zip(keys, cache.get_many(*keys), strict=True)
        )
        assert set(cache.set_many({key: key + "2" for key in keys[:10]})) <= set(keys[:10])
        assert cache.set("x", 1) in (True, False)
        assert cache.add("y", 1) in (True, False)
        assert cache.has("x") in (True, False)
        assert cache.delete_many("x", "y") in ([], ["x"], ["y"], ["x", "y"])
    assert outages > 0
    assert wait_until(lambda: cache.inc("n") is not None, WAIT) < WAIT
    assert cache.get("n") == count + 1  # no increment lost, none counted twice
    assert wait_until(lambda: cache.get_many(*keys) == [key + "2" for key in keys], WAIT)
    assert cache.set_many(dict.fromkeys(keys, 3)) == keys
    assert cache.delete_many(*keys) == keys
    assert cache.clear() is True
    assert cache.stats()["errors"] >= outages
    lines = [r.getMessage() for r in caplog.records if r.name == "cacheplug"]
    assert len(lines) == 1, lines  # one line for the whole outage
    assert PASSWORD not in caplog.text + repr(cache)


# -- 4. a client built while a node was down -------------------------------------------------------


@pytest.mark.parametrize("dead_slot", [0, 16383], ids=["first-slots-node", "last-slots-node"])
def test_a_client_built_while_a_node_was_down_serves_the_others_and_then_all(
    clusters: Callable[..., OpsCluster], dead_slot: int, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = clusters()
    for server in cluster.servers:  # live nodes keep their slots while one is down
        server.command("CONFIG", "SET", "cluster-require-full-coverage", "no")
    keys = [f"k{i}" for i in range(60)]
    dead = cluster.server(next(r["id"] for r in cluster.table() if dead_slot in r["slots"]))
    on_dead = {key for key in keys if cluster.owner("down:" + key) is dead}
    alive = [key for key in keys if key not in on_dead]
    assert 0 < len(alive) < len(keys)
    names = [f"n{i}" for i in range(30)]
    counters = [n for n in names if cluster.owner("down:" + n) is not dead][:3]
    counters.append(next(n for n in names if cluster.owner("down:" + n) is dead))
    dead.kill()
    cache = from_url(cluster.url + "?key_prefix=down:")
    assert isinstance(cache, RedisCache)
    assert sorted(cache.set_many({key: key for key in keys})) == sorted(alive)
    assert cache.get_many(*keys) == [None if key in on_dead else key for key in keys]
    assert [cache.get(key) for key in alive] == alive
    assert [cache.inc(name) for name in counters] == [1, 1, 1, None]
    assert cache.delete_many(*keys) == alive
    dead.start()  # on its port, from its saved cluster config
    cluster.wait_settled()
    assert wait_until(lambda: cache.set_many({key: key for key in keys}) == keys, WAIT) < WAIT
    assert cache.get_many(*keys) == keys
    assert cache.clear() is True
    assert cache.get_many(*keys) == [None] * len(keys)
