"""FileSystemCache when another process holds its lock and hangs: writes give up after
``lock_timeout`` with the contract's outage values; reads go on; writes resume once it lets go."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import FORKS_BESIDE_A_THREAD
from test_filesystem_edge import needs_proc_locks, wait_for, waiters_on
from test_filesystem_faults import lock_file
from waiting import process_state, wait_until

from cacheplug import FileSystemCache, from_url
from cacheplug.backends import _filesystem_locks
from cacheplug.core.errors import ConfigurationError

_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(3600)  # holds until it is terminated
"""


@contextmanager
def held_elsewhere(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the ``flock`` of ``path`` (a file or a directory) for the
    block; it lets go when the block ends, or earlier when terminated."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=60)
        if holder.stdout is not None:
            holder.stdout.close()


def release(holder: subprocess.Popen[str]) -> None:
    """Let the holder go and wait until it has (its exit drops the lock)."""
    holder.terminate()
    assert holder.wait(timeout=60) == -signal.SIGTERM


def every_write(cache: FileSystemCache) -> tuple[object, ...]:
    return (
        cache.set("k", "w"),
        cache.set("new", 1),
        cache.add("fresh", 1),
        cache.delete("k"),
        cache.inc("n"),
        cache.dec("n"),
        cache.set_many({"a": 1, "b": 2}),
        cache.delete_many("k", "n"),
        cache.clear(),
    )


OUTAGE = (False, False, False, False, None, None, [], [], False)


def test_writes_answer_outage_values_while_another_process_holds_the_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = FileSystemCache(tmp_path, lock_timeout=0.2)
    assert cache.set("k", "v") and cache.inc("n") == 1
    with held_elsewhere(lock_file(tmp_path)) as holder:
        errors = cache.stats()["errors"]
        with caplog.at_level(logging.WARNING, logger="cacheplug"):
            assert every_write(cache) == OUTAGE
        # the reads take no lock
        assert (cache.get("k"), cache.has("k"), cache.get("n"), cache.has("new")) == (
            "v",
            True,
            1,
            False,
        )
        assert cache.stats()["errors"] - errors == 11  # each write, and each key of the many
        assert "TimeoutError" in caplog.text
        assert "lock_timeout=0.2s" in caplog.text
        release(holder)
        assert every_write(cache) == (True, True, True, True, 2, 1, ["a", "b"], ["n"], True)
    assert not list(tmp_path.glob("*.tmp"))  # the values refused left no temp file


def test_writes_resume_when_a_stopped_holder_is_killed(tmp_path: Path) -> None:
    # Ctrl-Z on a process inside its write, then kill -9: its flock dies with it.
    cache = FileSystemCache(tmp_path, lock_timeout=0.2)
    cache.set("k", "v")
    with held_elsewhere(lock_file(tmp_path)) as holder:
        os.kill(holder.pid, signal.SIGSTOP)
        wait_until(lambda: process_state(holder.pid) == "T", timeout=10)
        assert (cache.set("k", "w"), cache.inc("n")) == (False, None)
        holder.kill()
        holder.wait(timeout=60)
        assert (cache.set("k", "w"), cache.inc("n"), cache.get("k")) == (True, 1, "w")


def test_threads_of_one_cache_waiting_behind_a_hung_holder_all_give_up(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path, lock_timeout=0.2)
    cache.set("k", "v")
    answers: list[object] = []
    with held_elsewhere(lock_file(tmp_path)) as holder:
        threads = [
            threading.Thread(target=lambda i=i: answers.append(cache.set(f"k{i}", i)))
            for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert answers == [False] * 4
        release(holder)
        assert cache.set("k0", 0) and cache.get("k0") == 0


def test_a_repair_waiting_on_a_hung_repairer_gives_up(tmp_path: Path) -> None:
    # A symlink planted at the lock path is removed under the directory's own flock, which a
    # hung process holds here.
    cache = FileSystemCache(tmp_path, lock_timeout=0.2)
    cache.set("k", "v")
    path = lock_file(tmp_path)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with held_elsewhere(tmp_path) as holder:
        assert (cache.set("k", "w"), cache.inc("n"), cache.get("k")) == (False, None, "v")
        assert path.is_symlink()
        release(holder)
        assert (cache.set("k", "w"), cache.inc("n"), cache.get("k")) == (True, 1, "w")
    assert not path.is_symlink() and path.is_file()


def test_replacing_an_unusable_lock_gives_up_on_its_hung_holder(tmp_path: Path) -> None:
    # A directory at the lock path is removed once its holder is done with it.
    cache = FileSystemCache(tmp_path, lock_timeout=0.2)
    cache.set("k", "v")
    path = lock_file(tmp_path)
    path.unlink()
    path.mkdir()
    with held_elsewhere(path) as holder:
        assert (cache.set("k", "w"), cache.clear(), cache.get("k")) == (False, False, "v")
        assert path.is_dir()
        release(holder)
        assert (cache.set("k", "w"), cache.get("k")) == (True, "w")
    assert path.is_file()


@needs_proc_locks
def test_without_lock_timeout_a_write_waits_as_long_as_the_holder_holds(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path, lock_timeout=None)
    cache.set("n", 1)
    answers: list[int | None] = []
    with held_elsewhere(lock_file(tmp_path)) as holder:
        worker = threading.Thread(target=lambda: answers.append(cache.inc("n")))
        worker.start()
        seen = os.open(lock_file(tmp_path), os.O_RDONLY)
        try:
            wait_for(lambda: waiters_on(seen) == 1, "inc waits on the lock file")
        finally:
            os.close(seen)
        assert answers == []
        release(holder)
        worker.join(timeout=60)
    assert answers == [2]


def _count(directory: Path, cache: FileSystemCache | None, times: int) -> None:
    cache = cache or FileSystemCache(directory)
    for _ in range(times):
        assert cache.inc("n") is not None


def test_writers_contending_never_time_out_nor_lose_an_increment(tmp_path: Path) -> None:
    # threads take turns, whichever cache they use; processes poll
    shared = FileSystemCache(tmp_path)
    workers: list[threading.Thread | subprocess.Popen[str]] = []
    for i in range(8):
        cache = shared if i % 2 else None
        workers.append(threading.Thread(target=_count, args=(tmp_path, cache, 250)))
    code = (
        "import sys; from cacheplug import FileSystemCache; c = FileSystemCache(sys.argv[1]); "
        "sys.exit(sum(c.inc('n') is None for _ in range(250)))"
    )
    for _ in range(2):
        workers.append(subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]))
    for worker in workers:
        if isinstance(worker, threading.Thread):
            worker.start()
    for worker in workers:
        if isinstance(worker, threading.Thread):
            worker.join(timeout=120)
            assert not worker.is_alive()
        else:
            assert worker.wait(timeout=120) == 0
    assert shared.get("n") == 10 * 250
    assert shared.stats()["errors"] == 0


