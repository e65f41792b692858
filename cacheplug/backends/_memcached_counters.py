"""How ``MemcachedCache`` flags its entries, encodes integers as counters, and counts.

Stored entries carry memcached flags that say how the bytes are encoded (a counter, a serialized
value, a serialized value guarded against ``incr``), so nothing is guessed on the way back.
Integers in ``[-2**62, 2**62)`` are stored as memcached counters shifted by 2**62, so below
2**63, and ``inc``/``dec`` by at most ``NATIVE_DELTA`` are one native, atomic ``incr`` that keeps
the entry's expiry, negative results included. Such an ``incr`` stays far inside the signed
64-bit range, so it is never taken back and nobody sees a wrapped-around value: larger integers
are serialized, where memcached's ``incr`` refuses them, and counted by compare-and-swap, as are
larger deltas; a counter an ``incr`` carries out of ``[-2**62, 2**62)`` is rewritten so at once.
Only an ``incr`` that met another client's number, or a counter an earlier release stored, is
taken back: by compare-and-swap, and only while the entry holds just what it left, so no write
of another client is undone. memcached (1.6.18 at least: memcached/memcached#1105) may call a
stored number of 2**63 or more (an earlier release's counter, another client's number)
non-numeric, as it scans past the value for a minus sign; ``inc`` then goes by compare-and-swap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cacheplug.backends import _memcached_commands as commands
from cacheplug.backends import _memcached_counter_wire as counter_wire
from cacheplug.backends._memcached_commands import CREATE_ATTEMPTS, FAILED
from cacheplug.backends._memcached_keys import left_to_live
from cacheplug.core.arguments import checked_counter
from cacheplug.core.errors import SerializationError

if TYPE_CHECKING:
    from collections.abc import Callable

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
    "NATIVE_DELTA",
    "NUMERIC_START",
    "WRAP",
    "counter_value",
    "incr_step",
    "increment",
]

#: Flags of cacheplug entries; pymemcache's own serde uses 0-4, so foreign entries stay apart.
FLAG_SERIALIZED = 0x4300
FLAG_GUARDED = 0x4301  # serialized bytes behind b"!" so memcached never takes them for a number
FLAG_COUNTER = 0x4303  # decimal of (value + COUNTER_BIAS) % 2**64, what memcached incr works on
FLAG_COUNTER_V1 = 0x4302  # earlier versions' counters: decimal of value + 2**63 (still read)
#: Shift of stored counters, which hold the values in [-2**62, 2**62): all below 2**63.
COUNTER_BIAS = 2**62
#: Largest delta, in size, counted by memcached's ``incr``; larger ones by compare-and-swap.
#: A counter leaves [-2**62, 2**62) by one incr, which rewrites it: some 2**30 more incrs, all
#: before that rewrite, would be needed to carry it to the end of the 64-bit range.
NATIVE_DELTA = 2**32
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
    removing the counter (logged by ``cache``). ``counted``: the answer of an ``incr`` by
    ``delta`` already made (``counter_wire.count``'s), to go on from; ignored for a delta
    larger than ``NATIVE_DELTA`` (counted by compare-and-swap, whose ``incr`` by 0 only named
    the entry).

    :raises TypeError: the stored value is not an integer, or not one cacheplug wrote (it
        stays).
    :raises OverflowError: the result or the stored integer is outside the signed 64-bit range
        (the value stays).
    """
    step = incr_step(delta)
    for _ in range(CREATE_ATTEMPTS):
        if step is None:
            counted = _NOT_COUNTED
        elif counted is None:
            counted = cache._run(server, "inc", counter_wire.count, name, step)
            if counted is FAILED:
                return None
        flags, number, numeric = counted
        counted = None
        if not numeric:  # not a counter, one memcached misreads (#1105), or a large delta
            swapped = _swap_counter(cache, server, name, key, delta)
            if not isinstance(swapped, _Gone):
                return swapped
        elif number is not None:
            assert step is not None  # a number comes only from an incr by step
            if flags == FLAG_COUNTER:
                result = counter_value(number - step, FLAG_COUNTER) + delta
                if -COUNTER_BIAS <= result < COUNTER_BIAS:
                    return result
            return _counted_beyond(cache, server, name, key, delta, (flags, number))
        # missing: create it, unless another client just did
        created = cache._run(
            server, "inc", commands.add, name, cache._pack(delta, key), cache._timeout(None)
        )
        if created is FAILED:
            return None
        if created:
            return delta
    cache._backend_error(
        "inc",
        RuntimeError(
            f"other clients created and removed the counter {key!r} again and again while "
            f"this call tried to create it; gave up after {CREATE_ATTEMPTS} attempts"
        ),
    )
    return None


def incr_step(delta: int) -> int | None:
    """What memcached's ``incr`` adds for ``delta`` (a negative delta wraps around 2**64);
    None for a delta too large for it, counted by compare-and-swap."""
    return delta % WRAP if -NATIVE_DELTA <= delta <= NATIVE_DELTA else None


#: ``counter_wire.count``'s answer for a delta that memcached's ``incr`` is not asked to count.
_NOT_COUNTED: tuple[int | None, int | None, bool] = (None, None, False)


