"""A forked child must not inherit locks held by the parent's other threads (it would hang)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FORKS_BESIDE_A_THREAD

from cacheplug import BaseCache, FileSystemCache, SimpleCache

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILD_WAIT = 5.0  # seconds a child waits for its call before reporting a hang
HUNG, WRONG, RAISED = 3, 4, 5  # exit codes of a failing child


class HeldClock:
    """A clock that, once armed, blocks the parent's first caller until released.

    The cache reads its clock while holding its lock, so a blocked reader holds that lock.
    """

    def __init__(self, start: float) -> None:
        self.now = start
        self.parent = os.getpid()
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> float:
        if self.armed and os.getpid() == self.parent:
            self.armed = False
            self.entered.set()
            self.release.wait(2 * CHILD_WAIT)
        return self.now


def in_child(call: Callable[[], Any], expected: Any, release: threading.Event) -> int:
    """Fork; the child makes ``call`` and exits 0 if it returns ``expected``, within a bound.

    The child calls from the forking thread: a new thread there may get the ident of a parent
    thread that held an RLock, and so pass it. The parent releases ``release`` right after
    the fork, so a lock its thread held is given back in the parent; only a lock the child
    inherited in the held state can still block it.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child process)
        code = RAISED
        try:
            # a blocked lock acquire or flock is interrupted to run this handler
            signal.signal(signal.SIGALRM, lambda *_: os._exit(HUNG))
            signal.setitimer(signal.ITIMER_REAL, CHILD_WAIT)
            code = 0 if call() == expected else WRONG
        finally:
            os._exit(code)
    release.set()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def hold_in_thread(action: Callable[[], Any], entered: threading.Event) -> threading.Thread:
    """Start ``action`` in a thread and return once it holds what ``entered`` tells."""
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    assert entered.wait(CHILD_WAIT)
    return thread


@pytest.fixture(params=["simple", "file"])
def make_cache(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., BaseCache]]:
    def make(**kwargs: Any) -> BaseCache:
        if request.param == "simple":
            return SimpleCache(**kwargs)
        return FileSystemCache(tmp_path, **kwargs)

    yield make


@FORKS_BESIDE_A_THREAD
def test_child_is_not_blocked_by_a_lock_held_by_a_parent_thread(
    make_cache: Callable[..., BaseCache],
) -> None:
    # SimpleCache: its RLock; FileSystemCache: the flock of an inc in progress, whose inherited
    # descriptor kept the lock held in the child forever (and the parent waiting on the child)
    clock = HeldClock(1000.0)
    cache = make_cache(clock=clock)
    cache.set("kept", {"from": "parent"})
    cache.set("n", 1)
    clock.armed = True
    thread = hold_in_thread(lambda: cache.inc("n"), clock.entered)

    def child() -> Any:
        return cache.get("kept"), cache.set("new", 2), cache.get("new"), cache.inc("n")

    # in memory the child counts on from what it inherited; on disk, after the parent's inc
    in_memory = isinstance(cache, SimpleCache)
    assert in_child(child, ({"from": "parent"}, True, 2, 2 if in_memory else 3), clock.release) == 0
    thread.join(CHILD_WAIT)
    assert cache.get("n") == (2 if in_memory else 3)
    assert cache.set("after", 1) is True


@FORKS_BESIDE_A_THREAD
def test_child_is_not_blocked_by_a_parent_thread_in_get_or_set(
    make_cache: Callable[..., BaseCache],
) -> None:
    # the per-key single-flight lock of BaseCache, held while the factory runs
    cache = make_cache()
    entered, release = threading.Event(), threading.Event()

    def slow() -> str:
        entered.set()
        release.wait(2 * CHILD_WAIT)
        return "parent"

    thread = hold_in_thread(lambda: cache.get_or_set("k", slow), entered)

    def child() -> bool:
        # on disk the parent's result may land first: the child reads it then
        return cache.get_or_set("k", lambda: "child") in ("child", "parent")

    assert in_child(child, True, release) == 0
    thread.join(CHILD_WAIT)
    in_memory = isinstance(cache, SimpleCache)
    assert cache.get("k") in (("parent",) if in_memory else ("parent", "child"))


def test_a_backend_defining_eq_alone_still_builds_and_forks() -> None:
    class Comparable(SimpleCache):  # noqa: PLW1641 (unhashable on purpose)
        def __eq__(self, other: object) -> bool:  # makes instances unhashable
            return isinstance(other, Comparable) and self.threshold == other.threshold

    cache = Comparable()
    assert cache.set("k", 1) is True
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if cache.get("k") == 1 and cache.set("k", 2) else WRONG)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.get("k") == 1
