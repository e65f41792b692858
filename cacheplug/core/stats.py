"""What a cache counts for :meth:`~cacheplug.core.base.BaseCache.stats`, and how it logs engine
failures and unreadable entries: at most once a minute per kind, each thread's errors told
apart from other threads'."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["CONTRACT_SAYS", "CacheStats", "ThreadTally"]

logger = logging.getLogger("cacheplug")

_LOG_INTERVAL = 60.0  # seconds between two log lines of one kind from one cache

#: What an engine failure's log line says before the engine's error (``cacheplug check`` reads it).
CONTRACT_SAYS = "answering as the contract says: "


class ThreadTally(threading.local):
    """When one thread last counted an engine failure and an unreadable entry on one cache:
    the cache's error sequence number then (0: never)."""

    outage = 0
    unreadable = 0


class CacheStats:
    """The counting and logging methods of :class:`~cacheplug.core.base.BaseCache`, for its
    backends; the cache makes the counters, one set per process."""

    _hits: int
    _misses: int
    _sets: int
    _deletes: int
    _evictions: int
    _error_count: int
    _error_seq: int
    _by_thread: ThreadTally
    _last_logged: dict[str, float]
    _held_back: dict[str, int]

    def _lookup_errors(self, seq: int) -> tuple[bool, bool]:
        """Whether this thread's lookup of one key, begun at error sequence ``seq``, counted an
        engine failure and an unreadable entry (another thread's errors are not its own)."""
        if self._error_seq == seq:
            return False, False
        tally = self._by_thread
        return tally.outage > seq, tally.unreadable > seq

    def _take_back_lookup(self, counted: tuple[bool, bool]) -> None:
        """Uncount a lookup that found nothing, as another lookup counts the call instead;
        ``counted``: its :meth:`_lookup_errors`.

        Its miss (every backend counts a ``None`` read as one) and the unreadable entry it met;
        nothing when the engine failed, as a failed lookup counts its error and no miss.
        """
        outage, unreadable = counted
        if not outage:
            self._misses -= 1
            self._error_count -= unreadable

    @property
    def _errors(self) -> int:
        """The ``errors`` of :meth:`stats`."""
        return self._error_count

    @_errors.setter
    def _errors(self, value: int) -> None:
        # a backend counting an engine failure itself (self._errors += 1, as docs/plugins.md
        # allows) marks it as _backend_error does: get_or_set must not take back a miss
        # that failed lookup never counted
        if value > self._error_count:
            self._mark_outage()
        self._error_count = value

    def _mark_outage(self) -> None:
        """Note an engine failure counted in ``errors`` as this thread's (see get_or_set)."""
        self._error_seq += 1
        self._by_thread.outage = self._error_seq

    def stats(self) -> dict[str, int]:
        """Counters since creation: hits, misses, sets, deletes, errors, evictions."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "sets": self._sets,
            "deletes": self._deletes,
            "errors": self._error_count,
            "evictions": self._evictions,
        }

    def _backend_error(self, operation: str, err: Exception) -> None:
        """Count and log an engine failure that the contract turns into a value.

        One line per cache per minute, whatever the operation, so an outage does not flood
        the log; the next line says how many failures it stood for.
        """
        self._error_count += 1  # not through the _errors property: its += is two calls
        self._mark_outage()
        self._log(
            "backend",
            "%s.%s failed, " + CONTRACT_SAYS + "%s: %s",
            type(self).__name__,
            operation,
            type(err).__name__,
            err,
        )

    def _counted_reads(self, values: list[Any], unread: int = 0) -> list[Any]:
        """``values``, the answers of one batch read, counted in :meth:`stats`: each value a
        hit, each ``None`` a miss (a stored ``None`` and an unreadable entry read like one),
        except ``unread`` of them, on a server that failed: those count as errors instead."""
        found = len(values) - values.count(None)
        self._hits += found
        count = len(values) - found - unread
        self._misses += count  # no call between its read and write
        return values

    def _count_unreadable(self) -> None:
        """Count an unreadable stored entry in ``errors``; the caller logs it."""
        self._error_count += 1
        self._error_seq += 1
        self._by_thread.unreadable = self._error_seq

    def _log(self, kind: str, message: str, *args: object) -> None:
        """Log a warning at most once per minute per ``kind``, counting the ones held back."""
        now = time.monotonic()
        last = self._last_logged.get(kind)
        if last is not None and now - last < _LOG_INTERVAL:
            self._held_back[kind] = self._held_back.get(kind, 0) + 1
            return
        self._last_logged[kind] = now
        held = self._held_back.pop(kind, 0)
        if held:
            message += f" ({held} more like this since the last such message, not logged)"
        logger.warning(message, *args)
