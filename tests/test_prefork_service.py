"""A pre-fork web service on every engine, end to end (tests/prefork_app.py is the service).

The master process builds its caches from URLs and uses them before forking four workers of
four threads each, as gunicorn --preload does. No reply may cross between processes (every
value is derived from its key), no call may raise or hang, counters on a shared engine add up
exactly, and closing the caches leaves no socket open.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import MemcachedServer, RedisCluster, RedisServer
from waiting import wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

APP = Path(__file__).with_name("prefork_app.py")
WORKERS, THREADS = 4, 4
WORKER_DEADLINE = 20.0  # seconds a worker may run before it dumps its threads and exits
RUN_BOUND = 40.0  # seconds the whole service may take before the test kills it


@contextlib.contextmanager
def started(*servers: RedisServer | MemcachedServer) -> Iterator[None]:
    """The servers started for the block, killed after it (nothing is kept)."""
    try:
        for server in servers:
            server.start()
        yield
    finally:
        for server in servers:
            server.kill()
            server.stop()


@pytest.fixture
def fresh_memcached_pair() -> Iterator[tuple[MemcachedServer, MemcachedServer]]:
    servers = (MemcachedServer(), MemcachedServer())
    with started(*servers):
        yield servers


def engine_urls(
    tmp_path: Path,
    redis: RedisServer,
    memcached: tuple[MemcachedServer, MemcachedServer],
    cluster: RedisCluster | None = None,
) -> dict[str, str]:
    """One URL per engine, each under a prefix of its own so runs never meet."""
    run = uuid.uuid4().hex[:8]
    first, second = memcached
    urls = {
        "simple": "simple://?threshold=100000",
        "file": f"file://{tmp_path / 'files'}",
        "redis": f"redis://{redis.host}:{redis.port}/0?key_prefix=r{run}:&secret=s3cr3t-{run}",
        "memcached": (
            f"memcached://{first.host}:{first.port},{second.host}:{second.port}?key_prefix=m{run}"
        ),
    }
    if cluster is not None:
        urls["cluster"] = f"{cluster.url}?key_prefix=c{run}:"
    return urls


def start_service(tmp_path: Path, urls: dict[str, str], **options: Any) -> subprocess.Popen[str]:
    """The pre-fork service running in a process of its own."""
    config = {
        "urls": urls,
        "dir": str(tmp_path),
        "workers": WORKERS,
        "threads": THREADS,
        "rounds": 40,
        "mode": "run",
        "worker_deadline": WORKER_DEADLINE,
        **options,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return subprocess.Popen(
        [sys.executable, str(APP), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(service: subprocess.Popen[str]) -> dict[str, Any]:
    """The service's report, once it ended within the bound (killed with its workers if not)."""
    try:
        out, err = service.communicate(timeout=RUN_BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(service.pid, signal.SIGUSR1)  # every process dumps its threads
        try:
            out, err = service.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            out, err = service.communicate()
        pytest.fail(f"the service hung; its threads:\n{err[-6000:]}")
    assert service.returncode == 0, err[-6000:]
    report: dict[str, Any] = json.loads(out)
    report["stderr"] = err
    report["ports"] = engine_ports(report)
    return report


def engine_ports(report: dict[str, Any]) -> dict[int, str]:
    """Which engine listens on each port named in the report's URLs."""
    ports: dict[int, str] = {}
    for name, url in report["urls"].items():
        for address in url.split("://", 1)[1].split("?")[0].split("/")[0].split(","):
            if ":" in address:
                ports[int(address.rsplit(":", 1)[1])] = name
    return ports


def check_answers(report: dict[str, Any]) -> None:
    """Every process answered every call rightly, none raised, none hung, none kept a socket."""
    assert report["statuses"] == [0] * WORKERS, report["stderr"][-6000:]
    master = report["master"]
    assert master["wrong"] == [] and master["raised"] == []
    assert not master["held_alive"]
    assert master["sockets_after_close"] == []
    for worker in report["workers"]:
        assert worker["wrong"] == [], worker["wrong"]
        assert worker["raised"] == [], worker["raised"][0]
        assert worker["sockets_after_close"] == [], (worker, report["ports"])


def check_counters(report: dict[str, Any]) -> None:
    """Shared engines: the final counter is every increment made; memory: each its own."""
    workers, master = report["workers"], report["master"]
    for name, final in report["final"].items():
        if name == "simple":
            for worker in workers:
                assert worker["end"][name] == worker["start"][name] + worker["incs"][name]
            assert final == report["start"][name] + master["incs"].get(name, 0)
        else:
            made = sum(worker["incs"][name] for worker in workers)
            assert final == report["start"][name] + master["incs"].get(name, 0) + made, name


def test_workers_forked_from_a_warmed_master_answer_rightly_on_every_engine(
    tmp_path: Path,
    redis_server: RedisServer,
    fresh_memcached_pair: tuple[MemcachedServer, MemcachedServer],
    redis_cluster: RedisCluster,
) -> None:
    urls = engine_urls(tmp_path, redis_server, fresh_memcached_pair, redis_cluster)
    report = finish(start_service(tmp_path, urls, busy_master=True))
    check_answers(report)
    check_counters(report)
    assert report["master"]["errors"] == dict.fromkeys(urls, 0)
    for worker in report["workers"]:
        assert worker["ops"] >= THREADS * 40 * len(urls) * 7
        assert worker["warnings"] == 0


@pytest.fixture(scope="module")
def forked_during_calls(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The service's report when, at each fork, a master thread runs a get_or_set factory on
    every cache (its single-flight lock held) and another waits for a get's reply from a
    paused redis and memcached (resumed once the workers are forked)."""
    tmp_path = tmp_path_factory.mktemp("in-flight")
    redis, first, second = RedisServer(), MemcachedServer(), MemcachedServer()
    with started(redis, first, second):
        urls = engine_urls(tmp_path, redis, (first, second))
        urls["memcached"] += "&timeout=5"  # its reply comes once the workers are forked
        paused = {
            "redis": [{"pid": redis.pid, "port": redis.port}],
            "memcached": [{"pid": server.pid, "port": server.port} for server in (first, second)],
        }
        yield finish(start_service(tmp_path, urls, hold=True, pause=paused))


def test_workers_forked_while_master_threads_are_inside_calls_answer_rightly(
    forked_during_calls: dict[str, Any],
) -> None:
    report = forked_during_calls
    check_answers(report)
    check_counters(report)
    assert report["master"]["errors"] == dict.fromkeys(report["urls"], 0)


def test_a_worker_forked_during_a_call_in_flight_keeps_no_copy_of_its_socket(
    forked_during_calls: dict[str, Any],
) -> None:
    for worker in forked_during_calls["workers"]:
        assert worker["sockets_after_close"] == [], forked_during_calls["ports"]


@pytest.mark.parametrize("engine", ["redis", "memcached"])
def test_workers_ride_out_an_engine_killed_and_restarted_mid_run(
    tmp_path: Path,
    engine: str,
    fresh_redis_server: RedisServer,
    fresh_memcached_pair: tuple[MemcachedServer, MemcachedServer],
) -> None:
    urls = engine_urls(tmp_path, fresh_redis_server, fresh_memcached_pair)
    urls = {"simple": urls["simple"], engine: urls[engine]}
    servers: list[RedisServer | MemcachedServer] = (
        [fresh_redis_server] if engine == "redis" else list(fresh_memcached_pair)
    )
    service = start_service(tmp_path, urls, mode="outage", rounds=0)
    try:
        each_worker_marks(tmp_path, "ready")
        (tmp_path / "killed").touch()  # before the kill: a failure is then expected
        for server in servers:
            server.kill()
        each_worker_marks(tmp_path, "outage")
        for server in servers:
            server.restart()
        (tmp_path / "restarted").touch()
        each_worker_marks(tmp_path, "recovered")
    finally:
        (tmp_path / "stop").touch()
    report = finish(service)
    check_answers(report)
    for worker in report["workers"]:
        assert worker["saw_outage"] and worker["recovered"]
        assert worker["outage_answers"] > 0
        assert worker["warnings"] >= 1  # the outage was logged in every worker


def each_worker_marks(directory: Path, stage: str) -> None:
    """Wait (bounded) until every worker left its marker file for ``stage``."""
    wait_until(
        lambda: all((directory / f"w{index}.{stage}").exists() for index in range(WORKERS)),
        timeout=15,
    )


def test_workers_forked_while_a_master_thread_holds_a_redis_pool_lock_do_not_hang(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # a master thread preempted inside redis-py's pool bookkeeping (its lock held) at the fork:
    # redis-py's first call in the child resets the pool under that lock. Forking 800 times
    # while a master thread served redis hung one child this way (tests/prefork_app.py storm)
    urls = {"redis": f"{redis_server.url}?key_prefix=p{uuid.uuid4().hex[:8]}:"}
    report = finish(start_service(tmp_path, urls, hold_pool=["redis"], worker_deadline=5.0))
    check_answers(report)
    check_counters(report)
