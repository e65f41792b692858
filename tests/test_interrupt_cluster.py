"""Redis Cluster calls cut short wherever a signal handler's exception can show up
(session 21, helper C).

The shape of tests/test_interrupt_engines.py (its sweep, its operations, its checks), on a real
three-node cluster (the ``redis_cluster`` fixture): the watched keys sit on different nodes, so
get_many, set_many and delete_many send one pipeline per node (``node_pipelines``), and clear
asks the cluster for its slots, then flushes or scans every primary. The first call on a fresh
cache builds the client (``PendingCluster``, under its lock) and is cut at every point too, and
so is the reset of a forked child (an at-fork hook renewing the locks a parent thread held).

After each cut (docs/reliability.md, "a call cut short"): the cut reached the caller, no
connection is left taken from a node's pool (``max_connections`` is small: a leak soon makes
every call to that node fail) or dropped with its socket open (a ``ResourceWarning``), no pooled
connection holds a reply nobody read, no lock of the cache or of redis-py's cluster client is
left held, each watched key holds its old or its new value, and the next calls from another
thread answer right.
"""

from __future__ import annotations

import contextlib
import gc
import json
import linecache
import os
import random
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from conftest import FORKS_BESIDE_A_THREAD
from cutting import PACKAGE_DIR, Point, cut_at_instruction
from servers import RedisCluster
from test_cluster_fork import LOCKS as FORK_LOCKS
from test_interrupt_engines import (
    NEW,
    NEW_M,
    POOL,
    PREFIXES,
    cut_where,
    engine_check,
    free_now,
    operations,
    prepare,
    release_entry,
    sweep,
)

from cacheplug import RedisCache
from cacheplug.backends import _redis_cluster as cluster
from cacheplug.backends._redis_cluster import PendingCluster

# Every point is cut where a connection is taken from a node's pool or given back, a pool
# wrapped, the client built under its lock or the slots asked for (the functions below, the
# comprehensions inside them included); of the others, a sample (each cut builds a cluster
# client: the whole sweep would take minutes).
HANDLING = frozenset(
    {"get_connection_noting", "release_closing", "close_when_cut_short", "__getattr__"}
)
CLUSTER_MODULE = "backends/_redis_cluster.py"
CLUSTER_HANDLING = [
    cluster.node_pipelines,
    cluster._read,
    cluster._cluster_client,
    cluster.refresh,
    cluster.PendingCluster.__getattr__,
    cluster._give_back,
]


def lines_of(function: Callable[..., Any]) -> range:
    code = function.__code__
    last = max(line for _, _, line in code.co_lines() if line is not None)
    return range(code.co_firstlineno, last + 1)


HANDLING_LINES = frozenset(
    f"{CLUSTER_MODULE}:{line}" for function in CLUSTER_HANDLING for line in lines_of(function)
)
SAMPLE = 6  # points cut per operation outside those
SEED = 21  # of the random node redis-py asks for the slots: each cut takes the census's path


def handling(point: Point) -> bool:
    """Whether every point of its kind is cut. The start of the pool's release is left out:
    a signal there keeps the connection taken, the known limit of test_interrupt_engines."""
    wanted = point.function in HANDLING or point.where in HANDLING_LINES
    return wanted and not release_entry(point)


