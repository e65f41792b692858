"""A pre-fork service, as gunicorn --preload runs one, for tests/test_prefork_service.py.

The master builds its caches from URLs, uses each of them (so connections are open and locks
were taken), then forks workers that share those cache objects, each calling them from several
threads on keys whose right answer is known: a value is derived from its key, counters are
counted by who incremented them. Every worker writes a JSON report; the master waits for them
within a bound, kills stragglers and prints one JSON report on stdout.

Run: ``python tests/prefork_app.py CONFIG.json``; the test writes the configuration. In the
``outage`` mode the test kills and restarts the engine while the workers run, and talks to them
through marker files in the configuration's directory.
"""

from __future__ import annotations

import faulthandler
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cacheplug import BaseCache, from_url

COUNTER = "hits"
HUNG = 3  # exit code of a worker killed by its own deadline


def expected(key: str) -> list[Any]:
    """The only value any process ever stores under ``key``."""
    return ["v", key, len(key) * 7]


def engine_sockets() -> list[int]:
    """The peer ports of this process's open TCP sockets (the engines are its only peers)."""
    ports = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if not target.startswith("socket:"):
            continue
        try:
            sock = socket.socket(fileno=int(fd))
        except OSError:
            continue
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    ports.append(sock.getpeername()[1] * 100000 + sock.getsockname()[1])
                except OSError:
                    ports.append(0)  # not connected (any more)
        finally:
            sock.detach()
    return sorted(ports)


class Counting(logging.Handler):
    """Counts the warnings on the ``cacheplug`` logger."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


class Tally:
    """What one process saw: wrong replies, exceptions, its successful increments."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wrong: list[str] = []
        self.raised: list[str] = []
        self.incs: dict[str, int] = {}
        self.ops = 0
        self.outage_answers = 0

    def bad(self, where: str, got: object) -> None:
        with self.lock:
            if len(self.wrong) < 20:
                self.wrong.append(f"{where}: {got!r}"[:300])

    def exception(self, where: str) -> None:
        with self.lock:
            if len(self.raised) < 20:
                self.raised.append(f"{where}: {traceback.format_exc()[-1500:]}")

    def counted(self, name: str, ops: int, incs: int, outage: int) -> None:
        with self.lock:
            self.incs[name] = self.incs.get(name, 0) + incs
            self.ops += ops
            self.outage_answers += outage


class Marker:
    """A marker file the test and the workers use to tell each other where the run is."""

    def __init__(self, directory: str, name: str) -> None:
        self.path = Path(directory) / name

    def __bool__(self) -> bool:
        return self.path.exists()

    def set(self) -> None:
        self.path.touch()


def build(config: dict[str, Any]) -> dict[str, tuple[BaseCache, Callable[[int], list[Any]]]]:
    """The master's caches from their URLs, each with a memoized function over it."""
    caches: dict[str, tuple[BaseCache, Callable[[int], list[Any]]]] = {}
    for name, url in config["urls"].items():
        cache = from_url(url)

        def square(x: int) -> list[Any]:
            return ["m", x, x * x]

        caches[name] = (cache, cache.memoize(timeout=0)(square))
    return caches


def warm(caches: dict[str, tuple[BaseCache, Callable[[int], list[Any]]]]) -> dict[str, int]:
    """Use every cache once before the fork, as a start-up health check would; the counters."""
    start: dict[str, int] = {}
    for name, (cache, square) in caches.items():
        checks = [
            cache.set("warm", expected("warm")) is True,
            cache.get("warm") == expected("warm"),
            cache.get_or_set("gos", lambda: expected("gos")) == expected("gos"),
            square(3) == ["m", 3, 9],
            square(3) == ["m", 3, 9],
        ]
        start[name] = cache.inc(COUNTER) or 0
        if not all(checks) or start[name] < 1:
            raise SystemExit(f"warm-up failed on {name}: {checks} {start[name]}")
    return start


