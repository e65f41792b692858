"""What lists the directory of ``FileSystemCache``: counting a prefix's entries (and taking
the temp files of writers that died), pruning them below ``threshold``, dropping the dead ones
on a full disk, and ``clear``'s removal of a cache's files.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from cacheplug.backends._filesystem_files import OUT_OF_RESOURCES, discard
from cacheplug.backends._filesystem_tally import keep_tally

if TYPE_CHECKING:
    from cacheplug.backends.filesystem import FileSystemCache

__all__ = ["drop_dead_entries", "entry_names", "prune", "unlink_own_files"]

_STALE_TEMP_SECONDS = 600.0  # a temp file this old belongs to a writer that died
_FULL_DISK_PAUSE = 10.0  # seconds between two listings for room on a full disk


def entry_names(cache: FileSystemCache) -> list[str]:
    names: list[str] = []
    listed = 0
    # opened as open_fd opens a file: no point between the open and the try where a signal
    # handler's exception could leave the listing to the garbage collector, unclosed
    (listing,) = map(os.scandir, (cache.cache_dir,))
    try:
        for item in listing:
            listed += 1
            name = item.name
            if name.startswith(cache._ns_head) and cache._entry_name.fullmatch(name):
                names.append(name)
            elif cache._temp_name.fullmatch(name) and _is_stale_temp(cache, name, item.path):
                discard(item.path)
    finally:
        listing.close()
    cache._listed = listed
    return names


def prune(cache: FileSystemCache, names: list[str]) -> int:
    """Drop expired and unreadable entries, then those failing with an I/O error, then the
    least recently written; entries left."""
    threshold = cache._threshold
    target = threshold - max(1, threshold // 10)
    kept, failing = _drop_dead(cache, names)
    kept.sort()
    # entries that cannot be read cannot be served: the first victims, never more than
    # pruning would drop anyway, as their fault may pass
    excess = max(0, len(kept) + len(failing) - target)
    victims = failing[:excess] + [path for _, path in kept[: max(0, excess - len(failing))]]
    for path in victims:
        _evict(cache, path)
    return min(len(kept) + len(failing), target)


def _drop_dead(
    cache: FileSystemCache, names: list[str]
) -> tuple[list[tuple[float, str]], list[str]]:
    """Drop the expired and unreadable entries of ``names``; ``(written at, path)`` of the
    others that could be read, and the paths of those that failed with an I/O error.

    :raises OSError: the process ran out of descriptors or memory reading one, or every
        read failed: the file system is failing, and the rest stay, live or not.
    """
    kept: list[tuple[float, str]] = []
    failures: list[tuple[str, OSError]] = []
    for name in names:
        path = os.path.join(cache.cache_dir, name)
        try:
            entry = cache._read(path, header_only=True)
        except OSError as err:
            if err.errno in OUT_OF_RESOURCES:
                raise
            failures.append((path, err))
            continue
        if entry is None or cache._expired(entry[0]):
            _evict(cache, path)
        else:
            kept.append((entry[2], path))
    if failures and len(failures) == len(names):  # no read worked: not one file's fault
        raise failures[0][1]
    for path, failure in failures:  # the others read fine: these files are at fault
        cache._unreadable(path, f"{failure.strerror or failure} while pruning")
    return kept, [path for path, _ in failures]


def _evict(cache: FileSystemCache, path: str) -> None:
    discard(path)
    cache._evictions += 1


def _is_stale_temp(cache: FileSystemCache, name: str, path: str) -> bool:
    if not cache._temp_name.fullmatch(name):
        return False
    try:
        return os.stat(path).st_mtime < time.time() - _STALE_TEMP_SECONDS
    except OSError:
        return False


def drop_dead_entries(cache: FileSystemCache, lock: int) -> bool:
    """Drop this prefix's expired and unreadable entries, never a live one, for a disk that
    is full below ``threshold``; whether any went. It lists the directory, so at most once
    per ``_FULL_DISK_PAUSE`` seconds.
    """
    now = cache._clock()  # the clock of expiry: waiting on it lets entries expire
    if now < cache._full_disk_until:
        return False
    cache._full_disk_until = now + _FULL_DISK_PAUSE
    names = entry_names(cache)
    kept, failing = _drop_dead(cache, names)
    left = len(kept) + len(failing)
    keep_tally(lock, left, 0)
    return left < len(names)


def unlink_own_files(cache: FileSystemCache) -> bool:
    """Remove this cache's entries and stale temp files; whether every one went.

    :raises OSError: the directory cannot be listed.
    """
    ok = True
    for name in os.listdir(cache.cache_dir):
        if not name.startswith(cache._own_head):
            continue
        path = os.path.join(cache.cache_dir, name)
        if cache._entry_name.fullmatch(name) or _is_stale_temp(cache, name, path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                cache._backend_error("clear", err)
                ok = False
    return ok
