"""A Redis Cluster cache in a child forked while a thread of the parent was inside redis-py's
cluster code (asking for the topology, building the client, holding one of its locks), and a
cluster cache dropped without ``close()``.

Every fork happens in a helper process (this file run as a script), never in pytest's: a thread
of the helper holds the lock, the helper forks, and the child must answer within
``CHILD_WAIT``. The cluster is this module's own, as some cases pause its nodes.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import RedisCluster

import cacheplug
from cacheplug import RedisCache
from cacheplug.backends import _redis_cluster

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILD_WAIT = 4.0  # seconds a child has for all its calls before it reports a hang
HELPER_WAIT = 30.0  # seconds a helper process has, hangs of its child included
PAUSE_MS = 1000  # how long paused nodes keep a parent thread inside the cluster's code
HUNG, RAISED = 3, 5  # exit codes of a failing child

# What the child is asked, and the answers of a child that was not blocked: "k" is 1 in the
# cluster before the fork; a closed cache connects again at its next call.
CHILD_CALLS = (
    "get k",
    "set c",
    "get_many k c",
    "clear",
    "get k after clear",
    "close",
    "set d after close",
)
ANSWERS = ["1", "True", "[1, 2]", "True", "None", "None", "True"]

# Locks of redis-py's RedisCluster, each held by a parent thread at the fork.
LOCKS: dict[str, Callable[[Any], Any]] = {
    # finding a node's client, closing the client
    "cluster": lambda client: client._lock,
    # every command's slot lookup, a MOVED reply, the end of a topology refresh
    "nodes manager": lambda client: client.nodes_manager._lock,
    # a whole topology refresh: clear(), a lost node, every fifth MOVED
    "topology refresh": lambda client: client.nodes_manager._initialization_lock,
    # listeners told about new node pools and a refreshed topology
    "event dispatcher": lambda client: client.nodes_manager._event_dispatcher._lock,
    # a node's connection pool
    "node pool": lambda client: client.get_nodes()[0].redis_connection.connection_pool._lock,
}


# -- the helper process ----------------------------------------------------------------------


def _calls(cache: RedisCache) -> list[Callable[[], Any]]:
    return [
        lambda: cache.get("k"),
        lambda: cache.set("c", 2),
        lambda: cache.get_many("k", "c"),
        cache.clear,
        lambda: cache.get("k"),
        cache.close,
        lambda: cache.set("d", 3),
    ]


def _fork_and_ask(cache: RedisCache, release: threading.Event) -> dict[str, Any]:
    """Fork; the child makes the calls of ``CHILD_CALLS`` from the forking thread (a new
    thread could get the ident of the parent thread holding an RLock) and sends the answers
    back. The parent releases its thread right after the fork."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child process)
        os.close(read)
        answers: list[str] = []

        def report(code: int) -> None:
            os.write(write, json.dumps(answers).encode())
            os._exit(code)

        # a blocked lock acquire is interrupted to run this handler
        signal.signal(signal.SIGALRM, lambda *_: report(HUNG))
        signal.setitimer(signal.ITIMER_REAL, CHILD_WAIT)
        try:
            for call in _calls(cache):
                answers.append(repr(call()))
        except BaseException as err:
            answers.append(f"raised {err!r}")
            report(RAISED)
        report(0)
    os.close(write)
    release.set()
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        answers = json.loads(pipe.read() or "[]")
    return {"code": os.waitstatus_to_exitcode(status), "answers": answers}


def _wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + CHILD_WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the parent thread never got {what}")
        time.sleep(0.01)


def _held_by_another_thread(lock: Any) -> bool:
    if lock.acquire(blocking=False):
        lock.release()
        return False
    return True


def _pause(nodes: list[tuple[str, int]]) -> None:
    import redis

    for host, port in nodes:
        with redis.Redis(host, port) as node:
            node.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")


