"""FileSystemCache when the process runs out of file descriptors, with its options reassigned,
and pickled for a ``spawn`` child: what the contract file cannot show."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import pickle
import resource
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock
from test_filesystem import entry_names

from cacheplug import ConfigurationError, FileSystemCache, from_url

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")
WAIT = 60.0  # seconds a child may take on a loaded machine before the test fails
EMFILE_TEXT = f"[Errno {errno.EMFILE}]"


class Descriptors:
    """The free file descriptors of a forked child, held and given back one at a time."""

    def __init__(self) -> None:
        self.held: list[int] = []

    def starve(self, spare: int) -> None:
        """Hold every free descriptor but ``spare``: the next ``spare + 1``-th open is EMFILE."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        while True:
            try:
                self.held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as err:
                assert err.errno == errno.EMFILE
                break
        for _ in range(spare):
            os.close(self.held.pop())

    def take(self) -> None:
        """Hold one more, if one is free, as another thread opening a socket would."""
        try:
            self.held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as err:
            assert err.errno == errno.EMFILE

    def give(self) -> None:
        """Free one, as another thread closing a socket would."""
        if self.held:
            os.close(self.held.pop())

    def give_all(self) -> None:
        while self.held:
            os.close(self.held.pop())


class StarvingClock(FakeClock):
    """A fake clock that, once ``armed``, calls ``step`` each time it is read: the cache reads
    its clock between file operations, where another thread may open or close descriptors."""

    def __init__(self) -> None:
        super().__init__()
        self.step: Callable[[], None] | None = None

    def __call__(self) -> float:
        if self.step is not None:
            self.step()
        return self.now


def in_starved_child(action: Callable[[Descriptors, list[str]], dict[str, Any]]) -> dict[str, Any]:
    """What ``action(descriptors, log)`` returns in a forked child; ``log`` gathers the
    warnings cacheplug logs there, and every descriptor is given back before the answer."""
    results = FORK.Queue()

    def run() -> None:
        log: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: log.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("cacheplug").addHandler(handler)
        descriptors = Descriptors()
        try:
            outcome = action(descriptors, log)
        except BaseException:
            descriptors.give_all()
            outcome = {"raised": traceback.format_exc()}
        descriptors.give_all()
        outcome["log"] = log
        results.put(outcome)

    process = FORK.Process(target=run)
    process.start()
    try:
        outcome: dict[str, Any] = results.get(timeout=WAIT)
    finally:
        process.join(timeout=WAIT)
    assert "raised" not in outcome, outcome["raised"]
    return outcome


def assert_no_entry_read_as_damaged(log: list[str]) -> None:
    assert not [line for line in log if "unreadable" in line], log


def assert_outage_logged(log: list[str], operation: str) -> None:
    """``operation`` logged as a failure for want of a descriptor, and no entry as damaged."""
    failed = f"FileSystemCache.{operation} failed"
    assert any(failed in line and EMFILE_TEXT in line for line in log), log
    assert_no_entry_read_as_damaged(log)


# -- 1. out of descriptors: an outage, never a missing entry ------------------------------------


def test_get_and_has_without_a_descriptor_count_an_outage_not_a_miss(tmp_path: Path) -> None:
    writer = FileSystemCache(tmp_path)
    assert writer.set("k", "v")
    cache = FileSystemCache(tmp_path)

    def starved(descriptors: Descriptors, log: list[str]) -> dict[str, Any]:
        descriptors.starve(spare=0)
        found, present = cache.get("k"), cache.has("k")
        descriptors.give_all()
        return {"found": found, "present": present, "stats": cache.stats()}

    outcome = in_starved_child(starved)
    assert outcome["found"] is None and outcome["present"] is False
    assert outcome["stats"]["errors"] == 2
    assert outcome["stats"]["misses"] == 0  # an outage counts its error, not a miss
    assert_outage_logged(outcome["log"], "get")
    assert writer.get("k") == "v"


