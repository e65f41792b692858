"""FileSystemCache edge cases: its lock file taken away while other writers wait on it."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from test_filesystem import entry_names
from test_filesystem_faults import lock_file

from cacheplug import FileSystemCache

needs_proc_locks = pytest.mark.skipif(
    not os.path.exists("/proc/locks"), reason="needs Linux /proc/locks to see lock waiters"
)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Return once ``condition()`` holds; fail after 30 seconds."""
    pause = threading.Event()
    for _ in range(3000):
        if condition():
            return
        pause.wait(0.01)
    pytest.fail(f"timed out waiting until {what}")


def waiters_on(fd: int) -> int:
    """How many flock requests wait on the file open as ``fd`` (from /proc/locks): blocking
    ones only, as a cache with ``lock_timeout=None`` makes."""
    inode = f":{os.fstat(fd).st_ino} "
    with open("/proc/locks") as locks:
        return sum(inode in line and "->" in line for line in locks)


def openers_of(held: os.stat_result) -> int:
    """How many descriptors, of any process, have the file ``held`` describes open (from
    /proc): a writer polling its lock has it open, where /proc/locks shows no waiter."""
    count = 0
    for link in glob.glob("/proc/[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            info = os.stat(link)
            count += (info.st_ino, info.st_dev) == (held.st_ino, held.st_dev)
    return count


def hold_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@needs_proc_locks
def test_a_writer_waiting_on_a_removed_lock_file_waits_for_its_successor(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path)
    cache.set("n", 1)
    path = lock_file(tmp_path)
    old = hold_lock(path)  # a writer in another process, inside its critical section
    results: list[int | None] = []
    worker = threading.Thread(target=lambda: results.append(cache.inc("n")))
    worker.start()
    held = [old]
    try:
        wait_for(lambda: openers_of(os.fstat(old)) == 2, "inc waits on the lock file")
        # Someone removes the lock file; the next writer creates and holds a new one.
        path.unlink()
        new = hold_lock(path)
        held.append(new)
        os.close(held.pop(0))
        wait_for(
            lambda: openers_of(os.fstat(new)) == 2 or not worker.is_alive(),
            "inc waits on the new lock file or finishes",
        )
        assert results == []  # inc never ran beside the holder of the current lock
        assert openers_of(os.fstat(new)) == 2
    finally:
        for fd in held:
            os.close(fd)
        worker.join(timeout=30)
    assert results == [2]
    assert cache.get("n") == 2


@pytest.mark.parametrize(
    "scribble",
    [b"\0" * 24, b"\0" * 16, (5).to_bytes(8, "little") * 3, b"\xff" * 24],
    ids=["zeroed", "zeroed old size", "plausible", "all ones"],
)
def test_a_scribbled_entry_count_never_lets_the_directory_outgrow_threshold(
    tmp_path: Path, scribble: bytes
) -> None:
    cache = FileSystemCache(tmp_path, threshold=20)
    cache.set_many({f"old{i}": i for i in range(20)})
    lock_file(tmp_path).write_bytes(scribble)
    sizes = []
    for i in range(30):
        assert cache.set(f"new{i}", i) is True
        sizes.append(len(entry_names(tmp_path)))
    assert max(sizes) == 20
    assert cache.get("new29") == 29


def test_a_key_prefix_with_a_lone_surrogate_works_like_such_a_key(tmp_path: Path) -> None:
    odd = FileSystemCache(tmp_path, key_prefix="\ud800:")
    plain = FileSystemCache(tmp_path, key_prefix="\ufffd:")
    assert odd.set("k", 1) is True
    assert plain.set("k", 2) is True
    assert (odd.get("k"), plain.get("k")) == (1, 2)
    assert odd.clear() is True
    assert (odd.get("k"), plain.get("k")) == (None, 2)
