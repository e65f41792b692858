"""FileSystemCache under faults: damaged entry files, several processes and threads at once."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_filesystem import entry_names

from cacheplug import FileSystemCache

ENTRY_SIZE_LIMIT = 32  # the threshold of the thread test


def entry_path(cache: FileSystemCache, key: str) -> Path:
    """The file that holds ``key``: the one entry that appears when it is set."""
    directory = Path(cache.cache_dir)
    before = entry_names(directory)
    cache.set(key, "probe")
    (name,) = entry_names(directory) - before
    return directory / name


def _plant_truncated_payload(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def _plant_truncated_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:5])


def _plant_empty(path: Path) -> None:
    path.write_bytes(b"")


def _plant_foreign(path: Path) -> None:
    path.write_bytes(b"<html>somebody else's file</html>")


def _plant_unreadable_bits(path: Path) -> None:
    # Permission denied for anyone but root; root reads it, and finds foreign bytes.
    path.write_bytes(b"\x00" * 64)
    path.chmod(0)


def _plant_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _plant_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _plant_dangling_symlink(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.parent / "nowhere")


def _plant_symlink_to_foreign_file(path: Path) -> None:
    target = path.parent / "elsewhere.txt"
    target.write_bytes(b"not a cache entry")
    path.unlink()
    path.symlink_to(target)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated payload": _plant_truncated_payload,
    "truncated header": _plant_truncated_header,
    "empty": _plant_empty,
    "foreign content": _plant_foreign,
    "permission denied": _plant_unreadable_bits,
    "directory": _plant_directory,
    "fifo": _plant_fifo,
    "dangling symlink": _plant_dangling_symlink,
    "symlink to a foreign file": _plant_symlink_to_foreign_file,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_entry_is_a_miss_and_set_repairs_it(tmp_path: Path, damage: str) -> None:
    cache = FileSystemCache(tmp_path)
    path = entry_path(cache, "key")
    DAMAGE[damage](path)
    errors_before = cache.stats()["errors"]
    assert cache.get("key") is None
    assert cache.get_many("key", "other") == [None, None]
    # has reads only the header: a valid one with a cut payload still counts as present.
    assert cache.has("key") is (damage == "truncated payload")
    assert cache.stats()["errors"] > errors_before
    assert cache.set("key", {"repaired": True}) is True
    assert cache.get("key") == {"repaired": True}
    assert path.is_file()
    assert not path.is_symlink()


@pytest.mark.parametrize("damage", [d for d in DAMAGE if d != "truncated payload"])
def test_counter_over_a_damaged_entry_starts_afresh(tmp_path: Path, damage: str) -> None:
    cache = FileSystemCache(tmp_path)
    DAMAGE[damage](entry_path(cache, "n"))
    assert cache.inc("n", 5) == 5
    assert cache.get("n") == 5


@pytest.mark.parametrize("damage", [d for d in DAMAGE if d != "truncated payload"])
def test_add_over_a_damaged_entry_stores(tmp_path: Path, damage: str) -> None:
    cache = FileSystemCache(tmp_path)
    DAMAGE[damage](entry_path(cache, "k"))
    assert cache.add("k", "fresh") is True
    assert cache.get("k") == "fresh"


def test_prune_removes_damaged_entries_first(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path, threshold=4)
    _plant_foreign(entry_path(cache, "bad"))
    cache.set_many({"a": 1, "b": 2, "c": 3})
    cache.set("d", 4)
    assert cache.get_many("a", "b", "c", "d") == [1, 2, 3, 4]


def test_clear_removes_damaged_entries_but_not_symlink_targets(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path)
    _plant_symlink_to_foreign_file(entry_path(cache, "link"))
    _plant_empty(entry_path(cache, "empty"))
    assert cache.clear() is True
    assert entry_names(tmp_path) == set()
    assert (tmp_path / "elsewhere.txt").read_bytes() == b"not a cache entry"


# -- several processes ----------------------------------------------------------------------------

VALUE_SIZE = 256 * 1024
SHARED_KEYS = ["alpha", "beta", "gamma", "delta"]


def big_value(writer: int, round_: int) -> bytes:
    stamp = f"{writer}:{round_}:".encode()
    return (stamp * (VALUE_SIZE // len(stamp) + 1))[:VALUE_SIZE]


def _write_rounds(directory: str, writer: int, rounds: int, go: Any) -> None:
    cache = FileSystemCache(directory, threshold=0)
    go.wait()
    for round_ in range(rounds):
        for key in SHARED_KEYS:
            cache.set(key, big_value(writer, round_))


def _count_up(directory: str, times: int, go: Any) -> None:
    cache = FileSystemCache(directory)
    go.wait()
    added = 0
    for n in range(times):
        cache.inc("counter")
        added += cache.add(f"slot{n}", os.getpid())
    cache.set(f"added-by-{os.getpid()}", added)


def assert_whole(value: object) -> None:
    """``value`` is exactly one of the values a writer wrote, or a miss."""
    if value is None:
        return
    assert isinstance(value, bytes)
    writer, round_ = value.split(b":", 2)[:2]
    assert value == big_value(int(writer), int(round_))


def test_processes_writing_the_same_keys_never_mix_values(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    go = context.Event()
    writers = [
        context.Process(target=_write_rounds, args=(str(tmp_path), writer, 25, go))
        for writer in (1, 2)
    ]
    for writer in writers:
        writer.start()
    reader = FileSystemCache(tmp_path, threshold=0)
    go.set()
    reads = 0
    while any(writer.is_alive() for writer in writers):
        for value in reader.get_many(*SHARED_KEYS):
            assert_whole(value)
            reads += value is not None
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    final = reader.get_many(*SHARED_KEYS)
    for value in final:
        assert_whole(value)
    assert None not in final
    assert reads > 0
    assert reader.stats()["errors"] == 0


def test_processes_counting_lose_nothing_and_add_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    go = context.Event()
    times = 150
    workers = [context.Process(target=_count_up, args=(str(tmp_path), times, go)) for _ in "ab"]
    for worker in workers:
        worker.start()
    go.set()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    cache = FileSystemCache(tmp_path)
    assert cache.get("counter") == 2 * times
    owners = cache.get_many(*(f"slot{n}" for n in range(times)))
    assert set(owners) <= {worker.pid for worker in workers}
    assert None not in owners
    assert sum(cache.get(f"added-by-{worker.pid}") for worker in workers) == times


GROUP = 4242  # a group id no account needs; the users below belong to it for one test


def _as_user(directory: str, uid: int, results: Any) -> None:
    """Act as user ``uid`` of ``GROUP`` with the common umask 022: store, count, read back."""
    os.setgroups([])
    os.setgid(GROUP)
    os.setuid(uid)
    os.umask(0o022)
    cache = FileSystemCache(directory, mode=0o660)
    results.put((cache.set(f"by-{uid}", uid), cache.inc("n"), cache.get("by-1001")))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as two users")
def test_users_of_one_group_share_a_cache_whose_mode_lets_the_group_write() -> None:
    # tmp_path is private to root; a directory of /tmp that other users may traverse instead
    top = tempfile.mkdtemp()
    try:
        os.chmod(top, 0o711)
        directory = os.path.join(top, "shared")
        os.mkdir(directory)
        os.chown(directory, 0, GROUP)
        os.chmod(directory, 0o2770)  # the group's files; setgid keeps them in the group
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        answers = []
        for uid in (1001, 1002):
            user = context.Process(target=_as_user, args=(directory, uid, results))
            user.start()
            answers.append(results.get(timeout=60))
            user.join(timeout=60)
        assert answers == [(True, 1, 1001), (True, 2, 1001)]  # as with cachelib
        files = [os.path.join(directory, name) for name in os.listdir(directory)]
        assert {stat.S_IMODE(os.stat(path).st_mode) for path in files} == {0o660}  # lock too
    finally:
        shutil.rmtree(top)


# -- many threads ---------------------------------------------------------------------------------


def test_threads_mixing_every_operation(tmp_path: Path) -> None:
    pool = FileSystemCache(tmp_path / "pool", threshold=ENTRY_SIZE_LIMIT)
    counters = FileSystemCache(tmp_path / "counters", threshold=0)
    threads, rounds, per_round = 8, 4, 40
    sizes: list[int] = []
    barrier = threading.Barrier(
        threads, action=lambda: sizes.append(len(entry_names(tmp_path / "pool")))
    )
    incremented = [0] * threads
    failures: list[BaseException] = []

    def work(n: int) -> None:
        rng = random.Random(n)
        try:
            for _ in range(rounds):
                for _ in range(per_round):
                    key = f"p{rng.randrange(48)}"
                    operation = rng.choice(["get", "set", "add", "inc", "delete"])
                    if operation == "get":
                        value = pool.get(key)
                        assert value is None or type(value) is int
                    elif operation == "set":
                        assert pool.set(key, rng.randrange(1000)) is True
                    elif operation == "add":
                        assert pool.add(key, rng.randrange(1000)) in (True, False)
                    elif operation == "inc":
                        assert type(pool.inc(key)) is int
                        assert counters.inc("total") is not None
                        incremented[n] += 1
                    else:
                        assert pool.delete(key) in (True, False)
                barrier.wait(timeout=60)  # all quiet: the action counts the entries
        except BaseException as err:  # reported below, not lost in the thread
            failures.append(err)
            barrier.abort()

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []
    assert len(sizes) == rounds
    assert max(sizes) <= ENTRY_SIZE_LIMIT
    assert counters.get("total") == sum(incremented) > 0
    assert pool.stats()["errors"] == 0


# -- the lock file and the directory --------------------------------------------------------------


def lock_file(directory: Path) -> Path:
    (path,) = directory.glob(".cacheplug-*.lock")
    return path


@pytest.mark.parametrize("dangling", [False, True], ids=["to a file", "dangling"])
def test_symlink_at_the_lock_path_is_replaced_never_written_through(
    tmp_path: Path, dangling: bool
) -> None:
    directory = tmp_path / "cache"
    cache = FileSystemCache(directory)
    cache.set("before", 1)
    lock = lock_file(directory)
    target = tmp_path / "victim"
    if not dangling:
        target.write_bytes(b"precious")
    lock.unlink()
    lock.symlink_to(target)
    assert cache.set("k", "v") is True
    assert cache.inc("n") == 1
    assert cache.delete("before") is True
    if dangling:
        assert not target.exists()
    else:
        assert target.read_bytes() == b"precious"
    assert not lock.is_symlink()
    assert lock.is_file()
    assert cache.get_many("k", "n", "before") == ["v", 1, None]
    assert cache.stats()["errors"] == 1


def test_directory_removed_again_and_again_under_threads_never_raises(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    cache = FileSystemCache(directory, threshold=20)
    stop = threading.Event()
    failures: list[BaseException] = []
    stored: list[bool] = []

    def remove() -> None:
        while not stop.is_set():
            shutil.rmtree(directory, ignore_errors=True)

    def work(n: int) -> None:
        try:
            for i in range(200):
                stored.append(cache.set(f"k{n}-{i % 30}", i))
                assert cache.get(f"k{n}-{i % 30}") in (i, None)
                counted = cache.inc(f"n{n}")
                assert counted is None or type(counted) is int
                assert cache.add(f"a{n}", i) in (True, False)
                assert cache.delete(f"a{n}") in (True, False)
                if i % 50 == 0:
                    assert cache.clear() in (True, False)
        except BaseException as err:  # reported below, not lost in the thread
            failures.append(err)

    remover = threading.Thread(target=remove)
    workers = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    remover.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    remover.join()
    assert failures == []
    assert True in stored  # writes came through between removals
    assert (cache.set("after", 1), cache.get("after")) == (True, 1)


def test_symlinked_directory_works_and_a_dangling_one_answers_false(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    cache = FileSystemCache(link, threshold=5)
    for i in range(10):
        assert cache.set(f"k{i}", i) is True
    assert len(entry_names(target)) <= 5
    assert cache.get("k9") == 9
    assert cache.clear() is True
    assert entry_names(target) == set()
    shutil.rmtree(target)  # the link dangles: nothing to write through, never an exception
    assert (cache.set("k", 1), cache.add("k", 1), cache.inc("n"), cache.clear()) == (
        False,
        False,
        None,
        False,
    )
    assert (cache.get("k"), cache.has("k"), cache.delete("k")) == (None, False, False)
    assert "FileSystemCache.set failed" in caplog.text
    link.unlink()  # the link gone: the directory comes back in its place
    assert (cache.set("k", 2), cache.get("k")) == (True, 2)
    assert link.is_dir() and not link.is_symlink()