def test_delete_without_a_descriptor_to_read_the_entry_leaves_it(tmp_path: Path) -> None:
    writer = FileSystemCache(tmp_path)
    assert writer.set("k", "v")
    cache = FileSystemCache(tmp_path)

    def starved(descriptors: Descriptors, log: list[str]) -> dict[str, Any]:
        descriptors.starve(spare=1)  # the lock file's: none left to read the entry
        return {"deleted": cache.delete("k"), "stats": cache.stats()}

    outcome = in_starved_child(starved)
    assert writer.get("k") == "v"
    assert outcome["deleted"] is False
    assert outcome["stats"]["errors"] == 1 and outcome["stats"]["deletes"] == 0
    assert_no_entry_read_as_damaged(outcome["log"])


def test_add_without_a_descriptor_to_read_the_entry_fails_once_and_keeps_it(
    tmp_path: Path,
) -> None:
    writer = FileSystemCache(tmp_path)
    assert writer.set("k", "live")
    cache = FileSystemCache(tmp_path)

    def starved(descriptors: Descriptors, log: list[str]) -> dict[str, Any]:
        descriptors.starve(spare=1)
        return {"added": cache.add("k", "overwritten"), "stats": cache.stats()}

    outcome = in_starved_child(starved)
    assert outcome["added"] is False
    assert outcome["stats"]["errors"] == 1  # the failed read alone, no write tried after it
    assert_outage_logged(outcome["log"], "add")
    assert writer.get("k") == "live"


def test_inc_whose_read_finds_no_descriptor_leaves_the_counter(tmp_path: Path) -> None:
    writer = FileSystemCache(tmp_path)
    assert writer.set("n", 41)
    clock = StarvingClock()
    cache = FileSystemCache(tmp_path, clock=clock)

    def starved(descriptors: Descriptors, log: list[str]) -> dict[str, Any]:
        descriptors.starve(spare=1)  # the lock file's: the read of the counter fails
        clock.step = descriptors.give  # a descriptor freed just after, for a write
        counted = cache.inc("n")
        clock.step = None
        return {"counted": counted}

    outcome = in_starved_child(starved)
    assert writer.get("n") == 41
    assert outcome["counted"] is None
    assert_no_entry_read_as_damaged(outcome["log"])
    assert writer.inc("n") == 42


def test_pruning_that_runs_out_of_descriptors_drops_no_live_entry(tmp_path: Path) -> None:
    clock = StarvingClock()
    cache = FileSystemCache(tmp_path, threshold=10, clock=clock)
    for number in range(10):
        assert cache.set(f"live{number}", number, timeout=3600)
    clock.advance(60)  # every entry still live

    def starved(descriptors: Descriptors, log: list[str]) -> dict[str, Any]:
        descriptors.starve(spare=3)
        clock.step = descriptors.take  # each read of the clock, one descriptor fewer
        return {"stored": cache.set("new", "value")}

    outcome = in_starved_child(starved)
    assert [cache.get(f"live{number}") for number in range(10)] == list(range(10))
    assert outcome["stored"] is False  # full, and pruning could not tell what is dead
    assert_no_entry_read_as_damaged(outcome["log"])
    assert cache.set("after", "value")  # descriptors to spare: pruning makes room again
    survivors = [cache.get(f"live{number}") for number in range(10)]
    assert survivors.count(None) == 1  # the least recently written one
    assert cache.get("after") == "value"


def test_an_entry_that_is_no_regular_file_still_reads_as_damaged_and_is_pruned(
    tmp_path: Path, clock: FakeClock
) -> None:
    cache = FileSystemCache(tmp_path, threshold=3, clock=clock)
    assert cache.set("a", 1) and cache.set("b", 2)
    before = entry_names(tmp_path)
    assert cache.set("c", 3)
    (name,) = entry_names(tmp_path) - before
    (tmp_path / name).unlink()
    (tmp_path / name).mkdir()  # a directory where the entry of "c" was
    assert cache.get("c") is None
    assert cache.stats()["errors"] == 1  # read as damaged: an error, not an outage
    assert cache.set("d", 4)  # full: pruning passes over the damaged one, no outage
    assert [cache.get(key) for key in "abd"] == [1, 2, 4]


