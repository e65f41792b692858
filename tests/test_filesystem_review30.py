"""FileSystemCache under review: an entry failing with I/O errors, which delete and set clear
away, and what a demanding user meets besides."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock
from test_filesystem import entry_names
from test_filesystem_large import fill_with_entries, small_disk
from test_filesystem_review28 import FailingReads, entry_of

from cacheplug import FileSystemCache

__all__ = ["small_disk"]  # a fixture of test_filesystem_large, which few_inodes builds on

THRESHOLD = 10


@pytest.fixture
def failing_reads(monkeypatch: pytest.MonkeyPatch) -> FailingReads:
    return FailingReads(monkeypatch)


# -- 1. one entry failing with EIO: add and inc cannot tell, delete and set need not read -------


def test_delete_removes_an_entry_failing_with_eio_so_add_and_inc_work_again(
    tmp_path: Path, clock: FakeClock, failing_reads: FailingReads, caplog: Any
) -> None:
    cache = FileSystemCache(tmp_path, clock=clock)
    lock = entry_of(cache, "lock", "held")
    counter = entry_of(cache, "counter", 41)
    failing_reads.files(lock, counter)
    # whether the entry is live is unknown: add and inc never overwrite or restart it
    assert cache.add("lock", "mine") is False
    assert cache.inc("counter") is None
    assert lock.exists() and counter.exists()
    errors = cache.stats()["errors"]
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        # the damaged entry's answer: it could not be read, so it is not known to have existed
        assert cache.delete("lock") is False
        assert cache.delete_many("counter") == []
    assert not lock.exists() and not counter.exists()
    assert entry_names(tmp_path) == set()
    assert cache.stats()["errors"] == errors + 2 and cache.stats()["deletes"] == 0
    assert any("unreadable" in line and "Input/output error" in line for line in caplog.messages)
    assert not [line for line in caplog.messages if "delete failed" in line]
    failing_reads.stop()  # a new file may get the inode number of a removed one
    assert cache.add("lock", "mine") is True and cache.get("lock") == "mine"
    assert cache.inc("counter") == 1


# -- 2. a value larger than one read gives ------------------------------------------------------


@pytest.fixture
def short_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.read`` giving at most 4 kB per call, as Linux gives at most 2 GiB per call (and a
    FUSE or network file system may give less): the caller must read on to the end."""
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, size: real_read(fd, min(size, 4096)))


@pytest.mark.usefixtures("short_reads")
def test_a_value_longer_than_one_read_reads_back_whole(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path)
    value = bytes(range(256)) * 400  # 100 kB: 25 reads at most 4 kB each
    assert cache.set("large", value)
    assert cache.get("large") == value
    assert cache.get_many("large", "missing") == [value, None]
    assert cache.stats()["errors"] == 0


# -- 3. a lock file failing reads ----------------------------------------------------------------


