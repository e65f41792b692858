"""The JSON serializer on orjson: str-keyed dicts, lists, str, numbers, bools and None."""

from __future__ import annotations

import dataclasses
import math
from enum import Enum
from typing import TYPE_CHECKING, Any

import orjson

from cacheplug.core.errors import SerializationError
from cacheplug.core.hookspecs import hookimpl
from cacheplug.core.serializer import Serializer, error_text

if TYPE_CHECKING:
    from cacheplug.core.hookspecs import RegisterFn

__all__ = ["JSONSerializer"]


class JSONSerializer(Serializer):
    """Serializes to JSON with orjson.

    Tuples come back as lists; dataclasses, datetimes and UUIDs are written as orjson writes
    them and read back as plain JSON values. NaN and infinities, which JSON cannot write
    (orjson would store ``null``), raise :class:`SerializationError`.
    """

    name = "json"

    def dumps(self, value: Any) -> bytes:
        try:
            data = orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError) as err:
            raise SerializationError(
                f"json cannot encode a value of type {type(value).__name__}: {error_text(err)}"
            ) from err
        # orjson writes a non-finite float as null: only a payload with a null can hold one
        if b"null" in data and _holds_non_finite(value):
            raise SerializationError(
                "json cannot encode NaN or infinity (JSON has no such numbers and they would "
                "come back as None); use the pickle or msgpack serializer for such values"
            )
        return data

    def loads(self, data: bytes) -> Any:
        try:
            return orjson.loads(data)
        except (TypeError, orjson.JSONDecodeError) as err:
            raise SerializationError(f"not a readable JSON payload: {error_text(err)}") from err


# types orjson writes as they are, never holding a float
_LEAVES = frozenset({type(None), str, int, bool})


def _holds_non_finite(value: Any) -> bool:
    """Whether a float that is NaN or infinite sits anywhere in what orjson writes of ``value``.

    A loop over a stack that skips plain items (``None``, finite floats...) in comprehensions,
    not with a Python call per item (a million ``None`` took seconds), and needs no recursion.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is list or kind is tuple or kind is dict:
            # x - x is 0.0 for a finite float only (nan for NaN and the infinities)
            pending += [
                each
                for each in (item.values() if kind is dict else item)
                if type(each) not in _LEAVES and not (type(each) is float and each - each == 0)
            ]
        elif isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
        elif isinstance(item, Enum):
            pending.append(item.value)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            pending.extend(getattr(item, f.name) for f in dataclasses.fields(item))
    return False


@hookimpl
def cacheplug_register_serializers(register: RegisterFn) -> None:
    register("json", JSONSerializer)