# -- 2. threshold reassigned --------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, "5", 2.0, True, None])
def test_a_bad_threshold_is_refused_on_assignment_as_the_constructor_refuses_it(
    tmp_path: Path, bad: Any
) -> None:
    with pytest.raises(ConfigurationError) as from_init:
        FileSystemCache(tmp_path, threshold=bad)
    cache = FileSystemCache(tmp_path, threshold=3)
    with pytest.raises(ConfigurationError) as assigned:
        cache.threshold = bad
    assert str(assigned.value) == str(from_init.value)
    assert cache.threshold == 3
    for number in range(4):
        assert cache.set(str(number), number)
    assert len(entry_names(tmp_path)) == 3


def test_a_lowered_threshold_prunes_at_the_next_new_key_and_zero_lifts_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    cache = FileSystemCache(tmp_path, threshold=100, clock=clock)
    for number in range(20):
        clock.advance(1)
        assert cache.set(str(number), number)
    cache.threshold = 5
    assert len(entry_names(tmp_path)) == 20  # assigning it touches no file
    assert cache.set("new", "value")
    assert len(entry_names(tmp_path)) <= 5
    assert cache.get("new") == "value"
    cache.threshold = 0
    for number in range(20):
        assert cache.set(f"more{number}", number)
    assert len(entry_names(tmp_path)) >= 20


# -- 3. pickled, for another process ------------------------------------------------------------


def test_a_pickled_cache_shares_the_directory_and_options_but_not_the_counters(
    tmp_path: Path,
) -> None:
    cache = FileSystemCache(
        tmp_path,
        threshold=7,
        default_timeout=120,
        mode=0o640,
        hash_method="sha1",
        key_prefix="app:",
        serializer="json",
        secret="s3cret",
        lock_timeout=2.5,
    )
    assert cache.set("shared", [1, 2]) and cache.get("shared") == [1, 2]
    copy = pickle.loads(pickle.dumps(cache))
    assert repr(copy) == repr(cache)
    assert (copy.cache_dir, copy.mode, copy.threshold) == (cache.cache_dir, 0o640, 7)
    assert copy.stats() == dict.fromkeys(cache.stats(), 0)
    assert copy.get("shared") == [1, 2]  # the same signature key, prefix and file names
    assert copy.set("back", {"a": 1}) and cache.get("back") == {"a": 1}
    assert copy.inc("n") == 1 and cache.inc("n") == 2 and copy.get("n") == 2
    unsigned = FileSystemCache(tmp_path, hash_method="sha1", key_prefix="app:", serializer="json")
    assert unsigned.get("back") is None  # still signed: the secret came along


def _child_reads_and_writes(cache: FileSystemCache, results: Any) -> None:
    results.put((cache.get("from parent"), cache.set("from child", {"pid": os.getpid()})))
    results.put(cache.inc("visits"))


def test_a_spawned_child_reads_what_the_parent_wrote_and_writes_for_it(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path, key_prefix="job:", secret="s3cret")
    assert cache.set("from parent", ["hello"])
    assert cache.inc("visits") == 1
    results = SPAWN.Queue()
    child = SPAWN.Process(target=_child_reads_and_writes, args=(cache, results))
    child.start()
    try:
        assert results.get(timeout=WAIT) == (["hello"], True)
        assert results.get(timeout=WAIT) == 2
    finally:
        child.join(timeout=WAIT)
    assert child.exitcode == 0
    assert cache.get("from child") == {"pid": child.pid}
    assert cache.inc("visits") == 3


# -- 4. mode ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o4755, 0o2770, 0o1777, 0o4600, 0o7777], ids=oct)
def test_a_mode_with_setuid_setgid_or_sticky_bits_is_refused(tmp_path: Path, mode: int) -> None:
    with pytest.raises(
        ConfigurationError, match=f"no setuid, setgid or sticky bit\\) .* got {oct(mode)}$"
    ):
        FileSystemCache(tmp_path, mode=mode)
    with pytest.raises(ConfigurationError, match="no setuid, setgid or sticky bit"):
        from_url(f"file://{tmp_path}?mode={mode:o}")
    assert not os.listdir(tmp_path)


def test_the_widest_plain_mode_is_accepted(tmp_path: Path) -> None:
    cache = FileSystemCache(tmp_path, mode=0o777)
    assert cache.set("k", "v") and cache.get("k") == "v"
    (name,) = entry_names(tmp_path)
    assert os.stat(tmp_path / name).st_mode & 0o7777 == 0o777