def mixed_calls(
    tally: Tally,
    who: str,
    caches: dict[str, tuple[BaseCache, Callable[[int], list[Any]]]],
    rounds: int,
    outage_allowed: Callable[[], bool],
    keep_going: Callable[[int], bool],
    on_round: Callable[[str, bool], None] = lambda name, ok: None,
) -> None:
    """Mixed calls on every cache until ``keep_going`` says stop, each reply checked."""
    i = 0
    while keep_going(i):
        for name, (cache, square) in caches.items():
            own = f"{who}:{i % 8}"
            shared = f"s:{i % 16}"
            ops = incs = outage = 0
            round_ok = True
            where = f"{name} {who} round {i}"
            try:
                stored = cache.set(own, expected(own))
                ops += 1
                if stored is not True:
                    round_ok = False
                    if stored is False and outage_allowed():
                        outage += 1
                    else:
                        tally.bad(f"{where} set", stored)
                got = cache.get(own)
                ops += 1
                if got != expected(own):
                    round_ok = False
                    if got is None and (outage_allowed() or stored is not True):
                        outage += 1
                    else:
                        tally.bad(f"{where} get {own}", got)
                count = cache.inc(COUNTER)
                ops += 1
                if type(count) is int and count >= 1:
                    incs += 1
                elif count is None and outage_allowed():
                    outage += 1
                    round_ok = False
                else:
                    tally.bad(f"{where} inc", count)
                keys = [own, shared, f"s:{(i + 5) % 16}", "never:set", "warm"]
                values = cache.get_many(*keys)
                ops += 1
                if len(values) != len(keys):
                    tally.bad(f"{where} get_many length", values)
                for key, value in zip(keys, values, strict=False):
                    if value is not None and value != expected(key):
                        tally.bad(f"{where} get_many {key}", value)
                cache.set(shared, expected(shared))
                ops += 1
                made = cache.get_or_set(f"g:{i % 16}", lambda i=i: expected(f"g:{i % 16}"))
                ops += 1
                if made != expected(f"g:{i % 16}"):
                    tally.bad(f"{where} get_or_set", made)
                result = square(i % 10)
                ops += 1
                if result != ["m", i % 10, (i % 10) ** 2]:
                    tally.bad(f"{where} memoize", result)
            except Exception:
                round_ok = False
                tally.exception(where)
            tally.counted(name, ops, incs, outage)
            on_round(name, round_ok)
        i += 1
        if rounds == 0:
            threading.Event().wait(0.002)  # outage runs go on until told; no busy spin


def worker(
    index: int,
    config: dict[str, Any],
    caches: dict[str, tuple[BaseCache, Callable[[int], list[Any]]]],
) -> None:
    """One forked worker: threads of mixed calls, then a report in ``w<index>.json``."""
    directory = config["dir"]
    faulthandler.dump_traceback_later(config["worker_deadline"], exit=True)
    handler = Counting()
    logging.getLogger("cacheplug").addHandler(handler)
    report: dict[str, Any] = {"pid": os.getpid(), "sockets_at_start": engine_sockets()}
    tally = Tally()
    go = Marker(directory, "go")
    while not go:  # the master releases the workers together, after its own checks
        threading.Event().wait(0.002)
    start = {}
    for name, (cache, _) in caches.items():
        start[name] = cache.get(COUNTER)
    killed, restarted, stop = (Marker(directory, n) for n in ("killed", "restarted", "stop"))
    outage_mode = config["mode"] == "outage"
    rounds = config["rounds"]
    threads = config["threads"]
    recovered = [False] * threads
    saw_outage = [False] * threads
    ready = [False] * threads

    def run(t: int) -> None:
        def on_round(name: str, ok: bool) -> None:
            if not outage_mode:
                return
            if ok and not killed:
                ready[t] = True
            if not ok and killed and not restarted:
                saw_outage[t] = True
            if ok and restarted:
                recovered[t] = True

        def keep_going(i: int) -> bool:
            if outage_mode:
                if all(ready) and not Marker(directory, f"w{index}.ready"):
                    Marker(directory, f"w{index}.ready").set()
                if all(saw_outage) and not Marker(directory, f"w{index}.outage"):
                    Marker(directory, f"w{index}.outage").set()
                if all(recovered) and not Marker(directory, f"w{index}.recovered"):
                    Marker(directory, f"w{index}.recovered").set()
                return not stop
            return i < rounds

        mixed_calls(
            tally,
            f"w{index}:t{t}",
            caches,
            rounds if not outage_mode else 0,
            lambda: outage_mode and bool(killed),
            keep_going,
            on_round,
        )

    workers = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    report["end"] = {name: cache.get(COUNTER) for name, (cache, _) in caches.items()}
    report["sockets_before_close"] = engine_sockets()
    for cache, _ in caches.values():
        cache.close()
    gc.collect()
    report["sockets_after_close"] = engine_sockets()
    report.update(
        start=start,
        incs=tally.incs,
        ops=tally.ops,
        outage_answers=tally.outage_answers,
        wrong=tally.wrong,
        raised=tally.raised,
        warnings=handler.count,
        recovered=all(recovered),
        saw_outage=all(saw_outage),
    )
    Path(directory, f"w{index}.json").write_text(json.dumps(report))


