"""FileSystemCache under review: ``mode`` reassigned, entries failing with I/O errors while the
cache is full, and options reassigned or shared the way SimpleCache takes them."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock
from test_filesystem import entry_names

from cacheplug import ConfigurationError, FileSystemCache

THRESHOLD = 10


def file_mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def entry_of(cache: FileSystemCache, key: str, value: Any = "probe") -> Path:
    """The file that holds ``key`` once it is set to ``value``."""
    directory = Path(cache.cache_dir)
    before = entry_names(directory)
    assert cache.set(key, value)
    (name,) = entry_names(directory) - before
    return directory / name


@pytest.fixture
def umask_077() -> Iterator[None]:
    """A umask that takes the group's and others' bits away, as a hardened system's does."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


# -- 1. mode reassigned -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0o7777, 0o4600, 0o1777, "600", 0o400, -1, 384.0, True, 0o1000])
def test_a_bad_mode_is_refused_on_assignment_as_the_constructor_refuses_it(
    tmp_path: Path, bad: Any
) -> None:
    with pytest.raises(ConfigurationError) as from_init:
        FileSystemCache(tmp_path, mode=bad)
    cache = FileSystemCache(tmp_path, mode=0o640)
    with pytest.raises(ConfigurationError) as assigned:
        cache.mode = bad
    assert str(assigned.value) == str(from_init.value)
    assert cache.mode == 0o640
    path = entry_of(cache, "k", "v")  # writes go on with the mode it had
    assert cache.get("k") == "v"
    assert file_mode(path) == 0o640
    for name in os.listdir(tmp_path):  # no setuid, setgid or sticky file, lock file included
        assert file_mode(tmp_path / name) & 0o7000 == 0, name


@pytest.mark.usefixtures("umask_077")
def test_a_reassigned_mode_applies_to_files_written_afterwards(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path)
    first = entry_of(cache, "first")
    cache.mode = 0o660
    assert cache.mode == 0o660
    second = entry_of(cache, "second")
    assert file_mode(first) == 0o600
    assert file_mode(second) == 0o660  # whatever the umask, as from the constructor
    assert file_mode(first) == 0o600  # written before: left as it was
    cache.mode = None  # the constructor's default, as there
    assert cache.mode == 0o600
    assert file_mode(entry_of(cache, "third")) == 0o600
    copy = pickle.loads(pickle.dumps(cache))
    copy.mode = 0o640
    assert file_mode(entry_of(copy, "fourth")) == 0o640
    assert cache.mode == 0o600 and copy.get("first") == "probe"


# -- 2. an entry failing with EIO while the cache is full ---------------------------------------


