"""How ``MemcachedCache`` stores values as flagged memcached items and reads them back.

An item's flags say how its bytes are encoded: a counter (an integer memcached's ``incr`` may
count, ``_memcached_counters``), a serialized value, or one guarded with ``b"!"`` so memcached
never takes it for a number. Reads are counted as hits and misses.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cacheplug.backends._memcached_counters import (
    BIASES,
    COUNTER_BIAS,
    FLAG_COUNTER,
    FLAG_GUARDED,
    FLAG_SERIALIZED,
    NUMERIC_START,
    WRAP,
    counter_value,
)
from cacheplug.serializers.pickle import PickleSerializer

if TYPE_CHECKING:
    from cacheplug.core.serializer import SerializerLike
    from cacheplug.core.signing import CacheSigner

__all__ = ["FlaggedItems"]


class FlaggedItems:
    """The item encoding of :class:`~cacheplug.backends.memcached.MemcachedCache`: it reads the
    cache's ``serializer`` and signer, and counts through its stats."""

    if TYPE_CHECKING:
        serializer: SerializerLike
        _signer: CacheSigner | None
        _hits: int
        _misses: int

        def _encode(self, value: Any, key: str, prefix: str | None = None) -> bytes: ...

        def _decode_or_miss(
            self, key: str, payload: bytes | memoryview, prefix: str | None = None
        ) -> Any: ...

        def _count_unreadable(self) -> None: ...

        def _log(self, kind: str, message: str, *args: object) -> None: ...

        def _counted_reads(self, values: list[Any], unread: int = 0) -> list[Any]: ...

    def _pack(self, value: Any, key: str) -> tuple[int, bytes]:
        """``(flags, data)`` of ``key``'s ``value`` as stored: an integer that memcached's
        ``incr`` may count is a counter, anything else serialized."""
        if type(value) is int and -COUNTER_BIAS <= value < COUNTER_BIAS:
            return FLAG_COUNTER, b"%d" % ((value + COUNTER_BIAS) % WRAP)
        data = self._encode(value, key)
        if data and data[0] in NUMERIC_START:
            return FLAG_GUARDED, b"!" + data
        return FLAG_SERIALIZED, data

    def _unpack(self, key: str, item: tuple[int, bytes]) -> Any:
        """The value of a fetched item, counted as a hit; unreadable or a stored ``None``,
        which reads like a miss: ``None``, a miss."""
        value = self._read_item(key, item)
        if value is None:
            self._misses += 1
        else:
            self._hits += 1
        return value

    def _read_item(self, key: str, item: tuple[int, bytes]) -> Any:
        flags, data = item
        if flags == FLAG_SERIALIZED:
            return self._decode_or_miss(key, data)
        if flags in BIASES:
            try:
                return counter_value(int(data), flags)
            except ValueError:
                pass
        elif flags == FLAG_GUARDED:
            return self._decode_or_miss(key, data[1:])
        self._count_unreadable()
        self._log(
            "decode", "entry %r is not a cacheplug entry (flags %d), read as a miss", key, flags
        )
        return None

    def _values(
        self, keys: Sequence[str], items: list[tuple[int, bytes] | None], unread: int = 0
    ) -> list[Any]:
        """The values of ``keys`` from their raw ``items`` (None: missing), counted.

        ``unread`` of the missing items were on a server that failed: errors, not misses.
        """
        values: list[Any] | None = None
        if self._signer is None and type(self.serializer) is PickleSerializer:
            loads = pickle.loads
            try:  # the default, without a call of _read_item per value
                values = [
                    None if item is None or item[0] != FLAG_SERIALIZED else loads(item[1])
                    for item in items
                ]
            except Exception:
                pass  # an unreadable entry: _read_item logs and counts it
            else:
                values = [
                    self._read_item(key, item)
                    if item is not None and item[0] != FLAG_SERIALIZED
                    else value
                    for key, item, value in zip(keys, items, values, strict=True)
                ]
        if values is None:
            values = [
                None if item is None else self._read_item(key, item)
                for key, item in zip(keys, items, strict=True)
            ]
        return self._counted_reads(values, unread)
