"""The lock file of a ``key_prefix`` (``.cacheplug-<prefix tag>.lock`` in the directory), which
every rename and unlink of its entries happens under: opened with the entries' ``mode``, held
exclusively across this process's threads (in turns) and across processes (``flock``), and
replaced when what sits at its path cannot be locked (a symlink, another user's file, a
directory, a FIFO).
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cacheplug.backends._filesystem_dirs import recreate_dir
from cacheplug.backends._filesystem_files import (
    LOCK_FLAGS,
    O_CLOEXEC,
    READ_FLAGS,
    open_fd,
    widen_to,
)
from cacheplug.backends._filesystem_locks import (
    close_locked,
    flock_by,
    holding,
    join_turns,
    leave_turns,
    lock_timeout_error,
)

if sys.platform != "win32":
    import fcntl

if TYPE_CHECKING:
    from cacheplug.backends.filesystem import FileSystemCache

__all__ = ["locked"]


def locked(cache: FileSystemCache) -> Iterator[int]:
    """Hold the lock file of ``cache``'s prefix, exclusive across threads and processes, from
    the first ``next`` (which gives its descriptor) until the second: run by :func:`holding`.

    The threads of this process take turns first, in the order they came: each wakes as
    soon as the one before it is done, where polling the ``flock`` would leave some behind
    and take the interpreter's lock from the holder.

    :raises TimeoutError: another writer held it (or a repair of it) past ``lock_timeout``.
    """
    deadline = cache._lock_deadline()
    path = cache._lock_path
    me = threading.get_ident()
    # plain calls, no nested context managers: every write pays for this
    turn = join_turns(path)
    try:
        fd = -1
        try:
            wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            # inside the try: a signal handler raising as acquire returns leaves it held
            if not turn.acquire(wait, me):
                raise lock_timeout_error(path, cache._lock_timeout)
            fd = _hold(cache, deadline, me)
            yield fd
        finally:
            # each step does nothing once done, so a signal handler raising in one of them
            # is followed by the rest, once more
            try:
                if fd >= 0:
                    _close_lock(cache, fd, me)
                turn.release(me)
            except BaseException:
                if fd >= 0:
                    _close_lock(cache, fd, me)
                turn.release(me)
                raise
    finally:
        leave_turns(path, turn)


def _hold(cache: FileSystemCache, deadline: float | None, me: int) -> int:
    """A descriptor of its own holding this prefix's lock file, waited for until
    ``deadline``; ``me``: this thread's ident."""
    while True:
        fd = _open_lock(cache, deadline)
        try:
            with cache._lock_fds_guarded:
                cache._lock_fds[fd] = me
            flock_by(fd, cache._lock_path, deadline, cache._lock_timeout)
            if _is_current_lock(cache, fd):
                return fd
        except BaseException:
            if cache._lock_fds.get(fd) == me:
                _close_lock(cache, fd, me)
            else:  # cut short before it was noted (3.14: as the guard's with starts)
                os.close(fd)
            raise
        # The file was removed or replaced while we waited: a newcomer locks the new one.
        _close_lock(cache, fd, me)


def _close_lock(cache: FileSystemCache, fd: int, me: int) -> None:
    # Only while thread ``me`` has it: done again after a signal, fd may be another's now.
    # A child forked since the open may hold a copy of fd, which would keep the flock:
    # unlock it first. Out of the map before it is closed, or a child forked in between
    # would close the file another thread opens under the same number. The del is no
    # call, so no signal is handled between it and the close: once out, fd is closed.
    with cache._lock_fds_guarded:
        if cache._lock_fds.get(fd) == me:
            fcntl.flock(fd, fcntl.LOCK_UN)
            del cache._lock_fds[fd]
            os.close(fd)


def _open_lock(cache: FileSystemCache, deadline: float | None) -> int:
    fd = _open_lock_file(cache, deadline)
    mode = cache._mode
    if mode != cache._mode_as_created:
        # The umask narrows a new lock file too; the users ``mode`` lets write must open it.
        try:
            widen_to(fd, mode)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _open_lock_file(cache: FileSystemCache, deadline: float | None) -> int:
    try:
        return open_fd(cache._lock_path, LOCK_FLAGS, cache.mode)
    except FileNotFoundError:  # the directory was removed under us: bring it back
        recreate_dir(cache.cache_dir, cache.mode, cache._dir_mode)
    except (PermissionError, IsADirectoryError):
        _drop_unusable_lock(cache, deadline)
    except OSError:
        if not _drop_symlinked_lock(cache, deadline):
            raise
    return open_fd(cache._lock_path, LOCK_FLAGS, cache.mode)


