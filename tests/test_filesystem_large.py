"""FileSystemCache under large calls and a hostile disk: crowded directories, a full disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock

from cacheplug import FileSystemCache
from cacheplug.testing import CacheContract, CacheFactory

Outage = Callable[[], contextlib.AbstractContextManager[object]]

PAGE = 4096  # tmpfs hands out space in pages

_listings: list[object] | None = None


def _count_listings(event: str, args: tuple[object, ...]) -> None:
    if event == "os.scandir" and _listings is not None:
        _listings.append(args[0])


sys.addaudithook(_count_listings)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 1 MB mounted for the test (needs root), unmounted after it."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace')}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` with one file, then free ``leave`` bytes again; the file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(PAGE))
    except OSError as err:
        assert err.errno == 28, err  # ENOSPC
    finally:
        os.close(fd)
    os.truncate(filler, filler.stat().st_size - leave)
    return filler


def test_a_small_prefix_in_a_crowded_directory_lists_it_seldom(tmp_path: Path) -> None:
    # The periodic recount of the entries listed the whole directory every 64 new entries of a
    # prefix holding few: with 100k files of other prefixes there, a set + delete cost 20x more.
    crowd = 5000
    for i in range(crowd):
        os.close(os.open(tmp_path / f"cp-{i:016x}-other", os.O_WRONLY | os.O_CREAT))
    cache = FileSystemCache(tmp_path, threshold=500, key_prefix="few:")
    global _listings
    _listings = []
    try:
        for i in range(2000):
            assert cache.set(f"k{i}", i) is True
            assert cache.delete(f"k{i}") is True
        listed = len(_listings) * crowd
    finally:
        _listings = None
    assert listed / 2000 < 20, f"{listed / 2000:.0f} directory entries read per set"


def test_a_value_stored_as_the_disk_fills_up_is_reported_stored(small_disk: Path) -> None:
    # The entry took the last page; the count of entries, written after the rename into a fresh
    # lock file, found none: set answered False (and counted an error) for a value it stored.
    cache = FileSystemCache(small_disk / "cache")
    fill(small_disk, leave=PAGE)
    assert cache.set("key", "value") is True
    assert cache.get("key") == "value"
    assert cache.stats()["sets"] == 1
    assert cache.stats()["errors"] == 0


def test_set_many_as_the_disk_fills_up_lists_exactly_the_keys_stored(small_disk: Path) -> None:
    cache = FileSystemCache(small_disk / "cache", key_prefix="p:")
    cache.set("first", 0)  # the lock file has its count before the disk fills
    values = {f"k{i}": os.urandom(100_000) for i in range(20)}
    stored = cache.set_many(values)
    assert 0 < len(stored) < len(values)
    assert cache.get_many(*values) == [values[k] if k in stored else None for k in values]
    assert not [name for name in os.listdir(small_disk / "cache") if name.endswith(".tmp")]
    assert cache.stats()["errors"] == len(values) - len(stored)  # one per key not stored
    # room again: the same cache stores the rest
    cache.delete_many(*stored)
    rest = {k: v for k, v in values.items() if k not in stored}
    assert sorted(cache.set_many(rest)) == sorted(rest)
    assert cache.get_many(*rest) == list(rest.values())


def fill_with_entries(cache: FileSystemCache, timeout: float) -> list[str]:
    """Store 50 kB values in ``cache`` until the disk refuses one; the keys stored."""
    keys: list[str] = []
    while cache.set(f"old{len(keys)}", bytes(50_000), timeout=timeout):
        keys.append(f"old{len(keys)}")
    assert len(keys) > 5
    return keys


def test_a_disk_full_of_expired_entries_makes_room_for_new_ones(
    small_disk: Path, clock: FakeClock
) -> None:
    # Expired entries were dropped only once the count reached the threshold: on a disk they
    # filled first, every new write failed for good.
    other = FileSystemCache(small_disk / "cache", key_prefix="other:", clock=clock)
    assert other.set("live", "other prefix", timeout=0)
    cache = FileSystemCache(small_disk / "cache", threshold=10_000, clock=clock)
    old = fill_with_entries(cache, timeout=10)
    clock.advance(11)
    assert cache.set("new", b"fresh" * 10_000) is True
    assert cache.get("new") == b"fresh" * 10_000
    assert cache.stats()["evictions"] == len(old)
    assert other.get("live") == "other prefix"  # another prefix's entries are not this one's
    assert cache.set_many({f"more{i}": bytes(50_000) for i in range(5)})  # the room is there


def test_a_disk_full_of_live_entries_keeps_every_one(small_disk: Path, clock: FakeClock) -> None:
    cache = FileSystemCache(small_disk / "cache", threshold=10_000, clock=clock)
    old = fill_with_entries(cache, timeout=0)
    global _listings
    _listings = []
    try:
        assert cache.set("new", bytes(50_000)) is False
        assert cache.set("newer", bytes(50_000)) is False
        listed = len(_listings)
    finally:
        _listings = None
    assert listed <= 1  # a full disk lists the directory once in a while, not on every write
    assert cache.stats()["evictions"] == 0
    assert cache.get_many(*old) == [bytes(50_000)] * len(old)


def test_get_many_of_unreadable_entries_counts_each_once(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path, secret="one")
    FileSystemCache(tmp_path, secret="two").set("other secret", 1)
    FileSystemCache(tmp_path, secret="one", serializer="json").set("json", [1])
    cache.set_many({"good": 1, "truncated": "x" * 100, "foreign": 2})
    truncated = Path(cache._path("truncated"))
    truncated.write_bytes(truncated.read_bytes()[:20])
    Path(cache._path("foreign")).write_bytes(b"not a cacheplug entry")
    keys = ["good", "other secret", "json", "truncated", "foreign", "missing", "good"]
    assert cache.get_many(*keys) == [1, None, None, None, None, None, 1]
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["errors"]) == (2, 5, 4)


class TestOutagesOfTheContract:
    """The contract's outage tests, which test_filesystem skips: a directory replaced by a file,
    and a file system remounted read-only."""

    cache = CacheContract.cache
    test_outage = CacheContract.test_outage_answers_with_the_contract_values_and_recovers
    test_write_outage = CacheContract.test_write_outage_refuses_writes_and_reads_go_on
    test_write_outage_expired = CacheContract.test_write_outage_reads_expired_entries_as_missing

    @pytest.fixture
    def cache_factory(self, small_disk: Path, clock: FakeClock) -> CacheFactory:
        def make(**kwargs: Any) -> FileSystemCache:
            return FileSystemCache(small_disk / "cache", clock=clock, **kwargs)

        return make

    @pytest.fixture
    def advance(self, clock: FakeClock) -> Callable[[float], None]:
        return clock.advance

    @pytest.fixture
    def outage(self, small_disk: Path) -> Outage:
        @contextlib.contextmanager
        def replaced_by_a_file() -> Iterator[None]:
            shutil.rmtree(small_disk / "cache")
            (small_disk / "cache").write_text("not a directory")
            try:
                yield
            finally:
                (small_disk / "cache").unlink()

        return replaced_by_a_file

    @pytest.fixture
    def write_outage(self, small_disk: Path) -> Outage:
        @contextlib.contextmanager
        def read_only() -> Iterator[None]:
            subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
            try:
                yield
            finally:
                subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)

        return read_only


class _BytesOnly:
    """A foreign serializer whose ``loads`` takes nothing but ``bytes``, as json.loads would."""

    name = "bytes-only"

    def dumps(self, value: Any) -> bytes:
        return repr(value).encode()

    def loads(self, data: object) -> Any:
        assert type(data) is bytes, type(data)
        return eval(data.decode(), {})


@pytest.mark.parametrize("secret", [None, "s3cret"])
def test_a_large_value_is_read_back_without_a_second_copy(
    tmp_path: Path, secret: str | None
) -> None:
    # the file was read, joined into a second copy, and sliced past its header into a third:
    # a get of 8 MiB peaked at 24 MiB allocated, now at the value and its payload
    import tracemalloc

    size = 8 << 20
    cache = FileSystemCache(tmp_path, secret=secret)
    assert cache.set("big", b"x" * size) is True
    tracemalloc.start()
    try:
        value = cache.get("big")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert value == b"x" * size
    assert peak < 2.5 * size, f"{peak / size:.2f} copies"


@pytest.mark.parametrize("secret", [None, "s3cret"])
def test_a_serializer_of_its_own_is_handed_bytes(tmp_path: Path, secret: str | None) -> None:
    cache = FileSystemCache(tmp_path, serializer=_BytesOnly(), secret=secret)
    assert cache.set("k", {"a": [1, 2]}) is True
    assert cache.get("k") == {"a": [1, 2]}
    assert cache.inc("n", 2) == 2 and cache.inc("n") == 3
    assert cache.get_many("k", "n", "missing") == [{"a": [1, 2]}, 3, None]
    assert cache.stats()["errors"] == 0
