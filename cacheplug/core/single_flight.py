"""``get_or_set`` with a single flight per key: threads of one process missing the same key
wait for one call of the factory, and read its result from the cache or are handed a copy."""

from __future__ import annotations

import copy
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from cacheplug.core._entering import entering
from cacheplug.core.stats import CacheStats
from cacheplug.core.timeouts import normalize_timeout

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from cacheplug.core.timeouts import Timeout

__all__ = ["NOT_HANDED", "SingleFlight", "handed_copy"]


class SingleFlight(CacheStats):
    """``get_or_set`` and the per-key lock of :class:`~cacheplug.core.base.BaseCache`, which
    makes the flights, one set per process."""

    _flights: dict[str, list[Any]]
    _flights_locked: AbstractContextManager[Any]

    if TYPE_CHECKING:
        _keeps_entries: ClassVar[bool]

        @property
        def default_timeout(self) -> float: ...

        def get(self, key: str) -> Any: ...

        def set(self, key: str, value: Any, timeout: Timeout = None) -> bool: ...

    def get_or_set(self, key: str, factory: Callable[[], Any], timeout: Timeout = None) -> Any:
        """The cached value, or ``factory()`` stored and returned on a miss.

        Threads of this process missing the same key wait for one ``factory`` call. A
        ``None`` result is returned but not told apart from a miss next time. A result the
        cache did not keep (``None``, a failed write, a timeout below 0) is handed to the
        threads that waited for it, each a deep copy of its own; after an exception, each of
        them calls ``factory`` in turn. Each call counts one lookup in :meth:`stats`: a miss
        when it runs ``factory`` or is handed a result, else a hit.
        """
        seq = self._error_seq  # one attribute: this is the hit path of every memoized call
        value = self.get(key)
        if value is not None:
            return value
        counted = self._lookup_errors(seq)
        flight = self._single_flight(key)
        try:
            shared, seen = next(flight)
            ended = shared[2] != seen  # a call this thread waited for ended meanwhile
            if not ended or shared[4]:  # else its result is not in the cache: no use looking
                self._take_back_lookup(counted)
                value = self.get(key)  # counts this call: a hit when another thread's factory ran
                if value is not None:
                    return value
            if ended:
                # not kept (None, a failed write, NullCache) or gone: waiters must not call
                # one after another
                value = handed_copy(shared[3])
                if value is not NOT_HANDED:
                    return value
            seconds = normalize_timeout(timeout, self.default_timeout)  # raises before factory
            value = factory()
            if inspect.isawaitable(value):
                _refuse_awaitable(key, value)
            kept = self._store_result(key, value, timeout, seconds)
            shared[3], shared[4] = value, kept
            shared[2] += 1  # after the result: a cut in between hands the waiters nothing
            if value is not None and shared[1] > 1:
                # waiters read a kept result from the cache (one evicted meanwhile: they call
                # again); an unkept one is copied first, so the caller cannot change theirs
                shared[3] = NOT_HANDED if kept else handed_copy(value)
        finally:
            next(flight, None)
        return value

    def _store_result(self, key: str, value: Any, timeout: Timeout, seconds: float) -> bool:
        """Store the result of a call that others wait for; whether they can read it back.

        ``seconds``: ``timeout`` normalized before the call. Below 0 (also a ``default_timeout``
        reassigned so, to stop caching) the write keeps nothing: the waiters are handed the
        result, instead of each missing in turn and calling again, one after another.
        """
        return (
            value is not None
            and self.set(key, value, timeout)
            and self._keeps_entries
            and seconds >= 0
        )

    def _single_flight(self, key: str) -> Iterator[tuple[list[Any], int]]:
        """Hold the per-key lock of this process for ``key`` from the first ``next`` until the
        second.

        The first ``next`` gives the flight, ``[lock, threads in it, calls ended, the last
        result, whether the cache kept it]``, and how many of its calls had ended when this
        thread joined: more by the time it holds the lock, and it waited for one of them.

        Re-entrant: a factory that uses its own key again in the same thread must not hang.
        Driven by hand, never by a ``with``: the caller takes both steps in its own try and
        finally, as C calls, so a signal handler raising between them cannot leave the lock
        held by a suspended generator, which only the garbage collector would close, in
        whichever thread it runs (an RLock cannot be released there).
        """
        # A signal handler may raise as any call here returns (a lock's exit included): the
        # count goes up inside the try, with no call between it and noting it in ``flight``,
        # and the finally calls nothing between taking it back and dropping an unused flight.
        flight: list[Any] | None = None
        try:
            with self._flights_locked:
                found = self._flights.get(key)
                if found is None:
                    found = self._flights[key] = [entering(threading.RLock()), 0, 0, None, False]
                found[1] += 1
                flight = found
                seen = found[2]
            with flight[0]:
                yield flight, seen
        finally:
            # A signal handler may also raise while this waits for the flights' lock (another
            # thread holds it): then it waits again, and raises that exception once counted out.
            cut: BaseException | None = None
            while flight is not None:
                try:
                    with self._flights_locked:
                        flight[1] -= 1
                        flights = self._flights  # a fork drops flights: then it is not there
                        if flight[1] == 0 and key in flights and flights[key] is flight:
                            del flights[key]
                        flight = None
                except BaseException as err:  # raised below, once counted out
                    cut = err
            if cut is not None:
                raise cut


#: What :func:`handed_copy` returns for a result it cannot copy.
NOT_HANDED: Any = object()


def handed_copy(value: Any) -> Any:
    """A deep copy of a result that one call hands to the others waiting for it, so that none
    gets another's object; :data:`NOT_HANDED` when it cannot be copied (they call themselves)."""
    if value is None or value is NOT_HANDED:
        return value
    try:
        return copy.deepcopy(value)
    except Exception:
        return NOT_HANDED


def _refuse_awaitable(key: str, value: Any) -> None:
    """Raise :class:`TypeError` for a factory result that is a coroutine or another awaitable."""
    if inspect.iscoroutine(value):
        value.close()  # never to be awaited: no "never awaited" warning on top of this error
    raise TypeError(
        f"get_or_set({key!r}) got a {type(value).__name__} from its factory, which cannot be "
        "cached: await it and set its result, or decorate the async function with memoize"
    )
