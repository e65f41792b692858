"""How ``MemcachedCache`` flags its entries, encodes integers as counters, and counts.

Stored entries carry memcached flags that say how the bytes are encoded (a counter, a serialized
value, a serialized value guarded against ``incr``), so nothing is guessed on the way back.
Integers are stored as memcached counters shifted by 2**62 (modulo 2**64), so ``inc``/``dec``
are one native, atomic ``incr`` that keeps the entry's expiry, with negative results and overflow
detection. memcached (1.6.18 at least: memcached/memcached#1105) may call a stored number of
2**63 or more non-numeric, as it scans past the value for a minus sign; only counters of
magnitude 2**62 or more are stored there, and when memcached refuses one it is counted by
compare-and-swap instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cacheplug.backends import _memcached_commands as commands
from cacheplug.backends import _memcached_wire as wire
from cacheplug.backends._memcached_commands import CREATE_ATTEMPTS, FAILED
from cacheplug.backends._memcached_keys import left_to_live
from cacheplug.core.base import checked_counter
from cacheplug.core.errors import SerializationError

if TYPE_CHECKING:
    from cacheplug.backends._memcached_servers import Server
    from cacheplug.backends.memcached import MemcachedCache

__all__ = [
    "BIASES",
    "COUNTER_BIAS",
    "FLAG_COUNTER",
    "FLAG_COUNTER_V1",
    "FLAG_GUARDED",
    "FLAG_SERIALIZED",
    "INT64_MAX",
    "INT64_MIN",
    "NUMERIC_START",
    "WRAP",
    "counter_value",
    "increment",
]

#: Flags of cacheplug entries; pymemcache's own serde uses 0-4, so foreign entries stay apart.
FLAG_SERIALIZED = 0x4300
FLAG_GUARDED = 0x4301  # serialized bytes behind b"!" so memcached never takes them for a number
FLAG_COUNTER = 0x4303  # decimal of (value + COUNTER_BIAS) % 2**64, what memcached incr works on
FLAG_COUNTER_V1 = 0x4302  # earlier versions' counters: decimal of value + 2**63 (still read)
#: Shift of stored counters: values in [-2**62, 2**62) are stored below 2**63.
COUNTER_BIAS = 2**62
BIASES = {FLAG_COUNTER: COUNTER_BIAS, FLAG_COUNTER_V1: 2**63}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
WRAP = 2**64
#: First bytes memcached may read as the start of a number: serialized data so begun is guarded.
NUMERIC_START = frozenset(b"0123456789+- \t\n\r\x0b\x0c")


class _Gone:
    """Marks an entry that went away during a compare-and-swap."""


_GONE = _Gone()


def counter_value(number: int, flags: int | None) -> int:
    """The value of a counter stored as ``number`` under ``flags`` (unknown: this encoding)."""
    bias = COUNTER_BIAS if flags is None else BIASES.get(flags, COUNTER_BIAS)
    return (number - bias - INT64_MIN) % WRAP + INT64_MIN


def _foreign(key: str, flags: int) -> TypeError:
    return TypeError(
        f"cannot increment {key!r}: it holds an entry cacheplug did not write "
        f"(memcached flags {flags}), read as a miss"
    )


def _stored_value(cache: MemcachedCache, key: str, flags: int, data: bytes) -> object:
    """The value of an entry read for ``inc``.

    :raises TypeError: the entry is foreign or unreadable, so there is nothing to count.
    """
    unreadable = f"cannot increment {key!r}: its stored value is unreadable"
    if flags in BIASES:
        if data.strip().isdigit():
            return counter_value(int(data), flags)
        raise TypeError(f"{unreadable} (a counter that holds no number)")
    if flags not in (FLAG_SERIALIZED, FLAG_GUARDED):
        raise _foreign(key, flags)
    try:
        return cache._decode(data if flags == FLAG_SERIALIZED else data[1:], key)
    except SerializationError as err:
        raise TypeError(f"{unreadable} ({err})") from err


def _overflow(key: str, delta: int) -> OverflowError:
    return OverflowError(
        f"cannot increment {key!r} by {delta}: memcached counters hold signed 64-bit integers"
    )


def increment(  # noqa: PLR0917 (internal, called in one place)
    cache: MemcachedCache,
    server: Server,
    name: str,
    key: str,
    delta: int,
    counted: tuple[int | None, int | None, bool] | None = None,
) -> int | None:
    """``cache.inc(key, delta)`` on the entry ``name`` of ``server``, ``delta`` a signed 64-bit
    int: the new value, or None on engine errors and when other clients keep creating and
    removing the counter (logged by ``cache``). ``counted``: the answer
    of an ``incr`` by ``delta`` already made (``wire.count``'s), to go on from.

    :raises TypeError: the stored value is not an integer, or not one cacheplug wrote (it
        stays).
    :raises OverflowError: the result or the stored integer is outside the signed 64-bit range
        (the value stays).
    """
    step = delta % WRAP  # a negative delta is an incr that wraps around 2**64
    for _ in range(CREATE_ATTEMPTS):
        if counted is None:
            counted = cache._run(server, "inc", wire.count, name, step)
            if counted is FAILED:
                return None
        flags, number, numeric = counted
        counted = None
        if not numeric:  # not a counter, or one memcached misreads (#1105)
            swapped = _swap_counter(cache, server, name, key, delta)
            if isinstance(swapped, _Gone):
                continue
            return swapped
        if number is None:  # missing: create it, unless another client just did
            created = cache._run(
                server, "inc", commands.add, name, cache._pack(delta, key), cache._timeout(None)
            )
            if created is FAILED:
                return None
            if created:
                return delta
            continue
        if flags is not None and flags not in BIASES:
            # a number stored by another client (its flags): incr counted it, take that back
            if not _add_raw(cache, server, name, -step % WRAP):
                return None
            raise _foreign(key, flags)
        result = counter_value(number - step, flags) + delta
        if not INT64_MIN <= result <= INT64_MAX:
            if not _add_raw(cache, server, name, -step % WRAP):  # undo the wrap-around
                return None
            raise _overflow(key, delta)
        return result
    cache._backend_error(
        "inc",
        RuntimeError(
            f"other clients created and removed the counter {key!r} again and again while "
            f"this call tried to create it; gave up after {CREATE_ATTEMPTS} attempts"
        ),
    )
    return None


def _swap_counter(
    cache: MemcachedCache, server: Server, name: str, key: str, delta: int
) -> int | _Gone | None:
    """``inc`` by compare-and-swap, for what ``incr`` refuses: the new value, None on
    errors, or ``_GONE`` when the entry went away.

    The entry keeps its expiry, to memcached's one-second resolution.
    """
    while True:
        entry = cache._run(server, "inc", wire.read_for_swap, name)
        if entry is FAILED:
            return None
        if entry is None:
            return _GONE
        flags, data, cas, ttl = entry
        value = checked_counter(key, _stored_value(cache, key, flags, data))
        result = value + delta
        if not INT64_MIN <= value <= INT64_MAX:
            raise OverflowError(
                f"cannot increment {key!r}: it holds an integer outside the signed 64-bit "
                f"range of counters"
            )
        if not INT64_MIN <= result <= INT64_MAX:
            raise _overflow(key, delta)
        swapped = cache._run(
            server, "inc", wire.swap, name, cache._pack(result, key), cas, left_to_live(ttl)
        )
        if swapped is FAILED:
            return None
        if swapped is None:
            return _GONE
        if swapped:
            return result


def _add_raw(cache: MemcachedCache, server: Server, name: str, step: int) -> bool:
    """Add ``step`` modulo 2**64 to the stored number of a counter, whatever its encoding;
    whether that was done or the counter is gone (False: an engine error, logged)."""
    counted = cache._run(server, "inc", wire.count, name, step)
    if counted is FAILED or counted[2]:
        return counted is not FAILED
    while True:  # misread by memcached (#1105): compare-and-swap
        entry = cache._run(server, "inc", wire.read_for_swap, name)
        if entry is FAILED:
            return False
        if entry is None or entry[0] not in BIASES or not entry[1].strip().isdigit():
            return True  # replaced meanwhile: nothing of this call is left
        flags, data, cas, ttl = entry
        item = (flags, b"%d" % ((int(data) + step) % WRAP))
        swapped = cache._run(server, "inc", wire.swap, name, item, cas, left_to_live(ttl))
        if swapped is not False:
            return swapped is not FAILED
