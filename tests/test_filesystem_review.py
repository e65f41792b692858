"""FileSystemCache under review: lock files it may not write, several processes and prefixes."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import resource
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_filesystem import entry_names
from test_filesystem_edge import needs_proc_locks, openers_of, wait_for
from test_filesystem_faults import lock_file

from cacheplug import FileSystemCache

APP = 1001  # the user the application runs as, in tests that need two users
APP_GROUP = 4243

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")

Results = Any  # a multiprocessing queue


@pytest.fixture
def app_dir() -> Iterator[Path]:
    """A cache directory owned by the application's user, mode 0o700, in a tree it may reach."""
    top = tempfile.mkdtemp()  # tmp_path is private to root
    try:
        os.chmod(top, 0o711)
        directory = Path(top, "cache")
        directory.mkdir(mode=0o700)
        os.chown(directory, APP, APP_GROUP)
        yield directory
    finally:
        shutil.rmtree(top)


def _as_app(action: Callable[[], object], results: Results) -> None:
    os.setgroups([])
    os.setgid(APP_GROUP)
    os.setuid(APP)
    try:
        results.put(action())
    except BaseException as err:
        results.put(repr(err))
        raise


def as_app(action: Callable[[], object], started: Callable[[], None] | None = None) -> object:
    """What ``action`` returns when run by the application's user in a forked process.

    :param started: called while it runs.
    """
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    process = context.Process(target=_as_app, args=(action, results))
    process.start()
    try:
        if started is not None:
            started()
        return results.get(timeout=60)
    finally:
        process.join(timeout=60)


def every_write(directory: Path) -> tuple[object, ...]:
    cache = FileSystemCache(directory)
    return (
        cache.set("k", "v"),
        cache.set("k", "w"),
        cache.inc("n"),
        cache.add("a", 1),
        cache.add("a", 2),
        cache.delete("a"),
        cache.get_many("k", "n", "a"),
        cache.clear(),
        cache.get("k"),
    )


EVERY_WRITE_WORKS = (True, True, 1, True, False, True, ["w", 1, None], True, None)


@needs_root
def test_a_lock_file_root_left_behind_does_not_stop_the_applications_writes(
    app_dir: Path,
) -> None:
    # An administrator warms the cache as root: the lock file is root's, mode 0o600. The
    # application could then write nothing, clear included, until someone removed it by hand;
    # cachelib, which has no lock file, goes on working.
    assert as_app(lambda: every_write(app_dir)) == EVERY_WRITE_WORKS
    FileSystemCache(app_dir).set("warmed", 1)
    assert as_app(lambda: every_write(app_dir)) == EVERY_WRITE_WORKS
    # root's entry stays unreadable to the application, a miss as with cachelib
    assert as_app(lambda: FileSystemCache(app_dir).get("warmed")) is None


def _set_after_making_the_lock_read_only(directory: Path) -> object:
    cache = FileSystemCache(directory)
    cache.set("before", 1)
    lock_file(directory).chmod(0o400)
    return cache.set("k", "v"), cache.inc("n"), cache.delete("before"), cache.get_many("k", "n")


@needs_root
def test_a_lock_file_made_read_only_is_replaced(app_dir: Path) -> None:
    answers = as_app(lambda: _set_after_making_the_lock_read_only(app_dir))
    assert answers == (True, 1, True, ["v", 1])
    assert os.stat(lock_file(app_dir)).st_mode & 0o200


def _hold_lock(path: Path, locked: Any, release: Any) -> None:
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    locked.set()
    release.wait(60)


@needs_root
@needs_proc_locks
def test_a_read_only_lock_file_is_replaced_only_once_its_holder_is_done(app_dir: Path) -> None:
    as_app(lambda: FileSystemCache(app_dir).set("n", 1))
    path = lock_file(app_dir)
    path.chmod(0o400)
    # a writer of another user, inside its critical section
    context = multiprocessing.get_context("fork")
    locked, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(path, locked, release))
    holder.start()
    assert locked.wait(60)
    held = path.stat()

    def release_once_waited_on() -> None:
        try:
            # the holder and the waiting inc have it open
            wait_for(lambda: openers_of(held) == 2, "inc waits on the read-only lock file")
            assert path.exists()
        finally:
            release.set()

    try:
        answer = as_app(lambda: FileSystemCache(app_dir).inc("n"), started=release_once_waited_on)
    finally:
        release.set()
        holder.join(timeout=60)
    assert answer == 2


@pytest.mark.parametrize("plant", ["fifo", "empty directory"])
def test_a_fifo_or_directory_at_the_lock_path_is_replaced(tmp_path: Path, plant: str) -> None:
    # A FIFO there made every new entry, inc, add and delete answer False (delete after it had
    # removed the entry); a directory stopped every write, clear included, for good.
    cache = FileSystemCache(tmp_path)
    cache.set("before", 1)
    path = lock_file(tmp_path)
    path.unlink()
    if plant == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    assert cache.set("k", "v") is True
    assert cache.inc("n") == 1
    assert cache.add("a", 1) is True
    assert cache.delete("before") is True
    assert cache.get_many("k", "n", "a", "before") == ["v", 1, 1, None]
    assert path.is_file()
    assert cache.clear() is True
    assert entry_names(tmp_path) == set()


# -- several processes and prefixes ---------------------------------------------------------------

THRESHOLD = 40
PREFIXES = ("even:", "odd:")


def _churn(directory: str, writer: int, rounds: int, go: Any) -> None:
    cache = FileSystemCache(directory, threshold=THRESHOLD, key_prefix=PREFIXES[writer % 2])
    go.wait()
    for i in range(rounds):
        cache.set(f"{writer}-{i}", i)
        cache.inc("shared counter")
        if i % 5 == 0:
            cache.delete(f"{writer}-{i - 2}")


def test_processes_on_two_prefixes_keep_each_within_threshold_and_lose_no_increment(
    tmp_path: Path,
) -> None:
    context = multiprocessing.get_context("fork")
    go = context.Event()
    rounds = 200
    workers = [
        context.Process(target=_churn, args=(str(tmp_path), n, rounds, go)) for n in range(4)
    ]
    for worker in workers:
        worker.start()
    largest = dict.fromkeys(PREFIXES, 0)
    heads = {prefix: FileSystemCache(tmp_path, key_prefix=prefix)._ns_head for prefix in PREFIXES}
    go.set()
    while any(worker.is_alive() for worker in workers):
        names = entry_names(tmp_path)
        for prefix, head in heads.items():
            largest[prefix] = max(largest[prefix], sum(n.startswith(head) for n in names))
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert largest == dict.fromkeys(PREFIXES, THRESHOLD)
    for prefix in PREFIXES:
        cache = FileSystemCache(tmp_path, threshold=THRESHOLD, key_prefix=prefix)
        assert cache.get("shared counter") == 2 * rounds


def _with_no_file_growth(action: Callable[[], object], results: Results) -> None:
    # a write into any regular file now fails (EFBIG), as on a disk that refuses the tally
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
    results.put(action())


def test_a_delete_whose_count_cannot_be_written_answers_that_it_removed_the_entry(
    tmp_path: Path,
) -> None:
    cache = FileSystemCache(tmp_path)
    assert cache.set("k", "v") and cache.set("j", "w")
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    process = context.Process(
        target=_with_no_file_growth, args=(lambda: FileSystemCache(tmp_path).delete("k"), results)
    )
    process.start()
    try:
        assert results.get(timeout=60) is True
    finally:
        process.join(timeout=60)
    assert cache.get("k") is None
    assert cache.get("j") == "w"
    assert cache.set("k", "again") and cache.get("k") == "again"
