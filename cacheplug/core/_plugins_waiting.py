"""The deadlock guard of plugin loading: a thread waiting for another thread that loads or
registers plugins waits at most :data:`PATIENCE` seconds, then logs where the loading thread is.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["PATIENCE", "await_loader"]

#: seconds a thread waits for another thread's plugin loading before it logs where that one is
PATIENCE = 10.0


def await_loader(lock: Any, loader: Callable[[], threading.Thread | None]) -> None:
    """Wait until no other thread holds ``lock`` (taken while plugins load or register); past
    ``PATIENCE`` seconds, log where the one holding it, ``loader()``, is and return.

    A plugin whose import or hook waits for a thread that uses cacheplug never finishes loading
    (that thread waits for it): the log names the place, where a silent hang would not.
    """
    if lock._is_owned():
        return
    try:
        if lock.acquire(timeout=PATIENCE):
            lock.release()
            return
    except BaseException:  # a signal handler raised: not left taken
        if lock._is_owned():
            lock.release()
        raise
    import logging
    import traceback

    holder = loader()
    frame = sys._current_frames().get(holder.ident or -1) if holder is not None else None
    where = "".join(traceback.format_stack(frame)).rstrip("\n") if frame else "(unknown)"
    logging.getLogger("cacheplug").warning(
        "thread %r has been loading cacheplug's plugins for over %g s, and thread %r waits "
        "for it; if a plugin, while it loads or inside a hook, waits for a thread that uses "
        "cacheplug, both wait forever. The loading thread is at:\n%s",
        holder.name if holder is not None else "?",
        PATIENCE,
        threading.current_thread().name,
        where,
    )