def helper(case: str, nodes: list[tuple[str, int]], prefix: str) -> dict[str, Any]:
    """Run ``case`` in this process: a thread inside the cluster's code, a fork, the child's
    answers."""
    cache = RedisCache(startup_nodes=nodes, key_prefix=prefix, socket_timeout=CHILD_WAIT)
    setter = RedisCache(startup_nodes=nodes, key_prefix=prefix)
    setter.set("k", 1)
    setter.close()
    release = threading.Event()
    if case == "first connection":  # the PendingCluster's lock, held while the client is built
        _pause(nodes)
        thread = threading.Thread(target=lambda: cache.get("k"), daemon=True)
        thread.start()
        pending = cache._pending
        assert pending is not None
        _wait_for("the builder's lock", pending._lock.locked)
    elif case == "in a refresh":  # what clear() does first, waiting for the paused nodes
        cache.get("k")
        _pause(nodes)
        thread = threading.Thread(target=_redis_cluster.refresh, args=(cache._client,))
        thread.start()
        manager = cache._client.nodes_manager
        _wait_for("the refresh", lambda: _held_by_another_thread(manager._initialization_lock))
    else:
        cache.get("k")
        lock, entered = LOCKS[case](cache._client), threading.Event()

        def hold() -> None:
            with lock:
                entered.set()
                release.wait(HELPER_WAIT)

        thread = threading.Thread(target=hold, daemon=True)
        thread.start()
        assert entered.wait(CHILD_WAIT)
    result = _fork_and_ask(cache, release)
    thread.join(HELPER_WAIT)
    return result


def dropped(url: str) -> dict[str, Any]:
    """Warnings and sockets left by cluster caches dropped without ``close()``."""
    unraisable: list[str] = []
    sys.unraisablehook = lambda hook: unraisable.append(repr(hook.exc_value))

    def sockets() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # closed since it was listed
                count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        return count

    gc.collect()
    before = sockets()
    for use in ("get", "get_many", "clear", "close and get"):
        for _ in range(3):
            cache = cacheplug.from_url(url)
            cache.get("k")
            if use == "get_many":
                cache.get_many("a", "b", "c")
            elif use == "clear":
                cache.clear()
            elif use == "close and get":
                cache.close()
                cache.get("k")
            del cache
            gc.collect()
    return {"warnings": unraisable, "sockets": sockets() - before}


# -- the tests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as own:
        yield own


def run_helper(*args: str, warnings_as_errors: bool = False) -> dict[str, Any]:
    """Run this file as a helper process, on the cacheplug this test imported."""
    root = Path(cacheplug.__file__).parents[1]
    path = os.pathsep.join([str(root), str(Path(__file__).parent)])
    flags = ["-W", "error::ResourceWarning"] if warnings_as_errors else []
    done = subprocess.run(
        [sys.executable, *flags, __file__, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=HELPER_WAIT,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize(
    "case",
    [
        "first connection",
        "in a refresh",
        *LOCKS,
    ],
)
def test_child_answers_whatever_the_parent_thread_held(
    cluster: RedisCluster, case: str, request: pytest.FixtureRequest
) -> None:
    prefix = f"fork{os.getpid()}-{request.node.callspec.indices['case']}:"
    result = run_helper(case, json.dumps(cluster.nodes), prefix)
    assert result == {"code": 0, "answers": ANSWERS}, dict(
        zip(CHILD_CALLS, result["answers"], strict=False)
    )


def test_a_dropped_cluster_cache_closes_its_sockets_without_a_warning(
    cluster: RedisCluster,
) -> None:
    # A RedisCluster is freed only by the cycle collector, which may finalize its sockets
    # before its __del__ closes them: one "unclosed socket" warning per cache, fds still freed.
    assert run_helper("dropped", cluster.url, warnings_as_errors=True) == {
        "warnings": [],
        "sockets": 0,
    }


if __name__ == "__main__":  # the helper process
    if sys.argv[1] == "dropped":
        print(json.dumps(dropped(sys.argv[2])))
    else:
        print(json.dumps(helper(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3])))
    sys.exit(0)