def chosen(points: list[Point]) -> list[int]:
    """Every point ``handling``, and ``SAMPLE`` of the others spread over the call."""
    kept = [i for i, point in enumerate(points) if handling(point)]
    others = [i for i, point in enumerate(points) if i not in kept and not release_entry(point)]
    step = max(1, len(others) // SAMPLE)
    return sorted(kept + others[step // 2 :: step][:SAMPLE])


# the functions of a cluster cache's reset in a forked child (a node pool's, run for each node,
# is sampled)
RESETS = frozenset({"_reset_locks_in_child", "_after_fork_in_child", "after_fork_in_child"})
POOL_RESET = "pool_after_fork_in_child"
OP_NAMES = [op.name for op in operations("k", "m")]


def locks(cache: RedisCache) -> list[tuple[str, Any]]:
    """The locks a cluster call may take: the cache's client build and redis-py's."""
    found: list[tuple[str, Any]] = []
    if cache._pending is not None:
        found.append(("the client build's lock", cache._pending._lock))
    client = cache._client
    if not isinstance(client, PendingCluster):
        manager = client.nodes_manager
        found += [
            ("the cluster client's lock", client._lock),
            ("the nodes manager's lock", manager._lock),
            ("the nodes manager's initialization lock", manager._initialization_lock),
        ]
    return found


def cluster_pools(cache: RedisCache) -> list[str]:
    """No lock held, every connection of every node's pool back in it, none holding an unread
    reply."""
    problems = [f"{name} stays held" for name, lock in locks(cache) if not free_now(lock)]
    if problems:
        return problems
    client = cache._client
    if isinstance(client, PendingCluster):
        return problems
    for node in client.get_nodes():
        pool = node.redis_connection and node.redis_connection.connection_pool
        taken = len(pool._in_use_connections) if pool else 0
        idle = pool._available_connections if pool else []
        if taken:
            problems.append(
                f"{taken} connection(s) to {node.name} never given back (after {POOL} such "
                "cuts, every call to that node fails: its pool is full)"
            )
        if any(conn._sock is not None and conn.can_read() for conn in idle):
            problems.append(f"a pooled connection to {node.name} holds an unread reply")
    return problems


def spread_keys(cache: RedisCache, prefix: str | None) -> tuple[str, str]:
    """Two key names the cluster places on different nodes."""
    client = cache._client

    def node(name: str) -> str:
        return str(client.get_node_from_key((prefix or "") + name).name)

    names = [f"k{i}" for i in range(64)]
    other = next(name for name in names if node(name) != node(names[0]))
    return names[0], other


def make_cluster(cluster: RedisCluster, prefix: str | None, ready: bool = True) -> Any:
    """(make, k, m): ``make`` gives a cache with the watched keys set (``ready``: its client
    built; otherwise a fresh cache whose next call builds it), k and m on different nodes."""
    probe = RedisCache(startup_nodes=cluster.nodes, key_prefix=prefix)
    probe.get("x")
    keys = spread_keys(probe, prefix)
    probe.close()

    def make() -> RedisCache:
        for server in cluster.servers:
            server.flush()
            server.command("SCRIPT", "FLUSH")  # inc's first EVALSHA fails on every cut alike
        cache = RedisCache(startup_nodes=cluster.nodes, key_prefix=prefix, max_connections=POOL)
        prepare(cache, *keys)
        if not ready:  # a fresh cache: its next call builds the cluster client
            cache.close()
            cache = RedisCache(startup_nodes=cluster.nodes, key_prefix=prefix, max_connections=POOL)
        random.seed(SEED)  # redis-py picks the node it asks for the slots at random
        return cache

    return make, *keys


def cases(names: list[str], prefixes: list[str | None]) -> list[Any]:
    return [
        pytest.param(
            name,
            prefix,
            id=f"{name}-{'prefix' if prefix else 'plain'}",
        )
        for name in names
        for prefix in prefixes
    ]


def cut_everywhere(cluster: RedisCluster, name: str, prefix: str | None, ready: bool) -> None:
    make, k, m = make_cluster(cluster, prefix, ready)
    (op,) = (op for op in operations(k, m) if op.name == name)
    cuts, problems = sweep(make, op.run, engine_check(cluster_pools, op), chosen)
    assert cuts > 0
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("name", "prefix"), cases(OP_NAMES, PREFIXES))
def test_cluster_call_cut_short_anywhere(
    redis_cluster: RedisCluster, name: str, prefix: str | None
) -> None:
    cut_everywhere(redis_cluster, name, prefix, ready=True)


# the first call after the build: a lone key, and the slots asked for again
BUILDS = ["get", "clear"]


@pytest.mark.parametrize(("name", "prefix"), cases(BUILDS, [None]))
def test_cluster_first_call_cut_short_anywhere(
    redis_cluster: RedisCluster, name: str, prefix: str | None
) -> None:
    """The first call of a fresh cache builds the cluster client (under the build's lock),
    wraps each node's pool, then runs; cut short anywhere, the next calls build or use it."""
    cut_everywhere(redis_cluster, name, prefix, ready=False)


def listing_commands(point: Point) -> bool:
    """A comprehension of the cluster module: the first in set_many lists the commands of a
    node whose connection node_pipelines took (from 3.12 it runs in node_pipelines' frame)."""
    if not point.where.startswith(CLUSTER_MODULE):
        return False
    if sys.version_info < (3, 12):
        return point.function == "<listcomp>"
    path, line = point.where.rsplit(":", 1)
    return "for i in indexes]" in linecache.getline(PACKAGE_DIR + path, int(line))


def giving_back(point: Point) -> bool:
    return point.function == "release_closing" and not point.start


@pytest.mark.parametrize(
    ("run", "where"),
    [
        pytest.param(
            lambda c, k, m: c.set_many({k: NEW, m: NEW_M}),
            listing_commands,
            id="sending",
        ),
        pytest.param(
            lambda c, k, m: c.get_many(k, m),
            giving_back,
            id="giving-back",
        ),
    ],
)
def test_cluster_batches_cut_short_leave_the_node_pools_usable(
    redis_cluster: RedisCluster, run: Callable[[Any, str, str], Any], where: Callable[[Point], bool]
) -> None:
    """What a user sees of connections never given back: once ``max_connections`` batches
    were cut short there, every call to the node fails."""
    make, k, m = make_cluster(redis_cluster, None)
    cache = make()
    for _ in range(POOL):
        cut_where(cache, lambda c: run(c, k, m), where)
    assert cache.set_many({k: NEW, m: NEW_M}) == [k, m]
    assert cache.get_many(k, m) == [NEW, NEW_M]
    assert cache.set(m, 1) is True
    cache.close()


# -- the reset in a forked child cut short ---------------------------------------------------

CHILD_WAIT = 10.0  # seconds a child has for its checks before it reports a hang


def held_locks(cache: RedisCache) -> dict[str, Any]:
    """The locks the child's reset renews: those of the cluster client (test_cluster_fork's
    LOCKS) and of each node's pool."""
    client = cache._client
    found = {name: lock_of(client) for name, lock_of in FORK_LOCKS.items()}
    for node in client.get_nodes():
        if node.redis_connection is not None:
            found[f"the pool of {node.name}"] = node.redis_connection.connection_pool._lock
    return found


def fork_cut(cache: RedisCache, n: int) -> dict[str, Any]:
    """Fork while another thread holds every lock of ``held_locks``, the child's reset cut at
    its ``n``-th point (0: none, the child reports the points instead); what the child saw."""
    locks = held_locks(cache)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with contextlib.ExitStack() as stack:
            for lock in locks.values():
                stack.enter_context(lock)
            holding.set()
            release.wait(CHILD_WAIT)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(CHILD_WAIT)
    read, write = os.pipe()
    points: list[Point] = []
    # No collection (and no finalizer, cut) in the child: off before the fork, not a
    # gc.collect() there, which costs a whole heap's scan per fork late in a long run.
    collecting, parent = gc.isenabled(), os.getpid()
    gc.disable()
    try:
        outcome = cut_at_instruction(n, os.fork, points if n == 0 else None)
    finally:
        if collecting and os.getpid() == parent:
            gc.enable()
    if outcome.result == 0:  # pragma: no cover (the child process)
        report: dict[str, Any] = {"cut": outcome.cut, "problems": []}
        try:
            signal.setitimer(signal.ITIMER_REAL, CHILD_WAIT)  # a hang ends the child
            report["points"] = [(p.where, p.function, p.start) for p in points]
            if n:
                report["problems"] = child_problems(cache, locks)
        finally:
            os.write(write, json.dumps(report).encode())
            os._exit(0)
    os.close(write)
    release.set()
    holder.join(CHILD_WAIT)
    with os.fdopen(read) as pipe:  # read first: a report beyond the pipe's 64 KiB waits for it
        text = pipe.read()
    _, status = os.waitpid(outcome.result, 0)
    if not text:
        return {"cut": True, "problems": [f"the child hung (status {status})"], "points": []}
    found: dict[str, Any] = json.loads(text)
    return found


def child_problems(cache: RedisCache, locks: dict[str, Any]) -> list[str]:
    """In the child: the locks renewed (the old ones stay held by a thread the child lacks),
    and the next calls right."""
    problems = [
        f"{name} is the parent's, held"
        for name, lock in held_locks(cache).items()
        if lock is locks.get(name) and not free_in_child(lock)
    ]
    if problems:
        return problems
    if cache.set("k", NEW) is not True or cache.get_many("k", "x") != [NEW, None]:
        problems.append("set/get_many went wrong")
    if cache.clear() is not True or cache.get("k") is not None:
        problems.append("clear went wrong")
    return problems


def free_in_child(lock: Any) -> bool:
    if not lock.acquire(blocking=False):
        return False
    lock.release()
    return True


REDIS_FILES = ("backends/redis.py", "backends/_redis")
OTHERS_SAMPLE = 40  # points of the other caches' resets cut


def reset_cut(where: str, function: str, start: bool) -> bool:
    """A point of the reset cut every time: the hook's own start is out of reach (CPython
    calls it; nothing there can catch what a signal raises), as the pool release's start."""
    return function in RESETS and not (function == "_reset_locks_in_child" and start)


@FORKS_BESIDE_A_THREAD
def test_cluster_reset_in_a_forked_child_cut_short_anywhere(redis_cluster: RedisCluster) -> None:
    """A signal handler's exception in the child's reset (an at-fork hook: CPython prints it
    and goes on) while a parent thread held the cluster's locks at the fork: the child still
    answers, every lock renewed."""
    make, _, _ = make_cluster(redis_cluster, None)
    cache = make()
    census = fork_cut(cache, 0)["points"]
    assert census
    wanted = [i + 1 for i, point in enumerate(census) if reset_cut(*point)]
    # the reset runs over every live cache, and earlier tests leave some: every point in
    # Redis's code, a sample of the others
    others = [n for n in wanted if not census[n - 1][0].startswith(REDIS_FILES)]
    wanted = [n for n in wanted if census[n - 1][0].startswith(REDIS_FILES)]
    wanted += others[:: max(1, len(others) // OTHERS_SAMPLE)]
    pools = [i + 1 for i, (_, function, _) in enumerate(census) if function == POOL_RESET]
    wanted = sorted(wanted + pools[:: max(1, len(pools) // SAMPLE)])
    problems = []
    for n in wanted:
        seen = fork_cut(cache, n)
        problems += [f"cut at {census[n - 1][0]} (#{n}): {p}" for p in seen["problems"]]
        if not seen["cut"]:
            problems.append(f"#{n}: the child took another path than in the census")
    cache.close()
    assert not problems, "\n".join(problems)