def hold_during_fork(
    caches: dict[str, tuple[BaseCache, Callable[[int], list[Any]]]],
    tally: Tally,
    release: threading.Event,
) -> list[threading.Thread]:
    """Master threads inside cache calls at the fork: a get_or_set factory holding the
    single-flight lock on every cache, and a reply awaited from a paused engine."""
    held = []
    for name, (cache, _) in caches.items():
        entered = threading.Event()

        def factory(entered: threading.Event = entered) -> list[Any]:
            entered.set()
            release.wait(10)
            return expected("held")

        def hold(cache: BaseCache = cache, factory: Any = factory, name: str = name) -> None:
            try:
                if cache.get_or_set("held", factory) != expected("held"):
                    tally.bad(f"{name} master get_or_set held", "wrong")
            except Exception:
                tally.exception(f"{name} master held")

        thread = threading.Thread(target=hold, daemon=True)
        thread.start()
        if not entered.wait(10):
            raise SystemExit(f"the held get_or_set on {name} never started")
        held.append(thread)
    return held


def in_flight(
    caches: dict[str, tuple[BaseCache, Callable[[int], list[Any]]]],
    config: dict[str, Any],
    tally: Tally,
) -> list[threading.Thread]:
    """For each engine named in ``pause``: stop its server, start a get in a master thread and
    return once its request waits unread in the server's socket."""
    threads = []
    for name, targets in config.get("pause", {}).items():
        cache = caches[name][0]
        for target in targets:
            os.kill(target["pid"], signal.SIGSTOP)

        def ask(cache: BaseCache = cache, name: str = name) -> None:
            try:
                got = cache.get("warm")
                if got != expected("warm"):
                    tally.bad(f"{name} master get in flight at the fork", got)
            except Exception:
                tally.exception(f"{name} master in flight")

        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        deadline = time.monotonic() + 5
        while not any(unread_request(target["port"]) for target in targets):
            if time.monotonic() > deadline:
                raise SystemExit(f"the request to {name} never reached its socket")
            threading.Event().wait(0.001)
        threads.append(thread)
    return threads


def hold_pool_lock(cache: BaseCache, release: threading.Event) -> threading.Thread:
    """A master thread holding the lock of a RedisCache's redis-py pool until ``release``, as
    one preempted in the pool's bookkeeping (taking or giving back a connection) holds it."""
    pool = cache._write_client.connection_pool  # type: ignore[attr-defined]
    entered = threading.Event()

    def hold() -> None:
        with pool._lock:
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    if not entered.wait(10):
        raise SystemExit("the pool's lock was never taken")
    return thread


