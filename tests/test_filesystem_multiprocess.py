"""FileSystemCache shared by several real processes, as an operator runs it: workers filling one
directory, killed with SIGKILL, clearing it under the others, racing on add and inc, and the
directory removed, made read-only or holding another user's files and a crashed writer's temp."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import random
import shutil
import signal
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from test_filesystem import entry_names
from test_filesystem_review import (
    APP,
    APP_GROUP,
    app_dir,  # noqa: F401 - the fixture behind app_home
    as_app,
    needs_root,
)

from cacheplug import FileSystemCache

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")
WAIT = 120.0  # seconds any one wait may take on a loaded machine before the test fails
THRESHOLD = 40
NOBODY = 65534  # owns the "other user's" files

Queue = Any  # a multiprocessing queue
Event = Any  # a multiprocessing event


def tally(cache: FileSystemCache) -> int:
    """The entry count kept in the prefix's lock file; -1 when it is missing or unknown."""
    try:
        data = Path(cache._lock_path).read_bytes()[:24]
    except FileNotFoundError:
        return -1
    if len(data) < 24:
        return -1
    count, added, check = struct.unpack("<qqq", data)
    return count if check == count ^ added ^ 0x3C5A_17C0_DE5A_17C0 else -1


def entries_of(cache: FileSystemCache) -> set[str]:
    """Names of the entry files of ``cache``'s prefix."""
    return {n for n in entry_names(Path(cache.cache_dir)) if n.startswith(cache._ns_head)}


def temp_names(directory: Path) -> set[str]:
    return {n for n in os.listdir(directory) if n.endswith(".tmp")}


def assert_whole(path: Path) -> None:
    """The entry file at ``path`` holds a value some worker wrote, whole."""
    data = path.read_bytes()
    assert data[:4] == b"CPF1"
    value = pickle.loads(data[12:])
    key = value.split(":", 1)[0]
    assert value == value_of(key)


def join_all(processes: list[Any]) -> None:
    for process in processes:
        process.join(timeout=WAIT)
        assert process.exitcode == 0, f"worker exited with {process.exitcode}"


def value_of(key: str) -> str:
    """The one value any worker stores under ``key``: a reader can tell a torn or foreign one."""
    return f"{key}:" + key[::-1] * 50


# -- 1. the threshold across processes ------------------------------------------------------------


def _fill(directory: str, worker: int, count: int, go: Event) -> None:
    cache = FileSystemCache(directory, threshold=THRESHOLD)
    go.wait(WAIT)
    for i in range(count):
        key = f"w{worker}-{i}"
        assert cache.set(key, value_of(key)), key
    assert cache.stats()["errors"] == 0


@pytest.mark.parametrize("context", [FORK, SPAWN], ids=["fork", "spawn"])
def test_four_processes_filling_one_directory_stay_within_threshold_and_keep_the_count(
    tmp_path: Path, context: Any
) -> None:
    go = context.Event()
    workers = [context.Process(target=_fill, args=(str(tmp_path), n, 150, go)) for n in range(4)]
    for worker in workers:
        worker.start()
    observer = FileSystemCache(tmp_path, threshold=THRESHOLD)
    go.set()
    largest = 0
    while any(worker.is_alive() for worker in workers):
        largest = max(largest, len(entries_of(observer)))
    join_all(workers)
    files = entries_of(observer)
    assert largest <= THRESHOLD
    assert THRESHOLD - THRESHOLD // 10 <= len(files) <= THRESHOLD
    assert tally(observer) == len(files)
    for name in files:  # every entry left is whole and one a worker wrote
        assert (tmp_path / name).read_bytes()[:4] == b"CPF1"
    assert not temp_names(tmp_path)


def _fill_forever(directory: str, worker: int, ready: Event) -> None:
    cache = FileSystemCache(directory, threshold=THRESHOLD)
    ready.set()
    i = 0
    while True:
        key = f"k{worker}-{i}"
        cache.set(key, value_of(key))
        i += 1


