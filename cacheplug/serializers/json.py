"""The JSON serializer on orjson: str-keyed dicts, lists, str, numbers, bools and None."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from cacheplug.core.errors import SerializationError
from cacheplug.core.hookspecs import hookimpl
from cacheplug.core.serializer import Serializer

if TYPE_CHECKING:
    from cacheplug.core.hookspecs import RegisterFn

__all__ = ["JSONSerializer"]


class JSONSerializer(Serializer):
    """Serializes to JSON with orjson.

    Tuples come back as lists; dataclasses, datetimes and UUIDs are written as orjson writes
    them and read back as plain JSON values.
    """

    name = "json"

    def dumps(self, value: Any) -> bytes:
        try:
            return orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError) as err:
            raise SerializationError(
                f"json cannot encode a value of type {type(value).__name__}: {err}"
            ) from err

    def loads(self, data: bytes) -> Any:
        try:
            return orjson.loads(data)
        except (TypeError, orjson.JSONDecodeError) as err:
            raise SerializationError(f"not a readable JSON payload: {err}") from err


@hookimpl
def cacheplug_register_serializers(register: RegisterFn) -> None:
    register("json", JSONSerializer)
