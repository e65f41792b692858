"""FileSystemCache calls cut short at every point a signal handler's exception can show up
(session 21, helper F), with the cutters of tests/cutting.py.

docs/reliability.md promises for "a call cut short": temp file + rename, no torn entry, no
lock left held. After each cut this file checks that this process's turn at the lock file and
the ``flock`` are free (another thread, and every twentieth cut a forked process, can write), no
descriptor is left open, the touched entry is its old or its new value and bystanders are
untouched, the tally in the lock file is never below the entry files, at most one temp file is
left and a listing takes it once stale, and the next calls answer right.

The line starts of ``call_cut_at`` miss two kinds of point a signal reaches: the return of a
function right after a with-block's exit (``Turn.acquire`` returning True), and a call whose
result is kept under another handler than the next line's (``fd = os.open(...)`` in a
``try/except OSError``, then ``try/finally: os.close(fd)``). The sweep cuts with
``cut_at_instruction``: after every call of a C function, at each function's start and at each
backward jump's target, where CPython handles pending signals.
"""

from __future__ import annotations

import dis
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import FakeClock
from cutting import CutResult, call_cut_at, cut_at_instruction
from test_interrupt_everywhere import (
    MADE,
    NEW,
    OLD,
    SCENARIOS,
    WAIT,
    Scenario,
    allowed_of,
    checked_values,
    cut_everywhere,
    next_calls_work,
    options,
    prepare,
)

from cacheplug import FileSystemCache
from cacheplug.backends import _filesystem_lockfile as lockfile
from cacheplug.backends import _filesystem_locks as locks
from cacheplug.backends._filesystem_tally import read_tally

ROOM = 24  # threshold: "full" fills it, so a new key lists the directory and evicts
PROCESS_EVERY = 20  # every twentieth cut, a forked process writes too (a fork costs ~50 ms)
STALE = 601.0  # seconds: older than the temp files a listing takes as a dead writer's


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def entry_files(cache: FileSystemCache) -> list[str]:
    head = cache._ns_head
    return [n for n in os.listdir(cache.cache_dir) if n.startswith(head) and n.count(".") == 0]


def temp_files(cache: FileSystemCache) -> list[str]:
    return [n for n in os.listdir(cache.cache_dir) if n.endswith(".tmp")]