def _counted_beyond(  # noqa: PLR0917 (increment's arguments, passed on)
    cache: MemcachedCache,
    server: Server,
    name: str,
    key: str,
    delta: int,
    counted: tuple[int | None, int],
) -> int | None:
    """``increment`` after an ``incr`` by ``delta`` left the number ``counted`` under flags
    ``counted[0]`` (None: unknown), on anything but a counter of this encoding left in
    ``[-2**62, 2**62)``: the new value, or None on engine errors.

    :raises TypeError: the number is another client's (taken back).
    :raises OverflowError: the result is outside the signed 64-bit range (taken back).
    """
    flags, number = counted
    if flags in (FLAG_SERIALIZED, FLAG_GUARDED):
        # incr never counts these: the entry was replaced after its flags were read
        flags = None
    step = delta % WRAP
    if flags is not None and flags not in BIASES:
        # a number stored by another client (its flags): incr counted it, take that back
        if not _take_back(cache, server, name, (flags, number), step):
            return None
        raise _foreign(key, flags)
    result = counter_value(number - step, flags) + delta
    if not INT64_MIN <= result <= INT64_MAX:  # a counter only an earlier release let get here
        if not _take_back(cache, server, name, (flags, number), step):
            return None
        raise _overflow(key, delta)
    _rewrite(cache, server, name, key)
    return result


def _take_back(
    cache: MemcachedCache, server: Server, name: str, counted: tuple[int | None, int], step: int
) -> bool:
    """Take back the ``incr`` by ``step`` that left the number ``counted[1]`` under flags
    ``counted[0]`` (None: unknown), if the entry still holds just that: whether done or
    overtaken (another client wrote the entry meanwhile, and that write stands); False on an
    engine error (logged)."""
    flags, number = counted

    def restored(stored_flags: int, data: bytes) -> tuple[int, bytes] | None:
        if (flags is not None and stored_flags != flags) or data.strip() != b"%d" % number:
            return None
        return stored_flags, b"%d" % ((number - step) % WRAP)

    return _swap(cache, server, name, restored) is not FAILED


def _rewrite(cache: MemcachedCache, server: Server, name: str, key: str) -> None:
    """Store the counter ``name`` as ``cache`` would write its value now, if an ``incr`` may
    not count it as it is: out of ``[-2**62, 2**62)``, or of an earlier release's encoding.

    An engine error leaves it as it is (logged), as does a serializer that refuses the integer.
    """

    def rewritten(flags: int, data: bytes) -> tuple[int, bytes] | None:
        if flags not in BIASES or not data.strip().isdigit():
            return None  # rewritten or replaced meanwhile
        value = counter_value(int(data), flags)
        if flags == FLAG_COUNTER and -COUNTER_BIAS <= value < COUNTER_BIAS:
            return None
        return cache._pack(value, key)

    try:
        _swap(cache, server, name, rewritten)
    except SerializationError as err:
        cache._log("inc", "counter %r left to memcached's incr: %s", key, err)


def _swap_counter(
    cache: MemcachedCache, server: Server, name: str, key: str, delta: int
) -> int | _Gone | None:
    """``inc`` by compare-and-swap, for what ``incr`` refuses or is not asked to count: the
    new value, None on errors, or ``_GONE`` when the entry went away."""
    results: list[int] = []

    def counted(flags: int, data: bytes) -> tuple[int, bytes]:
        value = checked_counter(key, _stored_value(cache, key, flags, data))
        result = value + delta
        if not INT64_MIN <= value <= INT64_MAX:
            raise OverflowError(
                f"cannot increment {key!r}: it holds an integer outside the signed 64-bit "
                f"range of counters"
            )
        if not INT64_MIN <= result <= INT64_MAX:
            raise _overflow(key, delta)
        results.append(result)
        return cache._pack(result, key)

    swapped = _swap(cache, server, name, counted)
    if swapped is FAILED:
        return None
    if swapped is None:
        return _GONE
    return results[-1]


def _cas_disabled(server: Server) -> RuntimeError:
    # memcached -C answers every compare-and-swap EX (1.6.18; older code stored it unchecked):
    # retrying would never end, or lose other clients' updates
    return RuntimeError(
        f"memcached {server.name} runs with CAS disabled (-C), so this increment, which must "
        f"compare-and-swap (integers beyond 2**62 in size, deltas beyond 2**32, numbers "
        f"other clients stored), cannot be atomic there; start memcached without -C"
    )


def _swap(
    cache: MemcachedCache,
    server: Server,
    name: str,
    change: Callable[[int, bytes], tuple[int, bytes] | None],
) -> bool | None:
    """Replace the entry ``name`` by ``change(flags, data)`` of it if nobody writes it between
    the read and the write, read again otherwise; ``change`` answers None to leave it. The entry
    keeps its expiry, to memcached's one-second resolution.

    :returns: True replaced, False left, None gone, ``FAILED`` on an engine error or on a
        server with CAS disabled, where no write can be checked (logged).
    """
    while True:
        entry = cache._run(server, "inc", counter_wire.read_for_swap, name)
        if entry is FAILED or entry is None:
            return entry
        flags, data, cas, ttl = entry
        item = change(flags, data)
        if item is None:
            return False
        if not cas:  # CAS ids start at 1: this server never issues one
            cache._backend_error("inc", _cas_disabled(server))
            return FAILED  # type: ignore[no-any-return]
        swapped = cache._run(server, "inc", counter_wire.swap, name, item, cas, left_to_live(ttl))
        if swapped is not False:
            return swapped  # type: ignore[no-any-return]