def unread_request(port: int) -> bool:
    """A connection to ``port`` on this host has bytes the server has not read yet."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            rx_queue = int(fields[4].split(":")[1], 16)
            if local_port == port and rx_queue > 0:
                return True
    return False


def storm(
    config: dict[str, Any], caches: dict[str, tuple[BaseCache, Callable[[int], list[Any]]]]
) -> dict[str, int]:
    """Fork short-lived children one after another while a master thread keeps calling the
    caches; each child makes one read of every cache. Exit codes counted by kind."""
    outcomes: dict[str, int] = {}
    for _ in range(config["forks"]):
        pid = os.fork()
        if pid == 0:  # the child
            code = 5
            try:
                faulthandler.dump_traceback_later(config["child_deadline"], exit=True)
                answers = [cache.get("warm") for cache, _ in caches.values()]
                code = 0 if answers == [expected("warm")] * len(caches) else 4
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        kind = {0: "ok", 1: "hung", 4: "wrong", 5: "raised"}.get(code, str(code))
        outcomes[kind] = outcomes.get(kind, 0) + 1
    return outcomes


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    # a watchdog thread armed here would not exist in the workers: SIGUSR1 dumps instead
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    caches = build(config)
    start = warm(caches)
    tally = Tally()
    busy_stop = threading.Event()
    # a master thread still serving (a health check, a warming loop) while the workers fork
    busy = threading.Thread(
        target=mixed_calls,
        args=(tally, "master", caches, 0, lambda: False, lambda i: not busy_stop.is_set()),
        daemon=True,
    )
    release = threading.Event()
    held: list[threading.Thread] = []
    if config.get("busy_master"):
        busy.start()
    if config["mode"] == "storm":
        outcomes = storm(config, caches)
        busy_stop.set()
        busy.join(10)
        print(json.dumps({"outcomes": outcomes, "wrong": tally.wrong, "raised": tally.raised}))
        return
    if config.get("hold"):
        held = hold_during_fork(caches, tally, release) + in_flight(caches, config, tally)
    for name in config.get("hold_pool", ()):
        held.append(hold_pool_lock(caches[name][0], release))
    pids = []
    for index in range(config["workers"]):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                worker(index, config, caches)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    for targets in config.get("pause", {}).values():
        for target in targets:
            os.kill(target["pid"], signal.SIGCONT)
    release.set()
    for thread in held:
        thread.join(10)
    held_alive = sum(thread.is_alive() for thread in held)
    Marker(config["dir"], "go").set()
    statuses = wait_workers(pids, config["worker_deadline"] + 5)
    busy_stop.set()
    if busy.is_alive():
        busy.join(10)
    reports = []
    for index in range(config["workers"]):
        path = Path(config["dir"], f"w{index}.json")
        reports.append(json.loads(path.read_text()) if path.exists() else None)
    final = {name: cache.get(COUNTER) for name, (cache, _) in caches.items()}
    for cache, _ in caches.values():
        cache.close()
    gc.collect()
    print(
        json.dumps(
            {
                "urls": config["urls"],
                "start": start,
                "statuses": statuses,
                "workers": reports,
                "final": final,
                "master": {
                    "incs": tally.incs,
                    "ops": tally.ops,
                    "wrong": tally.wrong,
                    "raised": tally.raised,
                    "held_alive": held_alive or busy.is_alive(),
                    "errors": {name: c.stats()["errors"] for name, (c, _) in caches.items()},
                    "sockets_after_close": engine_sockets(),
                },
            }
        )
    )


def wait_workers(pids: list[int], bound: float) -> list[int | str]:
    """Each worker's exit code; one still running after ``bound`` seconds is killed, 'hung'."""
    deadline = time.monotonic() + bound
    statuses: dict[int, int | str] = {}
    while len(statuses) < len(pids):
        for pid in pids:
            if pid in statuses:
                continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                statuses[pid] = os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            for pid in pids:
                if pid not in statuses:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    statuses[pid] = "hung"
        threading.Event().wait(0.005)
    return [statuses[pid] for pid in pids]


if __name__ == "__main__":
    main()