class FailingLockReads:
    """``os.pread`` failing with EIO, once ``failing``, on the lock files of a directory, as on
    a bad sector (the entry count is read with it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
        self.failing = False
        self.reads = 0  # reads that failed
        real_pread = os.pread

        def pread(fd: int, size: int, offset: int) -> bytes:
            if self.failing and self.is_lock_file(directory, os.fstat(fd)):
                self.reads += 1
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real_pread(fd, size, offset)

        monkeypatch.setattr(os, "pread", pread)

    @staticmethod
    def is_lock_file(directory: Path, info: os.stat_result) -> bool:
        return any(
            name.endswith(".lock") and os.path.samestat(info, (directory / name).lstat())
            for name in os.listdir(directory)
        )


def test_a_lock_file_whose_count_cannot_be_read_fails_no_write_or_delete(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = FileSystemCache(tmp_path, threshold=THRESHOLD, clock=clock)
    assert cache.set("kept", "value") and cache.set("gone", "value")
    lock_reads = FailingLockReads(monkeypatch, tmp_path)
    lock_reads.failing = True
    # the count is unknown, so the directory is counted instead
    assert cache.set("new", "value") is True
    assert cache.add("added", "value") is True
    assert cache.inc("counter") == 1
    assert cache.delete("gone") is True  # removed, and answered so
    assert lock_reads.reads >= 4
    for number in range(2 * THRESHOLD):
        assert cache.set(f"more{number}", number)
        assert len(entry_names(tmp_path)) <= THRESHOLD
    assert cache.get(f"more{2 * THRESHOLD - 1}") == 2 * THRESHOLD - 1
    assert cache.stats()["errors"] == 0


# -- 4. an empty directory planted at an entry's name -------------------------------------------


def test_delete_and_a_born_expired_set_take_away_an_empty_directory_as_set_does(
    tmp_path: Path, caplog: Any
) -> None:
    cache = FileSystemCache(tmp_path)
    first, second = entry_of(cache, "first"), entry_of(cache, "second")
    for path in (first, second):
        path.unlink()
        path.mkdir()
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert cache.delete("first") is False  # no entry was there
        assert cache.set("second", "value", timeout=-1) is True  # born expired: removed
    assert not first.exists() and not second.exists()
    assert not [line for line in caplog.messages if "failed" in line], caplog.messages
    assert cache.stats()["errors"] == 1  # the directory read as an unreadable entry, once
    assert cache.add("first", "value") is True and cache.get("first") == "value"
    second.mkdir()
    (second / "file").touch()  # not empty: left, as set leaves it
    assert cache.delete("second") is False and (second / "file").exists()


# -- 5. a cache constructed on a full disk ------------------------------------------------------


@pytest.fixture
def few_inodes(small_disk: Path) -> Path:
    """``small_disk`` with 16 inodes: they run out before its bytes, so not even an empty file
    can be created there once a dozen entries are."""
    subprocess.run(["mount", "-o", "remount,nr_inodes=16", str(small_disk)], check=True)
    return small_disk


@pytest.mark.parametrize("mode", [None, 0o660])
def test_a_cache_constructed_on_a_full_disk_answers_as_in_an_outage_and_makes_room(
    few_inodes: Path, clock: FakeClock, mode: int | None
) -> None:
    # A restarted application met a ConfigurationError here, though the cache would have freed
    # the room itself, as the cache it replaces did.
    directory = few_inodes / "cache"
    old = fill_with_entries(FileSystemCache(directory, threshold=0, clock=clock), timeout=10)
    cache = FileSystemCache(directory, threshold=0, mode=mode, clock=clock)
    assert cache.get_many(*old) == [bytes(50_000)] * len(old)
    assert cache.set("new", "value") is False  # every entry is live: none dropped for room
    assert cache.get(old[-1]) == bytes(50_000)
    clock.advance(11)
    assert cache.set("new", "value") is True  # the expired entries made room
    assert cache.get("new") == "value"
    assert cache.stats()["evictions"] == len(old)
    (name,) = entry_names(directory)
    assert stat.S_IMODE(os.stat(directory / name).st_mode) == (mode or 0o600)


# -- 6. the directory removed while the constructor prepares it ---------------------------------

_remove_at_probe: list[Path] = []  # directories to remove as the constructor's probe opens


def _rm_rf_at_probe(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _remove_at_probe and ".cacheplug-probe-" in str(args[0]):
        shutil.rmtree(_remove_at_probe.pop())


sys.addaudithook(_rm_rf_at_probe)


def test_a_directory_removed_as_the_constructor_probes_it_is_made_again(tmp_path: Path) -> None:
    # A process starting while an operator empties the cache with rm -rf raised
    # ConfigurationError (or a bare FileNotFoundError), where a running cache makes it again.
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o750)
    _remove_at_probe.append(directory)
    try:
        cache = FileSystemCache(directory)
    finally:
        removed = not _remove_at_probe
        _remove_at_probe.clear()
    assert removed  # the probe's open found no directory
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert not [name for name in os.listdir(directory) if "probe" in name]
    assert cache.set("k", "v") and cache.get("k") == "v"
