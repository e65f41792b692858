"""FileSystemCache: the contract in a real directory, plus what only a file cache promises."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock

from cacheplug import ConfigurationError, FileSystemCache, from_url
from cacheplug.testing import CacheContract, CacheFactory


def entry_names(directory: Path) -> set[str]:
    """Names of the cache entries in ``directory`` (temp and lock files left out)."""
    return {n for n in os.listdir(directory) if n.startswith("cp-") and not n.endswith(".tmp")}


@pytest.fixture(params=["pickle", "json", "msgpack"])
def serializer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestFileSystemCacheContract(CacheContract):
    shared_store = True

    @pytest.fixture
    def cache_factory(
        self, tmp_path: Path, clock: FakeClock, serializer: str
    ) -> Iterator[CacheFactory]:
        caches: list[FileSystemCache] = []

        def make(**kwargs: Any) -> FileSystemCache:
            kwargs.setdefault("serializer", serializer)
            cache = FileSystemCache(tmp_path / "cache", clock=clock, **kwargs)
            caches.append(cache)
            return cache

        yield make
        for cache in caches:
            cache.close()

    @pytest.fixture
    def advance(self, clock: FakeClock) -> Callable[[float], None]:
        return clock.advance


# -- threshold ------------------------------------------------------------------------------------


def test_threshold_is_never_exceeded(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path, threshold=10)
    for i in range(60):
        assert cache.set(f"k{i}", i) is True
        assert len(entry_names(tmp_path)) <= 10
    assert cache.get("k59") == 59
    assert cache.stats()["evictions"] >= 50


def test_full_cache_drops_expired_entries_before_live_ones(
    tmp_path: Path, clock: FakeClock
) -> None:
    cache = FileSystemCache(tmp_path, threshold=4, clock=clock)
    cache.set("live-a", 1, timeout=0)
    cache.set("short", 2, timeout=5)
    cache.set("live-b", 3, timeout=100)
    cache.set("live-c", 4, timeout=100)
    clock.advance(10)
    cache.set("new", 5)
    assert cache.get_many("live-a", "short", "live-b", "live-c", "new") == [1, None, 3, 4, 5]


def test_full_cache_drops_the_least_recently_written(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path, threshold=3)
    for key in ["young", "old", "middle"]:
        before = set(entry_names(tmp_path))
        cache.set(key, key)
        (name,) = set(entry_names(tmp_path)) - before
        written = 1_000_000 + {"old": 0, "middle": 1, "young": 2}[key]
        os.utime(tmp_path / name, (written, written))
    cache.set("newest", "n")
    assert cache.get_many("old", "middle", "young", "newest") == [None, "middle", "young", "n"]


def test_threshold_zero_means_unbounded(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path, threshold=0)
    cache.set_many({f"k{i}": i for i in range(600)})
    assert len(entry_names(tmp_path)) == 600


def test_instances_sharing_a_directory_share_the_threshold(tmp_path: Path) -> None:
    first = FileSystemCache(tmp_path, threshold=20)
    second = FileSystemCache(tmp_path, threshold=20)
    for i in range(15):
        first.set(f"a{i}", i)
        second.set(f"b{i}", i)
        assert len(entry_names(tmp_path)) <= 20
    assert first.get("b14") == 14
    assert second.get("a14") == 14


def test_entry_count_recovers_from_files_removed_behind_its_back(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path, threshold=10)
    cache.set_many({f"k{i}": i for i in range(10)})
    for name in entry_names(tmp_path):
        os.unlink(tmp_path / name)
    cache.set_many({f"n{i}": i for i in range(10)})
    assert cache.get_many(*(f"n{i}" for i in range(10))) == list(range(10))


# -- clear and key prefixes -----------------------------------------------------------------------


def test_clear_leaves_foreign_files_alone(tmp_path: Path) -> None:
    foreign = {
        "notes.txt": b"mine",
        "cp-not-an-entry": b"looks close",
        "cp-" + "0" * 16 + "-" + "f" * 10: b"wrong digest length",
        ".hidden": b"x",
    }
    for name, data in foreign.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "subdir").mkdir()
    cache = FileSystemCache(tmp_path)
    cache.set_many({"a": 1, "b": 2})
    cache.inc("n")
    assert len(entry_names(tmp_path)) == 3 + 2  # ours + the two foreign cp- names
    assert cache.clear() is True
    for name, data in foreign.items():
        assert (tmp_path / name).read_bytes() == data
    assert (tmp_path / "subdir").is_dir()
    assert cache.get_many("a", "b", "n") == [None, None, None]


def test_clear_removes_stale_temp_files_and_keeps_fresh_ones(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path)
    cache.set("k", 1)
    (entry,) = entry_names(tmp_path)
    stale, fresh = tmp_path / f"{entry}.{'a' * 12}.tmp", tmp_path / f"{entry}.{'b' * 12}.tmp"
    stale.write_bytes(b"half a value")
    fresh.write_bytes(b"being written")
    os.utime(stale, (1_000_000, 1_000_000))
    assert cache.clear() is True
    assert not stale.exists()
    assert fresh.exists()  # may belong to a writer still at work


def test_prefixed_clear_keeps_other_prefixes_and_unprefixed_clear_takes_all(
    tmp_path: Path,
) -> None:
    plain = FileSystemCache(tmp_path)
    left = FileSystemCache(tmp_path, key_prefix="left:")
    right = FileSystemCache(tmp_path, key_prefix="right:")
    for cache in (plain, left, right):
        cache.set("key", repr(cache.key_prefix))
    assert [c.get("key") for c in (plain, left, right)] == ["''", "'left:'", "'right:'"]
    assert left.clear() is True
    assert [c.get("key") for c in (plain, left, right)] == ["''", None, "'right:'"]
    assert plain.clear() is True
    assert [c.get("key") for c in (plain, left, right)] == [None, None, None]


def test_clear_leaves_no_file_of_its_prefix_behind(tmp_path: Path) -> None:
    other = FileSystemCache(tmp_path, key_prefix="other:")
    other.set("k", 1)
    before = sorted(os.listdir(tmp_path))
    cache = FileSystemCache(tmp_path, key_prefix="once:")
    cache.set_many({"a": 1, "b": 2})
    cache.inc("n")
    assert cache.clear() is True
    assert sorted(os.listdir(tmp_path)) == before
    assert (cache.set("a", 3), cache.add("a", 4), cache.inc("n")) == (True, False, 1)
    assert (cache.get("a"), other.get("k")) == (3, 1)


def test_a_reassigned_key_prefix_is_that_prefix_in_full(tmp_path: Path) -> None:
    left = FileSystemCache(tmp_path, key_prefix="left:")
    left.set("k", "left")
    moved = FileSystemCache(tmp_path, key_prefix="left:")
    moved.key_prefix = "right:"
    right = FileSystemCache(tmp_path, key_prefix="right:")
    assert moved.get("k") is None
    assert moved.set("k", "right") is True
    assert (right.get("k"), left.get("k")) == ("right", "left")
    assert moved.clear() is True  # clears right:, never the prefix it was built with
    assert (right.get("k"), left.get("k")) == (None, "left")


def test_threshold_applies_per_prefix(tmp_path: Path) -> None:
    left = FileSystemCache(tmp_path, threshold=5, key_prefix="left:")
    right = FileSystemCache(tmp_path, threshold=5, key_prefix="right:")
    right.set_many({f"r{i}": i for i in range(5)})
    left.set_many({f"l{i}": i for i in range(40)})
    assert right.get_many(*(f"r{i}" for i in range(5))) == [0, 1, 2, 3, 4]


# -- construction and URLs ------------------------------------------------------------------------


def test_cachelib_style_construction(tmp_path: Path) -> None:
    cache = FileSystemCache(str(tmp_path / "x"), threshold=10, mode=0o600)
    assert (cache.threshold, cache.mode, cache.default_timeout) == (10, 0o600, 300)
    positional = FileSystemCache(str(tmp_path / "y"), 20, 60, 0o640, hashlib.md5, True)
    assert (positional.threshold, positional.default_timeout, positional.mode) == (20, 60, 0o640)
    assert positional.set("k", "v") is True
    assert positional.get("k") == "v"
    assert all(len(name) == 3 + 16 + 1 + 32 for name in entry_names(tmp_path / "y"))


def test_missing_directory_is_created_with_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    cache = FileSystemCache(target)
    assert target.is_dir()
    assert cache.set("k", 1) is True


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o660])
def test_file_mode_is_honoured_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    old_umask = os.umask(0o077)
    try:
        cache = FileSystemCache(tmp_path, mode=mode)
        cache.set("k", "v")
        cache.inc("n")
    finally:
        os.umask(old_umask)
    modes = {stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in entry_names(tmp_path)}
    assert modes == {mode}


_chmods: list[object] | None = None


def _count_chmods(event: str, args: tuple[object, ...]) -> None:
    if event == "os.chmod" and _chmods is not None:
        _chmods.append(args[0])


sys.addaudithook(_count_chmods)  # os.fchmod raises the "os.chmod" audit event


def chmods_during(action: Callable[[], object]) -> int:
    """How many chmod/fchmod calls ``action`` made."""
    global _chmods
    _chmods = []
    try:
        action()
        return len(_chmods)
    finally:
        _chmods = None


# (0o600, 0o277): three entries and the lock file, which the umask left without its write bit
@pytest.mark.parametrize(
    ("mode", "umask", "chmods"), [(0o600, 0o022, 0), (0o600, 0o277, 4), (0o640, 0o022, 3)]
)
def test_writes_chmod_only_when_the_umask_could_narrow_the_mode(
    tmp_path: Path, mode: int, umask: int, chmods: int
) -> None:
    old_umask = os.umask(umask)
    try:
        cache = FileSystemCache(tmp_path, mode=mode)
        assert (
            chmods_during(lambda: (cache.set("k", 1), cache.add("a", 1), cache.inc("n"))) == chmods
        )
        names = [*entry_names(tmp_path), *(p.name for p in tmp_path.glob(".cacheplug-*.lock"))]
        modes = {stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in names}
        assert modes == {mode}
    finally:
        os.umask(old_umask)


def test_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_bytes(b"")
    with pytest.raises(ConfigurationError, match="not a directory"):
        FileSystemCache(regular)
    with pytest.raises(ConfigurationError, match="cannot be created or written"):
        FileSystemCache(regular / "below")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_directory_nobody_can_write_is_refused() -> None:
    # Even root cannot create files in /proc.
    with pytest.raises(ConfigurationError, match="cannot be created or written"):
        FileSystemCache("/proc")
    with pytest.raises(ConfigurationError, match="cannot be created or written"):
        FileSystemCache("/proc/cacheplug-test-dir")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"threshold": -1}, "threshold"),
        ({"threshold": "10"}, "threshold"),
        ({"mode": 0o400}, r"mode .* got 0o400$"),  # in octal, as modes are written
        ({"mode": 0o10000}, r"got 0o10000$"),
        ({"mode": "600"}, r"got '600'$"),
        ({"hash_method": "nope"}, "unknown hash_method"),
        ({"hash_method": hashlib.shake_128}, "hash_method"),
        ({"hash_method": len}, "hash_method"),
    ],
    ids=repr,
)
def test_bad_options_are_configuration_errors(
    tmp_path: Path, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        FileSystemCache(tmp_path, **options)


def test_from_url_round_trip(tmp_path: Path) -> None:
    url = f"file://{tmp_path}?threshold=7&mode=0o640&hash_method=sha1&serializer=json"
    cache = from_url(url, key_prefix="app:")
    assert isinstance(cache, FileSystemCache)
    assert (cache.cache_dir, cache.threshold, cache.mode) == (str(tmp_path), 7, 0o640)
    assert cache.set("k", (1, 2)) is True
    assert cache.get("k") == [1, 2]
    again = FileSystemCache(
        tmp_path, hash_method=hashlib.sha1, key_prefix="app:", serializer="json"
    )
    assert again.get("k") == [1, 2]


@pytest.mark.parametrize("text", ["600", "0600", "0o600", "0O600"])
def test_url_mode_is_octal_text(tmp_path: Path, text: str) -> None:
    cache = from_url(f"file://{tmp_path}?mode={text}")
    assert isinstance(cache, FileSystemCache)
    assert cache.mode == 0o600


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("file://relative/dir", "three slashes"),
        ("file://host/abs/dir", "no host"),
        ("file://", "absolute directory"),
        ("file:///tmp/x?mode=rw", "octal"),
        ("file:///tmp/x?mode=0o999", "octal"),
        ("file:///tmp/x?threshold=many", "threshold"),
        ("file:///tmp/x?size=1", "unknown option 'size'"),
    ],
)
def test_bad_urls_say_how_to_write_them(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        from_url(url)


# -- files, expiry and counters -------------------------------------------------------------------


def test_entries_persist_across_instances(tmp_path: Path) -> None:
    FileSystemCache(tmp_path, serializer="msgpack").set("k", {"v": b"\x00"})
    assert FileSystemCache(tmp_path, serializer="msgpack").get("k") == {"v": b"\x00"}


def test_inc_keeps_expiry_of_existing_counter(tmp_path: Path, clock: FakeClock) -> None:
    cache = FileSystemCache(tmp_path, default_timeout=100, clock=clock)
    cache.set("n", 1, timeout=10)
    clock.advance(8)
    assert cache.inc("n") == 2
    clock.advance(3)
    assert cache.get("n") is None
    assert cache.inc("fresh") == 1
    clock.advance(99)
    assert cache.get("fresh") == 1
    clock.advance(2)
    assert cache.get("fresh") is None


def test_has_reads_only_the_header(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path)
    cache.set("k", "value")
    (name,) = entry_names(tmp_path)
    path = tmp_path / name
    header = path.read_bytes()[:12]
    path.write_bytes(header + b"garbage no serializer reads")
    assert cache.has("k") is True
    assert cache.get("k") is None


def test_set_recreates_a_removed_directory(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    cache = FileSystemCache(directory)
    cache.set("k", 1)
    for name in os.listdir(directory):
        os.unlink(directory / name)
    directory.rmdir()
    assert cache.get("k") is None
    assert cache.set("k", 2) is True
    assert cache.get("k") == 2


def test_cachelib_serializer_object_is_accepted(tmp_path: Path) -> None:
    from cachelib.serializers import FileSystemSerializer

    cache = FileSystemCache(tmp_path)
    cache.serializer = FileSystemSerializer()
    cache.set("k", {"a": 1})
    assert cache.get("k") == {"a": 1}


def test_repr_names_directory_and_never_the_secret(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path, secret="hunter2")
    text = repr(cache)
    assert str(tmp_path) in text
    assert "hunter2" not in text


def remove_tree(directory: Path) -> None:
    for name in os.listdir(directory):
        os.unlink(directory / name)
    directory.rmdir()


def test_every_operation_recreates_a_removed_directory(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    cache = FileSystemCache(directory)
    for _ in range(3):
        cache.set("k", 1)
        remove_tree(directory)
        assert (cache.add("a", 1), cache.inc("n"), cache.delete("a")) == (True, 1, True)
        assert directory.is_dir()
    for operation in (cache.clear, lambda: cache.inc("n"), lambda: cache.set_many({"m": 1})):
        remove_tree(directory)
        assert operation()
    assert cache.stats()["errors"] == 0


def test_reads_and_deletes_in_a_removed_directory_are_misses(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    cache = FileSystemCache(directory)
    cache.set("k", 1)
    remove_tree(directory)
    assert (cache.get("k"), cache.has("k"), cache.delete("k")) == (None, False, False)
    assert cache.get_many("k", "j") == [None, None]
    assert cache.delete_many("k") == []
    assert cache.stats()["errors"] == 0


def test_a_removed_directory_comes_back_with_its_parents_and_permissions(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "cache"
    directory.mkdir(parents=True)
    directory.chmod(0o750)
    cache = FileSystemCache(directory)
    cache.set("k", 1)
    old_umask = os.umask(0o077)
    try:
        remove_tree(directory)
        os.rmdir(tmp_path / "a" / "b")
        os.rmdir(tmp_path / "a")
        assert cache.add("k", 2) is True
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert cache.get("k") == 2


def test_nul_byte_in_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="NUL byte"):
        FileSystemCache(str(tmp_path) + "/bad\0dir")
    with pytest.raises(ConfigurationError, match="NUL byte"):
        from_url("file:///\x00")


_FSYNC_PROBE = """
import os, sys
from cacheplug import FileSystemCache

cache = FileSystemCache(sys.argv[1], fsync=sys.argv[2] == "on")
directory_opens = []

def audit(event, args):
    # os.open raises the audit event "open" with (path, mode, flags)
    if event == "open" and args[0] == cache.cache_dir and args[2] & os.O_DIRECTORY:
        directory_opens.append(args[0])

sys.addaudithook(audit)
for call in (lambda: cache.set("a", 1), lambda: cache.set("a", 2), lambda: cache.inc("n")):
    before = len(directory_opens)
    call()
    print(len(directory_opens) - before)
print(cache.get("a"), cache.get("n"))
"""


@pytest.mark.parametrize(("fsync", "synced"), [("on", "1"), ("off", "0")])
def test_fsync_also_syncs_the_directory_after_each_rename(
    tmp_path: Path, fsync: str, synced: str
) -> None:
    import subprocess

    run = subprocess.run(
        [sys.executable, "-c", _FSYNC_PROBE, str(tmp_path), fsync],
        capture_output=True,
        text=True,
        check=True,
    )
    # new entry, overwrite, counter: each rename is followed by a sync of the directory
    assert run.stdout.split("\n") == [synced, synced, synced, "2 1", ""]