def test_workers_killed_mid_set_leave_no_torn_entry_and_the_directory_near_threshold(
    tmp_path: Path,
) -> None:
    rng = random.Random(20)
    kills = 0
    for round_ in range(12):
        ready = [FORK.Event() for _ in range(3)]
        workers = [
            FORK.Process(target=_fill_forever, args=(str(tmp_path), 10 * round_ + n, ready[n]))
            for n in range(3)
        ]
        for worker in workers:
            worker.start()
        for event in ready:
            assert event.wait(WAIT)
        for worker in workers:  # each at a random moment inside its writes
            threading.Event().wait(rng.uniform(0.002, 0.03))
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            kills += 1
        for worker in workers:
            worker.join(timeout=WAIT)
            assert worker.exitcode == -signal.SIGKILL
        cache = FileSystemCache(tmp_path, threshold=THRESHOLD)
        files = entries_of(cache)
        assert len(files) <= THRESHOLD + kills, "far above the threshold"
        for name in files:  # a whole value, never part of one
            assert_whole(tmp_path / name)
    # at most one temp file per stopped worker, and clear takes them once they are stale
    temps = temp_names(tmp_path)
    assert len(temps) <= kills
    old = time.time() - 3600
    for name in temps:
        os.utime(tmp_path / name, (old, old))
    # A few more writes from a live process bring the count back to the files.
    for i in range(THRESHOLD + 70):
        assert cache.set(f"after-{i}", i)
    assert len(entries_of(cache)) <= THRESHOLD
    assert tally(cache) == len(entries_of(cache))
    assert cache.clear()
    assert not temp_names(tmp_path)
    assert not entry_names(tmp_path)


def _killed_right_after_its_rename(directory: str, key: str) -> None:
    cache = FileSystemCache(directory, threshold=10)

    def kill_after_the_rename(frame: object, event: str, arg: object) -> None:
        if event == "c_return" and arg is os.replace:  # the new entry is in place
            os.kill(os.getpid(), signal.SIGKILL)

    sys.setprofile(kill_after_the_rename)
    cache.set(key, value_of(key))


def test_a_writer_killed_right_after_its_rename_never_lets_the_directory_outgrow_threshold(
    tmp_path: Path,
) -> None:
    cache = FileSystemCache(tmp_path, threshold=10)
    for n in range(9):
        assert cache.set(f"k{n}", n)
    for n in range(3):
        writer = FORK.Process(target=_killed_right_after_its_rename, args=(str(tmp_path), f"x{n}"))
        writer.start()
        writer.join(timeout=WAIT)
        assert writer.exitcode == -signal.SIGKILL
    files = entries_of(cache)
    assert len(files) <= 10
    assert tally(cache) == len(files)
    assert cache.set("one more", 1)
    assert len(entries_of(cache)) <= 10


# -- 2. clear under the others --------------------------------------------------------------------


def _write_and_read(directory: str, worker: int, rounds: int, go: Event, out: Queue) -> None:
    cache = FileSystemCache(directory, threshold=THRESHOLD, key_prefix="app:")
    go.wait(WAIT)
    failures: list[str] = []
    for i in range(rounds):
        key = f"w{worker}-{i % 60}"
        if not cache.set(key, value_of(key)):
            failures.append(f"set {key}")
        for other in (f"w{(worker + 1) % 3}-{i % 60}", key):
            got = cache.get(other)
            if got not in (None, value_of(other)):
                failures.append(f"get {other} -> {got!r}")
    # the writes after the last clear are all there for everyone
    finals = {f"final-{worker}-{n}": n for n in range(5)}
    if cache.set_many(finals) != list(finals):
        failures.append("final set_many")
    out.put((failures, cache.stats()["errors"]))


def _clear_again_and_again(directory: str, go: Event, stop: Event, out: Queue) -> None:
    cache = FileSystemCache(directory, threshold=THRESHOLD, key_prefix="app:")
    go.wait(WAIT)
    clears = 0
    cleared = True
    while not stop.is_set() and clears < 2000:
        cleared = cleared and cache.clear()
        clears += 1
    out.put((cleared, clears, cache.stats()["errors"]))


def test_clear_while_other_processes_write_and_read(tmp_path: Path) -> None:
    other = FileSystemCache(tmp_path, threshold=THRESHOLD, key_prefix="other:")
    for n in range(25):
        assert other.set(f"o{n}", n)
    other_files = {name: (tmp_path / name).read_bytes() for name in entries_of(other)}
    other_lock = Path(other._lock_path).read_bytes()
    go, stop = FORK.Event(), FORK.Event()
    out, cleared = FORK.Queue(), FORK.Queue()
    writers = [
        FORK.Process(target=_write_and_read, args=(str(tmp_path), n, 400, go, out))
        for n in range(3)
    ]
    clearer = FORK.Process(target=_clear_again_and_again, args=(str(tmp_path), go, stop, cleared))
    for process in [*writers, clearer]:
        process.start()
    go.set()
    results = [out.get(timeout=WAIT) for _ in writers]
    stop.set()
    all_cleared, clears, clear_errors = cleared.get(timeout=WAIT)
    join_all([*writers, clearer])
    assert [failures for failures, _ in results] == [[], [], []]
    assert [errors for _, errors in results] == [0, 0, 0]
    assert (all_cleared, clear_errors) == (True, 0)
    assert clears > 1
    app = FileSystemCache(tmp_path, threshold=THRESHOLD, key_prefix="app:")
    # the last clear may have taken any of them: the set_many writes then read back as written
    for worker in range(3):
        for n in range(5):
            assert app.get(f"final-{worker}-{n}") in (None, n)
    assert app.set("after", 1) and app.get("after") == 1
    assert len(entries_of(app)) <= THRESHOLD
    assert tally(app) == len(entries_of(app))
    # the other prefix: its entries and its count untouched
    assert {name: (tmp_path / name).read_bytes() for name in entries_of(other)} == other_files
    assert Path(other._lock_path).read_bytes() == other_lock
    assert other.get_many(*(f"o{n}" for n in range(25))) == list(range(25))