class FailingReads:
    """``os.read`` failing with EIO on chosen files, as on a disk with bad sectors: the cache's
    own code and file system stay real, only the answer of the device changes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failing: Callable[[os.stat_result], bool] = lambda info: False
        self.reads = 0  # reads that failed
        real_read = os.read

        def read(fd: int, size: int) -> bytes:
            if self.failing(os.fstat(fd)):
                self.reads += 1
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real_read(fd, size)

        monkeypatch.setattr(os, "read", read)

    def files(self, *paths: Path) -> None:
        """Fail every read of these files, however often they are read, until they are removed
        (a new file may then get the inode number of one)."""
        inodes = {(os.stat(p).st_dev, os.stat(p).st_ino): p for p in paths}

        def failing(info: os.stat_result) -> bool:
            path = inodes.get((info.st_dev, info.st_ino))
            return path is not None and path.exists() and os.path.samestat(info, path.lstat())

        self.failing = failing

    def every_entry(self, directory: Path) -> None:
        """Fail every read of a file in ``directory``: the device itself is failing."""
        device = os.stat(directory).st_dev
        self.failing = lambda info: info.st_dev == device and stat.S_ISREG(info.st_mode)

    def stop(self) -> None:
        self.failing = lambda info: False


@pytest.fixture
def failing_reads(monkeypatch: pytest.MonkeyPatch) -> FailingReads:
    return FailingReads(monkeypatch)


def full_cache(directory: Path, clock: FakeClock) -> tuple[FileSystemCache, dict[str, Path]]:
    """A cache at its threshold of live entries, written a second apart; their files."""
    cache = FileSystemCache(directory, threshold=THRESHOLD, clock=clock)
    files = {}
    for number in range(THRESHOLD):
        clock.advance(1)
        files[f"live{number}"] = entry_of(cache, f"live{number}", number)
    return cache, files


def test_one_entry_failing_with_eio_blocks_no_write_of_a_new_key(
    tmp_path: Path, clock: FakeClock, failing_reads: FailingReads
) -> None:
    cache, files = full_cache(tmp_path, clock)
    failing_reads.files(files["live5"])  # neither the oldest nor the newest
    for number in range(3 * THRESHOLD):
        clock.advance(1)
        assert cache.set(f"new{number}", number), number
        assert len(entry_names(tmp_path)) <= THRESHOLD
    assert cache.get(f"new{3 * THRESHOLD - 1}") == 3 * THRESHOLD - 1
    assert not files["live5"].exists()  # the first victim: it could not be served anyway


def test_entries_failing_with_eio_are_dropped_only_as_far_as_pruning_drops_anyway(
    tmp_path: Path, clock: FakeClock, failing_reads: FailingReads
) -> None:
    cache, files = full_cache(tmp_path, clock)
    bad = [files[f"live{number}"] for number in (2, 4, 6)]
    failing_reads.files(*bad)
    errors = cache.stats()["errors"]
    assert cache.set("new", "value")
    # a tenth of threshold freed, then one written: one victim, a failing one, the rest stays
    assert sum(path.exists() for path in bad) == 2
    assert all(files[f"live{number}"].exists() for number in (0, 1, 3, 5, 7, 8, 9))
    assert cache.get("new") == "value"
    assert len(entry_names(tmp_path)) == THRESHOLD
    assert cache.stats()["errors"] == errors + 3  # each failing entry counted, none as an outage


def test_every_entry_failing_with_eio_is_an_outage_that_drops_nothing(
    tmp_path: Path, clock: FakeClock, failing_reads: FailingReads, caplog: Any
) -> None:
    cache, files = full_cache(tmp_path, clock)
    failing_reads.every_entry(tmp_path)
    with caplog.at_level(logging.WARNING, logger="cacheplug"):
        assert cache.set("new", "value") is False
        assert cache.set("other", "value") is False
    assert failing_reads.reads > 0
    assert all(path.exists() for path in files.values())
    assert entry_names(tmp_path) == {path.name for path in files.values()}
    assert any("FileSystemCache.set failed" in line for line in caplog.messages), caplog.messages
    assert not [line for line in caplog.messages if "unreadable" in line]
    failing_reads.stop()
    assert cache.set("new", "value") and cache.get("new") == "value"
    assert len(entry_names(tmp_path)) <= THRESHOLD


# -- 3. the other options reassigned: checked, and in full effect, as key_prefix is -------------


def test_a_reassigned_cache_dir_moves_every_operation_there(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new" / "nested"
    cache = FileSystemCache(old, key_prefix="app:")
    assert cache.set("stays", "behind")
    cache.cache_dir = new  # created, as by the constructor, and read back absolute
    assert cache.cache_dir == str(new)
    assert cache.get("stays") is None
    assert cache.set("moved", "here") and cache.inc("n") == 1
    assert len(entry_names(new)) == 2 and len(entry_names(old)) == 1
    assert cache.clear()
    assert cache.get("moved") is None and not entry_names(new)
    assert len(entry_names(old)) == 1  # the directory it left keeps its entries
    assert FileSystemCache(old, key_prefix="app:").get("stays") == "behind"


def test_a_bad_cache_dir_is_refused_on_assignment_and_the_cache_stays(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    cache = FileSystemCache(tmp_path / "cache")
    for bad in (afile, "", 5):
        with pytest.raises((ConfigurationError, TypeError)) as assigned:
            cache.cache_dir = bad  # type: ignore[assignment]
        with pytest.raises(type(assigned.value)) as from_init:
            FileSystemCache(bad)  # type: ignore[arg-type]
        assert str(assigned.value) == str(from_init.value)
    assert cache.cache_dir == str(tmp_path / "cache")
    assert cache.set("k", "v") and cache.get("k") == "v"


def test_a_reassigned_hash_method_names_files_anew_here_as_in_a_pickled_copy(
    tmp_path: Path,
) -> None:
    cache = FileSystemCache(tmp_path)
    assert cache.set("old", "sha256 names")
    cache.hash_method = "md5"
    assert cache.set("new", "md5 names")
    copy = pickle.loads(pickle.dumps(cache))
    assert (cache.get("new"), copy.get("new")) == ("md5 names", "md5 names")
    assert (cache.get("old"), copy.get("old")) == (None, None)
    assert {len(name) for name in entry_names(tmp_path)} == {3 + 16 + 1 + 64, 3 + 16 + 1 + 32}
    assert cache.clear()  # its own files: the sha256 names are another cache's now
    assert [len(name) for name in entry_names(tmp_path)] == [3 + 16 + 1 + 64]
    assert FileSystemCache(tmp_path).get("old") == "sha256 names"
    with pytest.raises(ConfigurationError, match="unknown hash_method 'nope'"):
        cache.hash_method = "nope"
    assert cache.hash_method == "md5" and cache.set("again", 1) and copy.get("again") == 1


@pytest.mark.parametrize("bad", ["no", 0, None])
def test_fsync_is_checked_on_assignment_as_in_the_constructor(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(TypeError) as from_init:
        FileSystemCache(tmp_path, fsync=bad)
    cache = FileSystemCache(tmp_path)
    with pytest.raises(TypeError) as assigned:
        cache.fsync = bad
    assert str(assigned.value) == str(from_init.value)
    assert cache.fsync is False
    cache.fsync = True
    assert cache.fsync is True and cache.set("k", "v") and cache.get("k") == "v"


def test_a_threshold_set_again_after_no_limit_counts_the_entries_written_meanwhile(
    tmp_path: Path,
) -> None:
    cache = FileSystemCache(tmp_path, threshold=THRESHOLD)
    for number in range(5):
        assert cache.set(f"counted{number}", number)
    cache.threshold = 0
    for number in range(5 * THRESHOLD):
        assert cache.set(f"uncounted{number}", number)
    cache.threshold = THRESHOLD
    assert cache.set("new", "value")  # the next new key prunes below it, as documented
    assert len(entry_names(tmp_path)) <= THRESHOLD
    assert cache.get("new") == "value"
    for number in range(THRESHOLD):
        assert cache.set(f"more{number}", number)
        assert len(entry_names(tmp_path)) <= THRESHOLD


def test_a_cache_pickled_while_its_options_were_plain_attributes_still_loads(
    tmp_path: Path,
) -> None:
    cache = FileSystemCache(tmp_path, mode=0o640, hash_method="sha1", fsync=True)
    assert cache.set("k", "v")
    state = cache.__getstate__()
    for name in ("cache_dir", "mode", "hash_method", "fsync"):
        state[name] = state.pop(f"_{name}")  # as such a pickle holds them
    copy = FileSystemCache.__new__(FileSystemCache)
    copy.__setstate__(state)
    assert (copy.cache_dir, copy.mode, copy.hash_method, copy.fsync) == (
        str(tmp_path),
        0o640,
        "sha1",
        True,
    )
    assert copy.get("k") == "v" and copy.set("n", 1) and cache.get("n") == 1