def _is_current_lock(cache: FileSystemCache, fd: int) -> bool:
    """Whether the open lock file ``fd`` is still the one at the lock path.

    One that is no regular file (a FIFO planted there) cannot keep the tally: its holder
    removes it, so the next one to lock gets a proper one.
    """
    held = os.fstat(fd)
    if not _is_at_lock_path(cache, held):
        return False
    if stat.S_ISREG(held.st_mode):
        return True
    _remove_lock_path(cache, held.st_mode, "no regular file")
    return False


def _is_at_lock_path(cache: FileSystemCache, held: os.stat_result) -> bool:
    try:
        current = os.stat(cache._lock_path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev)


def _repairing(cache: FileSystemCache, deadline: float | None) -> Iterator[None]:
    """Hold the directory's own ``flock`` from the first ``next`` until the second (run by
    :func:`holding`), which keeps two processes replacing a damaged lock file from
    removing the one the other has just created.

    :raises TimeoutError: another repairer held it past ``deadline``.
    """
    dir_fd = open_fd(cache.cache_dir, os.O_RDONLY | O_CLOEXEC)
    try:
        flock_by(dir_fd, cache.cache_dir, deadline, cache._lock_timeout)
        yield
    finally:
        close_locked(dir_fd)


def _drop_symlinked_lock(cache: FileSystemCache, deadline: float | None) -> bool:
    """Unlink a symlink planted at the lock path, never its target; whether there was one.

    No process can hold a lock through a symlink, so removing it breaks no lock.
    """
    if not os.path.islink(cache._lock_path):
        return False
    holding(_repairing(cache, deadline), _unlink_symlinked_lock, cache)
    return True


def _unlink_symlinked_lock(_: None, cache: FileSystemCache) -> None:
    if os.path.islink(cache._lock_path):  # else another repairer was first
        os.unlink(cache._lock_path)
        cache._errors += 1
        cache._log("lock", "symlink at lock file %r removed, never followed", cache._lock_path)


def _drop_unusable_lock(cache: FileSystemCache, deadline: float | None) -> None:
    """Remove a lock file this process may not write (another user's, or made read-only), or
    a directory at the lock path, once its holder is done with it.

    One it may not even read cannot be waited for and is removed as it stands: a writer of
    its owner busy at that moment may overlap one of ours once, which a cache survives
    better than refusing every write for good.

    :raises OSError: it cannot be removed (a sticky directory, a directory with files).
    :raises TimeoutError: its holder or another repairer kept it past ``deadline``.
    """
    holding(_repairing(cache, deadline), _replace_unusable_lock, cache, deadline)


def _replace_unusable_lock(_: None, cache: FileSystemCache, deadline: float | None) -> None:
    try:
        os.close(open_fd(cache._lock_path, LOCK_FLAGS & ~os.O_CREAT))
        return  # another repairer was first
    except (PermissionError, IsADirectoryError):
        pass
    except FileNotFoundError:
        return
    try:
        fd = open_fd(cache._lock_path, READ_FLAGS)
    except PermissionError:
        _remove_lock_path(cache, os.lstat(cache._lock_path).st_mode, "unreadable")
        return
    except FileNotFoundError:
        return
    try:
        flock_by(fd, cache._lock_path, deadline, cache._lock_timeout)  # waits for its holder
        held = os.fstat(fd)
        if _is_at_lock_path(cache, held):  # its holder may have been clear
            _remove_lock_path(cache, held.st_mode, "not writable")
    finally:
        close_locked(fd)


def _remove_lock_path(cache: FileSystemCache, mode: int, why: str) -> None:
    """Remove what is at the lock path, which holds no tally this cache can keep."""
    if stat.S_ISDIR(mode):
        os.rmdir(cache._lock_path)
    else:
        os.unlink(cache._lock_path)
    cache._errors += 1
    cache._log("lock", "lock file %r replaced: %s", cache._lock_path, why)