def _final_writes_after_clear(directory: str, worker: int, cleared: Event, out: Queue) -> None:
    cache = FileSystemCache(directory, key_prefix="app:")
    for n in range(50):
        cache.set(f"before-{worker}-{n}", n)
    cleared.wait(WAIT)
    out.put([cache.set(f"later-{worker}-{n}", n) for n in range(20)])


def test_writes_made_after_another_process_cleared_are_readable_by_all(tmp_path: Path) -> None:
    cleared, out = FORK.Event(), FORK.Queue()
    workers = [
        FORK.Process(target=_final_writes_after_clear, args=(str(tmp_path), n, cleared, out))
        for n in range(3)
    ]
    for worker in workers:
        worker.start()
    cache = FileSystemCache(tmp_path, key_prefix="app:")
    threading.Event().wait(0.05)  # let some of the "before" writes land; the rest come after
    assert cache.clear()
    cleared.set()
    answers = [out.get(timeout=WAIT) for _ in workers]
    join_all(workers)
    assert answers == [[True] * 20] * 3
    for n in range(3):
        assert cache.get_many(*(f"later-{n}-{i}" for i in range(20))) == list(range(20))
    assert tally(cache) == len(entries_of(cache))


# -- 3. add and inc races -------------------------------------------------------------------------

COUNTERS = [f"counter-{n}" for n in range(5)]


def _race(directory: str, times: int, go: Event, out: Queue) -> None:
    cache = FileSystemCache(directory)
    go.wait(WAIT)
    failed = 0
    won = []
    for i in range(times):
        failed += cache.inc(COUNTERS[i % len(COUNTERS)]) is None
        if i % 5 == 0:
            key = f"slot-{i // 5}"
            if cache.add(key, os.getpid()):
                won.append(key)
    out.put((os.getpid(), failed, won, cache.stats()["errors"]))