@pytest.mark.parametrize("seconds", [0, -1, math.nan, math.inf, "2", True, [1]])
def test_lock_timeout_must_be_positive_seconds_or_none(tmp_path: Path, seconds: object) -> None:
    with pytest.raises(ConfigurationError, match=r"lock_timeout must be a number of seconds > 0"):
        FileSystemCache(tmp_path, lock_timeout=seconds)  # type: ignore[arg-type]


def test_lock_timeout_defaults_to_five_seconds_and_shows_in_repr(tmp_path: Path) -> None:
    assert FileSystemCache(tmp_path).lock_timeout == 5.0
    assert "lock_timeout=5.0" in repr(FileSystemCache(tmp_path))
    assert "lock_timeout=None" in repr(FileSystemCache(tmp_path, lock_timeout=None))
    cache = FileSystemCache(tmp_path, lock_timeout=1)
    assert cache.lock_timeout == 1
    with pytest.raises(ConfigurationError, match="lock_timeout"):
        cache.lock_timeout = -2
    assert cache.lock_timeout == 1


def test_lock_timeout_from_the_url(tmp_path: Path) -> None:
    cache = from_url(f"file://{tmp_path}?lock_timeout=0.5")
    assert isinstance(cache, FileSystemCache)
    assert cache.lock_timeout == 0.5
    with pytest.raises(ConfigurationError, match="'lock_timeout' must be a number"):
        from_url(f"file://{tmp_path}?lock_timeout=soon")
    with pytest.raises(ConfigurationError, match="lock_timeout must be a number of seconds > 0"):
        from_url(f"file://{tmp_path}?lock_timeout=0")


@pytest.mark.usefixtures("sigint_raises")
@pytest.mark.parametrize("where", ["polling the lock", "behind another thread"])
def test_an_interrupted_wait_for_the_lock_leaves_nothing_held(tmp_path: Path, where: str) -> None:
    # Ctrl-C on a process whose main thread waits to write: KeyboardInterrupt, and the cache
    # works on, its turn not left to the interrupted thread.
    cache = FileSystemCache(tmp_path, lock_timeout=60)
    cache.set("k", "v")
    answers: list[bool] = []
    with held_elsewhere(lock_file(tmp_path)) as holder:
        if where == "behind another thread":
            first = threading.Thread(target=lambda: answers.append(cache.set("k", "x")))
            first.start()
            wait_for(lambda: bool(cache._lock_fds), "the first thread polls the lock")
            turn = _filesystem_locks.turns[str(lock_file(tmp_path))]
            waiting = lambda: len(turn._waiters) == 1  # noqa: E731
        else:
            waiting = lambda: bool(cache._lock_fds)  # noqa: E731

        def interrupt_once_waiting() -> None:
            wait_for(waiting, "the main thread waits")
            os.kill(os.getpid(), signal.SIGINT)

        interrupter = threading.Thread(target=interrupt_once_waiting)
        interrupter.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                cache.set("k", "w")
        finally:
            interrupter.join(timeout=60)
        release(holder)
        if where == "behind another thread":
            first.join(timeout=60)
            assert answers == [True]
    assert cache.set("k", "w") and cache.get("k") == "w"
    assert not list(tmp_path.glob("*.tmp")) and not cache._lock_fds


def _set_once_released(cache: FileSystemCache, released: Any, answers: Any) -> None:
    released.wait(60)
    answers.put(cache.set("k", "child"))


@FORKS_BESIDE_A_THREAD
def test_a_child_forked_while_a_thread_waits_for_the_lock_writes_once_it_is_free(
    tmp_path: Path,
) -> None:
    # the child has none of the parent's threads: a turn one of them held is no child's
    cache = FileSystemCache(tmp_path, lock_timeout=30)
    cache.set("k", "v")
    context = multiprocessing.get_context("fork")
    released, answers = context.Event(), context.Queue()
    with held_elsewhere(lock_file(tmp_path)) as holder:
        waiting = threading.Thread(target=cache.set, args=("k", "parent"))
        waiting.start()
        wait_for(lambda: bool(cache._lock_fds), "a thread waits for the lock")
        child = context.Process(target=_set_once_released, args=(cache, released, answers))
        child.start()
        release(holder)
        waiting.join(timeout=60)
        released.set()
        try:
            assert answers.get(timeout=60) is True
        finally:
            child.join(timeout=60)
    assert cache.get("k") == "child"