def tally(cache: FileSystemCache) -> int:
    try:
        fd = os.open(cache._lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return -1
    try:
        return read_tally(fd)[0]
    finally:
        os.close(fd)


def flock_is_free(path: str) -> bool:
    """Whether another open of the lock file can ``flock`` it now (nothing else runs)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        locks.flock_by(fd, path, time.monotonic(), 0.0)
    except TimeoutError:
        return False
    finally:
        locks.close_locked(fd)
    return True


def writes_from_a_process(cache: FileSystemCache) -> bool:
    """Whether a forked process's FileSystemCache on the directory can set, get and delete."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 1
        try:
            other = FileSystemCache(
                cache.cache_dir, threshold=ROOM, key_prefix=cache.key_prefix, lock_timeout=WAIT
            )
            if other.set("proc", MADE) and other.get("proc") == MADE and other.delete("proc"):
                code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        time.sleep(0.002)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return False


class Cases:
    """Fresh caches in new directories under ``base``, each with a thread of this process
    counted among the users of its lock file's turn, as one waiting for it would be."""

    def __init__(self, base: str, config: str) -> None:
        self.base = base
        self.config = config
        self.made = 0
        self.fds = 0
        self.turn: locks.Turn | None = None
        self.turn_path = ""

    def make(self) -> tuple[Any, FakeClock]:
        self.made += 1
        clock = FakeClock()
        cache = FileSystemCache(
            os.path.join(self.base, str(self.made)),
            threshold=ROOM,
            clock=clock,
            lock_timeout=WAIT,
            **options(self.config),
        )
        prepare(cache, self.config, clock, ROOM)
        if self.config == "full":  # the fillers are the least recently written
            for i in range(ROOM - 4):
                os.utime(cache._path(f"filler{i}"), (900.0 + i, 900.0 + i))
        self.turn_path = cache._lock_path
        self.turn = locks.join_turns(cache._lock_path)
        self.fds = open_fds()
        return cache, clock

    def sweep(self, scenario: Scenario) -> tuple[int, list[str]]:
        """``cut_everywhere`` on these caches; the last one, run whole, leaves no turn behind."""
        try:
            return cut_everywhere(self.make, scenario.run, self.check(scenario))
        finally:
            self.done()

    def done(self) -> None:
        if self.turn is not None:
            locks.leave_turns(self.turn_path, self.turn)
            self.turn = None

    def lock_problems(self, cache: FileSystemCache) -> list[str]:
        turn, path = self.turn, cache._lock_path
        assert turn is not None
        self.turn = None
        problems = []
        if turn._held or turn._waiters:
            problems.append("the turn stays held: this process's other writers wait and fail")
        locks.leave_turns(path, turn)
        # a cut in join_turns or leave_turns leaves a thread counted: the turn then stays
        # in memory, harmless unless it is also left held (reported above)
        locks.turns.pop(path, None)
        if not flock_is_free(path):
            problems.append("the lock file stays flocked")
        return problems

    def files_problems(self, cache: FileSystemCache, outcome: CutResult) -> list[str]:
        problems = []
        left = open_fds() - self.fds
        if left > 0:  # also for a cut as os.open returns (_filesystem_files.open_fd)
            problems.append(f"{left} descriptor(s) left open")
        count, files = tally(cache), len(entry_files(cache))
        if 0 <= count < files:
            problems.append(f"the tally says {count} entries, {files} files are there")
        if len(temp_files(cache)) > 1:
            problems.append(f"temp files left: {temp_files(cache)}")
        return problems

    def check(self, scenario: Scenario) -> Callable[[Any, FakeClock, CutResult], list[str]]:
        def check(cache: Any, clock: FakeClock, outcome: CutResult) -> list[str]:
            problems = self.lock_problems(cache)
            if problems:
                return problems
            problems += self.files_problems(cache, outcome)
            allowed = allowed_of(self.config, scenario.allowed, scenario.name in EVICTING)
            problems += checked_values(cache, allowed)
            if self.made % PROCESS_EVERY == 0 and not writes_from_a_process(cache):
                problems.append("a forked process could not write")
            problems += next_calls_work(cache)
            negative = {name: n for name, n in cache.stats().items() if n < 0}
            if negative:
                problems.append(f"negative counters {negative}")
            problems += self.temp_problems(cache)
            return problems

        return check

    @staticmethod
    def temp_problems(cache: FileSystemCache) -> list[str]:
        """A temp file left behind goes with the listing that finds it stale."""
        left = temp_files(cache)
        for name in left:
            path = os.path.join(cache.cache_dir, name)
            os.utime(path, (time.time() - STALE, time.time() - STALE))
        if left and (not cache.clear() or temp_files(cache)):
            return [f"clear() left the stale temp files {temp_files(cache)}"]
        return []


class Contended(Cases):
    """``Cases`` where another thread holds the lock until the call waits for its turn."""

    def make(self) -> tuple[Any, FakeClock]:
        cache, clock = super().make()
        turn = locks.turns[cache._lock_path]
        self.release = threading.Event()
        held = threading.Event()

        def hold() -> None:
            locked = lockfile.locked(cache)
            next(locked)
            held.set()
            deadline = time.monotonic() + WAIT
            while not (self.release.is_set() or turn._waiters or time.monotonic() > deadline):
                time.sleep(0.0002)
            next(locked, None)

        self.holder = threading.Thread(target=hold, daemon=True)
        self.holder.start()
        held.wait(WAIT)
        return cache, clock

    def check(self, scenario: Scenario) -> Callable[[Any, FakeClock, CutResult], list[str]]:
        checks = super().check(scenario)

        def check(cache: Any, clock: FakeClock, outcome: CutResult) -> list[str]:
            self.release.set()
            self.holder.join(WAIT)
            if self.holder.is_alive():
                return ["the thread holding the lock hung"]
            return checks(cache, clock, outcome)

        return check

    def done(self) -> None:
        self.release.set()
        self.holder.join(WAIT)
        super().done()


FS_SCENARIOS: dict[str, Scenario] = {
    **SCENARIOS,
    **{
        s.name: s
        for s in [
            Scenario("get", lambda c: c.get("k"), {"k": [OLD]}),
            Scenario("has", lambda c: c.has("k"), {"k": [OLD]}),
            Scenario("set_new", lambda c: c.set("s", NEW), {"s": [None, NEW], "k": [OLD]}),
        ]
    },
}
EVICTING = {"clear"}
# every operation on a plain cache; the paths a secret, a prefix, a full directory or expired
# entries change, with the operations that take them
CONFIGS = {
    "plain": list(FS_SCENARIOS),
    "secret": ["get", "inc"],
    "prefix": ["set_new", "clear"],
    "full": ["set_new", "add_new"],
    "expired": ["add_new", "clear"],
}


def cases() -> Iterator[Any]:
    for config, names in CONFIGS.items():
        for name in names:
            yield pytest.param(name, config, id=f"{name}-{config}")


@pytest.mark.parametrize(("name", "config"), list(cases()))
def test_filesystem_cache_cut_short_anywhere(name: str, config: str, tmp_path: Any) -> None:
    scenario = FS_SCENARIOS[name]
    cuts, problems = Cases(str(tmp_path), config).sweep(scenario)
    assert cuts > 0
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", ["set", "inc"])
def test_filesystem_cache_cut_short_while_waiting_for_another_thread(
    name: str, tmp_path: Any
) -> None:
    scenario = FS_SCENARIOS[name]
    cuts, problems = Contended(str(tmp_path), "plain").sweep(scenario)
    assert cuts > 0
    assert not problems, "\n".join(problems)


def test_the_line_events_reach_fewer_points() -> None:
    """Why this file cuts after calls: ``call_cut_at`` never reaches the instruction after the
    with-block exit in ``Turn.acquire``, where a signal leaves the turn held."""

    def acquire_and_release() -> None:
        turn, me = locks.Turn(), threading.get_ident()
        if turn.acquire(-1, me):
            turn.release(me)

    def where(cutter: Callable[[int, Callable[[], Any]], CutResult]) -> list[str]:
        points, n = [], 1
        while (outcome := cutter(n, acquire_and_release)).cut:
            points.append(outcome.where)
            n += 1
        return points

    code = locks.Turn.acquire.__code__
    lines = {line for _, line in dis.findlinestarts(code)}
    by_lines = [p for p in where(call_cut_at) if int(p.rsplit(":", 1)[1]) in lines]
    by_calls = [p for p in where(cut_at_instruction) if f"({code.co_name}," in p]
    # the with-block's exit before `return True` is followed by a POP_TOP, on no line of its own
    assert any("(acquire, POP_TOP)" in p for p in by_calls)
    assert len(by_calls) > len(by_lines)


def test_a_turn_handed_over_reaches_its_waiter_whatever_point_the_release_is_cut_at() -> None:
    """``lockfile.locked`` releases the turn again after a cut (each step does nothing once
    done); the waiter it goes to must then wake, not wait out its timeout (for ever with
    ``lock_timeout=None``)."""
    me, problems, n = threading.get_ident(), [], 1
    while True:
        turn = locks.Turn()
        assert turn.acquire(-1, me)
        got = threading.Event()

        def wait_for_it(turn: locks.Turn = turn, got: threading.Event = got) -> None:
            other = threading.get_ident()
            if turn.acquire(WAIT, other):
                got.set()
                turn.release(other)

        waiter = threading.Thread(target=wait_for_it, daemon=True)
        waiter.start()
        deadline = time.monotonic() + WAIT
        while not turn._waiters and time.monotonic() < deadline:
            time.sleep(0.001)
        outcome = cut_at_instruction(n, functools.partial(turn.release, me))
        turn.release(me)  # as _locked's finally does after a cut
        if not got.wait(5.0):
            problems.append(f"cut at {outcome.where}: the waiter never woke")
        waiter.join(WAIT)
        if not outcome.cut:
            break
        n += 1
    assert n > 2
    assert not problems, "\n".join(problems)