@pytest.mark.parametrize("context", [FORK, SPAWN], ids=["fork", "spawn"])
def test_processes_racing_lose_no_increment_and_each_add_wins_once(
    tmp_path: Path, context: Any
) -> None:
    go, out = context.Event(), context.Queue()
    times = 500
    workers = [context.Process(target=_race, args=(str(tmp_path), times, go, out)) for _ in "abcd"]
    for worker in workers:
        worker.start()
    go.set()
    results = [out.get(timeout=WAIT) for _ in workers]
    join_all(workers)
    assert [(failed, errors) for _, failed, _, errors in results] == [(0, 0)] * 4
    cache = FileSystemCache(tmp_path)
    assert cache.get_many(*COUNTERS) == [4 * times // len(COUNTERS)] * len(COUNTERS)
    winners = {key: pid for pid, _, won, _ in results for key in won}
    assert sum(len(won) for _, _, won, _ in results) == len(winners) == times // 5
    for key, pid in winners.items():
        assert cache.get(key) == pid


# -- 4. operator actions --------------------------------------------------------------------------


def _busy(directory: str, worker: int, stop: Event, out: Queue, ready: Queue) -> None:
    """set/get/inc/add/delete until told to stop; any exception fails the worker."""
    cache = FileSystemCache(directory, threshold=THRESHOLD)
    ready.put(worker)  # it has seen the directory and its modes
    answers: set[tuple[str, object]] = set()
    i = 0
    while not stop.is_set():
        key = f"w{worker}-{i % 30}"
        answers.add(("set", cache.set(key, value_of(key))))
        got = cache.get(key)
        assert got in (None, value_of(key)), got
        answers.add(("inc", type(cache.inc("hits")).__name__))
        answers.add(("add", cache.add(f"a{worker}-{i}", i)))
        cache.delete(f"a{worker}-{i - 3}")
        cache.has(key)
        i += 1
    later = FileSystemCache(directory, threshold=THRESHOLD)
    out.put((answers, later.set(f"later-{worker}", worker), i))


def test_a_directory_removed_under_running_processes_comes_back(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    FileSystemCache(directory, mode=0o640)
    mode = stat.S_IMODE(directory.stat().st_mode)
    stop, out, ready = FORK.Event(), FORK.Queue(), FORK.Queue()
    workers = [
        FORK.Process(target=_busy, args=(str(directory), n, stop, out, ready)) for n in range(3)
    ]
    for worker in workers:
        worker.start()
    # each cache learns the directory's modes when it is made: one made after a removal, on a
    # loaded machine, would make the directory its own way (0o700), as it should
    for _ in workers:
        ready.get(timeout=WAIT)
    for _ in range(8):  # the operator's rm -rf, again and again
        threading.Event().wait(0.03)
        shutil.rmtree(directory, ignore_errors=True)
    deadline = time.monotonic() + WAIT
    while not directory.exists() and time.monotonic() < deadline:  # the workers made it again
        threading.Event().wait(0.01)
    stop.set()
    results = [out.get(timeout=WAIT) for _ in workers]
    join_all(workers)
    for answers, later, rounds in results:
        assert later is True
        assert rounds > 0
        assert ("set", True) in answers and ("inc", "int") in answers
    cache = FileSystemCache(directory)
    assert cache.get_many(*(f"later-{n}" for n in range(3))) == [0, 1, 2]
    assert stat.S_IMODE(directory.stat().st_mode) == mode


def _removed_then_used(directory: str, out: Queue) -> None:
    cache = FileSystemCache(directory, key_prefix="p:")
    assert cache.set("k", "v")
    shutil.rmtree(directory)
    out.put((cache.get("k"), cache.has("k"), cache.set("k", "w"), cache.get("k"), cache.inc("n")))


def test_after_rm_rf_the_next_set_brings_the_directory_back_in_another_process(
    tmp_path: Path,
) -> None:
    out = FORK.Queue()
    process = FORK.Process(target=_removed_then_used, args=(str(tmp_path / "c"), out))
    process.start()
    assert out.get(timeout=WAIT) == (None, False, True, "w", 1)
    join_all([process])
    assert FileSystemCache(tmp_path / "c", key_prefix="p:").get("k") == "w"


@pytest.fixture
def app_home(request: pytest.FixtureRequest) -> Path:
    """A cache directory owned by the application's user, in a tree that user may reach."""
    directory: Path = request.getfixturevalue("app_dir")
    return directory


def _read_only_phase(directory: str, out: Queue, phase: Event, resume: Event) -> None:
    os.setgroups([])
    os.setgid(APP_GROUP)
    os.setuid(APP)
    cache = FileSystemCache(directory)
    out.put((cache.set("k", "v"), cache.inc("n"), cache.set("gone", 1)))
    phase.wait(WAIT)  # the operator has made the directory read-only
    out.put(
        (
            cache.set("k", "w"),
            cache.set("new", 1),
            cache.add("new", 1),
            cache.inc("n"),
            cache.delete("gone"),
            cache.set_many({"x": 1, "y": 2}),
            cache.delete_many("k", "gone"),
            cache.get_many("k", "n", "gone", "new"),
            cache.has("k"),
            cache.clear(),
            cache.get("k"),
        )
    )
    resume.wait(WAIT)  # and writable again
    out.put((cache.set("k", "again"), cache.inc("n"), cache.get("k"), cache.delete("gone")))


@needs_root
def test_a_directory_made_read_only_mid_run_answers_outage_values_then_recovers(
    app_home: Path,
) -> None:
    out, phase, resume = FORK.Queue(), FORK.Event(), FORK.Event()
    process = FORK.Process(target=_read_only_phase, args=(str(app_home), out, phase, resume))
    process.start()
    try:
        assert out.get(timeout=WAIT) == (True, 1, True)
        app_home.chmod(0o555)
        phase.set()
        assert out.get(timeout=WAIT) == (
            False,
            False,
            False,
            None,
            False,
            [],
            [],
            ["v", 1, 1, None],
            True,
            False,
            "v",
        )
        app_home.chmod(0o700)
        resume.set()
        assert out.get(timeout=WAIT) == (True, 2, "again", True)
    finally:
        resume.set()
        phase.set()
        app_home.chmod(0o700)
        process.join(timeout=WAIT)
    assert process.exitcode == 0


def _app_meets_nobodys_files(directory: str) -> object:
    cache = FileSystemCache(directory, threshold=10)
    return (
        cache.get("theirs"),
        cache.has("theirs"),
        cache.stats()["errors"] > 0,
        cache.add("theirs", "mine"),
        cache.get("theirs"),
        cache.inc("count"),
        cache.delete("gone"),
        [cache.set(f"fill-{n}", n) for n in range(12)],
        cache.get_many(*(f"fill-{n}" for n in range(12)))[-5:],
        cache.clear(),
    )


@needs_root
def test_entries_another_user_owns_are_misses_the_application_replaces(app_home: Path) -> None:
    root = FileSystemCache(app_home, threshold=10)
    for key in ("theirs", "count", "gone", "spare"):
        assert root.set(key, "root's")
    for path in app_home.iterdir():
        if path.name.startswith("cp-"):
            os.chown(path, NOBODY, NOBODY)
            path.chmod(0o600)
    lock = Path(root._lock_path)
    os.chown(lock, APP, APP_GROUP)  # the lock file is the application's; the entries are not
    assert as_app(partial(_app_meets_nobodys_files, str(app_home))) == (
        None,
        False,
        True,
        True,
        "mine",
        1,
        False,  # it could not read it: for this user the key did not exist
        [True] * 12,
        [7, 8, 9, 10, 11],
        True,
    )
    assert not entry_names(app_home)


STALE = 3600.0  # seconds: older than the ten minutes after which a temp file is a dead writer's


def plant_temp(cache: FileSystemCache, key: str, size: int, age: float) -> Path:
    """A crashed writer's temp file of ``size`` bytes (sparse) for ``key``, ``age`` seconds old."""
    temp = Path(f"{cache._path(key)}.{'ab' * 6}.tmp")
    with open(temp, "wb") as file:
        file.truncate(size)
    then = time.time() - age
    os.utime(temp, (then, then))
    return temp


def test_a_huge_stale_temp_file_goes_with_clear_and_with_a_listing(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path, threshold=THRESHOLD)
    huge = plant_temp(cache, "k", 4 << 30, STALE)
    fresh = plant_temp(cache, "j", 4 << 30, 5)
    assert cache.get("k") is None and not cache.has("k")
    assert cache.set("k", "v") and cache.get("k") == "v"  # the first new entry lists the directory
    assert not huge.exists()
    assert fresh.exists()  # a writer may still be at work on it
    huge = plant_temp(cache, "k", 4 << 30, STALE)
    assert cache.clear()
    assert not huge.exists()
    assert fresh.exists()
    assert cache.stats()["errors"] == 0


# -- 5. what the docs promise and nothing else checked ------------------------------------------


def _unprefixed_clear(directory: str, out: Queue) -> None:
    out.put(FileSystemCache(directory).clear())


def test_clear_without_a_prefix_from_another_process_takes_every_prefix_and_counts_recover(
    tmp_path: Path,
) -> None:
    caches = [FileSystemCache(tmp_path, threshold=20, key_prefix=p) for p in ("a:", "b:")]
    for cache in caches:
        for n in range(30):
            assert cache.set(f"k{n}", n)
    out = FORK.Queue()
    process = FORK.Process(target=_unprefixed_clear, args=(str(tmp_path), out))
    process.start()
    assert out.get(timeout=WAIT) is True
    join_all([process])
    assert not entry_names(tmp_path)
    for cache in caches:
        assert cache.get("k29") is None
        for n in range(25):
            assert cache.set(f"n{n}", n)
        assert len(entries_of(cache)) <= 20
        assert cache.get("n24") == 24
        assert tally(cache) == len(entries_of(cache))


def _as_nobody(action: Callable[[], object], out: Queue) -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    out.put(action())


def _every_operation(directory: str) -> object:
    cache = FileSystemCache(directory)  # it may create files there: the probe passes
    answers = (
        cache.get("k"),
        cache.set("k", "nobody's"),
        cache.inc("n"),
        cache.add("a", 1),
        cache.delete("k"),
        cache.clear(),
    )
    return answers, cache.stats()["errors"] > 0


@needs_root
def test_a_second_user_in_a_sticky_directory_gets_outage_values_never_an_error(
    app_home: Path,
) -> None:
    # a shared /tmp-like directory: anyone may create files, only their owner remove them
    shared = app_home.parent / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    assert as_app(lambda: FileSystemCache(shared).set("k", "app's")) is True
    out = FORK.Queue()
    process = FORK.Process(target=_as_nobody, args=(partial(_every_operation, str(shared)), out))
    process.start()
    answer = out.get(timeout=WAIT)
    join_all([process])
    # the application's lock file and entries can be neither written nor replaced
    assert answer == ((None, False, None, False, False, False), True)
    assert as_app(lambda: FileSystemCache(shared).get("k")) == "app's"
