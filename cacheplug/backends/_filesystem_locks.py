"""Locks of ``FileSystemCache`` across threads and processes: the turns this process's threads
take at a lock file, in the order they came, then its ``flock``, waited for until a deadline;
both held and let go by :func:`holding` with no point between where a signal handler's
exception could leave them taken.
"""

from __future__ import annotations

import errno
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Concatenate, ParamSpec, TypeVar

from cacheplug.core._entering import entering

if sys.platform != "win32":
    import fcntl

__all__ = [
    "Turn",
    "close_locked",
    "flock_by",
    "holding",
    "join_turns",
    "leave_turns",
    "lock_timeout_error",
    "turns",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

# A busy lock is tried again after pauses growing from about the time a writer holds it
# (tens of microseconds) to half a millisecond, jittered so waiters do not retry in step:
# longer ones leave a waiter behind the others for tens of milliseconds under contention.
_FIRST_PAUSE = 0.000025
_LONGEST_PAUSE = 0.0005


def join_turns(path: str) -> Turn:
    """The turns of this process's threads at the lock file ``path``, counting this thread
    among their users until ``leave_turns``."""
    with _turns_guarded:
        turn = turns.get(path)
        if turn is None:
            turn = turns[path] = Turn()
        turn.users += 1
    return turn


def leave_turns(path: str, turn: Turn) -> None:
    """Count this thread out of ``turn``'s users; the last one drops it."""
    with _turns_guarded:
        turn.users -= 1
        if not turn.users and turns.get(path) is turn:
            del turns[path]


def _forget_turns() -> None:
    # in a forked child: the parent's threads that held or awaited turns are not there
    global _turns_guard, _turns_guarded
    _turns_guard = threading.Lock()
    _turns_guarded = entering(_turns_guard)
    turns.clear()


class Turn:
    """A lock given in the order it was asked for, with a bounded wait: a released
    ``threading.Lock`` goes to the thread running, so a waiter may lose it again and again."""

    def __init__(self) -> None:
        self.users = 0  # threads holding or awaiting it, kept by join_turns/leave_turns
        self._guard = threading.Lock()
        self._guarded = entering(self._guard)
        self._held = False
        self._owner = 0  # the thread holding it (ident), or 0
        self._waiters: deque[tuple[threading.Lock, int]] = deque()

    def acquire(self, timeout: float, me: int) -> bool:
        """Whether thread ``me`` (the caller) acquired it within ``timeout`` seconds (-1: as
        long as it takes).

        A signal handler raising in it may leave it held by this thread (as it returns, or as
        it is handed over): the caller releases it in its ``finally``.
        """
        waiter = None
        try:
            with self._guarded:
                if not self._held:
                    self._held = True
                    self._owner = me
                    return True
                waiter = threading.Lock()
                waiter.acquire()
                self._waiters.append((waiter, me))
            if waiter.acquire(timeout=timeout):
                return True
        except BaseException:  # a signal handler raised: out of the queue, if still in it
            if waiter is not None:
                self._withdraw(waiter, me)
            raise
        return not self._withdraw(waiter, me)

    def _withdraw(self, waiter: threading.Lock, me: int) -> bool:
        """Take ``waiter`` out of the queue; whether it was there (else it was handed the turn)."""
        with self._guarded:
            if (waiter, me) in self._waiters:
                self._waiters.remove((waiter, me))
                return True
        return False

    def release(self, me: int) -> None:
        """Hand it to the longest waiter, if any, when thread ``me`` holds it (else nothing)."""
        with self._guarded:
            if self._owner != me:
                return
            if self._waiters:
                # no call before the waiter's release (a del is none): a signal handler's
                # exception raised in between would leave it waiting out its timeout
                waiter, self._owner = self._waiters[0]
                del self._waiters[0]
                waiter.release()
            else:
                self._held = False
                self._owner = 0


def flock_by(fd: int, path: str, deadline: float | None, timeout: float | None) -> None:
    """Lock ``fd``, the file at ``path``, exclusively, waiting for its holder until ``deadline``
    (``time.monotonic``) or, without one, for as long as it holds it.

    :param timeout: the seconds ``deadline`` stands for, for the error.
    :raises TimeoutError: the holder kept it past ``deadline``.
    """
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    pause = _FIRST_PAUSE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise lock_timeout_error(path, timeout)
        # a blocking flock takes no deadline and no signal of ours may cut it short
        time.sleep(min(left, pause * (0.5 + random.random())))
        pause = min(2 * pause, _LONGEST_PAUSE)


def lock_timeout_error(path: str, timeout: float | None) -> TimeoutError:
    return TimeoutError(
        errno.ETIMEDOUT, f"lock held by another writer for over lock_timeout={timeout!r}s", path
    )


def holding(
    held: Iterator[T], call: Callable[Concatenate[T, P], R], *args: P.args, **kwargs: P.kwargs
) -> R:
    """``call(what, *args, **kwargs)`` between the first ``next`` of ``held``, which gives
    ``what``, and the second, which lets it go (the generators of ``_filesystem_lockfile``:
    ``locked`` and ``_repairing``).
    """
    # Both steps are C calls inside this try: a signal handler raising between them cannot leave
    # the lock to the suspended generator. A with-block would: the __exit__ of a generator's
    # context manager is Python code, cut at its start, and only the garbage collector would
    # close the generator, late and in whichever thread it runs.
    try:
        return call(next(held), *args, **kwargs)
    finally:
        next(held, None)


def close_locked(fd: int) -> None:
    # unlocked first: a child forked meanwhile holds a copy of fd, which would keep the flock
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


turns: dict[str, Turn] = {}
_turns_guard = threading.Lock()
_turns_guarded = entering(_turns_guard)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_turns)
