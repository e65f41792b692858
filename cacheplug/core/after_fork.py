"""After a fork: new locks for every cache of the process, as the parent's other threads may
hold the ones the child inherits."""

from __future__ import annotations

import logging
import os
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cacheplug.core.base import BaseCache

__all__ = ["live_caches"]

logger = logging.getLogger("cacheplug")

#: Every cache of this process, so a forked child can re-create their locks; keyed by id,
#: as a backend defining ``__eq__`` alone is unhashable.
live_caches: weakref.WeakValueDictionary[int, BaseCache] = weakref.WeakValueDictionary()


def _reset_locks_in_child() -> None:
    """In a forked child: new locks for every cache, as a lock held by another thread of the
    parent stays held forever there (the logging module does the same for its handlers).

    A cache whose reset fails is logged and the others are still reset: one failure must
    not leave every later cache with locks no thread of the child will ever release. A signal
    handler's exception (CPython prints it and goes on with the child) lands in a reset that
    runs once more: each step does again what it did, in a child of one thread.
    """
    try:
        _reset_each_in_child()
    except BaseException:
        _reset_each_in_child()
        raise


def _reset_each_in_child() -> None:
    for cache in list(live_caches.values()):
        try:
            cache._after_fork_in_child()
        except Exception as err:
            logger.warning(
                "%s could not be reset in a forked child, its locks may be the parent's: %s: %s",
                type(cache).__name__,
                type(err).__name__,
                err,
            )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_in_child)
