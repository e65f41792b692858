"""``entering(lock)``: the object to use in ``with`` for ``lock``, so that a signal cannot
leave the lock held as the with statement takes it.

CPython 3.14 calls a context manager's ``__enter__`` with a CALL instruction, which handles
pending signals as a C function returns: a signal handler's exception (KeyboardInterrupt, a
deadline) raised there comes before the block's handler, skips ``__exit__`` and leaves a lock
that its C ``__enter__`` took held (CPython gh-148874, fixed for 3.15). Other versions call
``__enter__`` inside the with statement's own instruction, which handles none: there
``entering`` returns the lock itself, at no cost.

Build it once per lock (an attribute next to the lock), not per ``with``: a call at the with
statement would add a signal check of its own.
"""

from __future__ import annotations

import operator
import sys
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

__all__ = ["AFFECTED", "entering"]

#: whether this interpreter raises a signal's exception between ``__enter__`` and the block
AFFECTED = sys.version_info[:2] == (3, 14)


class _Entering:
    """A lock for ``with``: taken in a Python ``__enter__`` (its caller goes on without a
    signal check) by a property whose getter is C (none inside either), released by the lock's
    own C ``__exit__``. A signal is handled as ``__enter__`` starts, before the lock is taken."""

    __slots__ = ("_exit", "acquire")

    def __init__(self, lock: Any) -> None:
        self.acquire = lock.acquire
        self._exit = lock.__exit__

    _take = property(operator.methodcaller("acquire"))
    # read by the with statement before __enter__ runs: the exit runs no Python code
    __exit__ = property(operator.attrgetter("_exit"))

    def __enter__(self) -> None:
        self._take  # noqa: B018 (the getter takes the lock)


def entering(lock: Any) -> AbstractContextManager[Any]:
    """What to write in ``with`` for ``lock``: ``lock`` itself, or on CPython 3.14 a wrapper
    that takes it with no signal check between the taking and the block."""
    if AFFECTED:
        return cast("AbstractContextManager[Any]", _Entering(lock))
    return cast("AbstractContextManager[Any]", lock)
