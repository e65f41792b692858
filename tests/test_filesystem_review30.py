"""FileSystemCache under review: an entry failing with I/O errors, which delete and set clear
away, and what a demanding user meets besides."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock
from test_filesystem import entry_names
from test_filesystem_review28 import FailingReads, entry_of

from cacheplug import FileSystemCache


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
