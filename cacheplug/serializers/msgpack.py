"""The msgpack serializer: compact binary, bytes kept as bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack

from cacheplug.core.errors import SerializationError
from cacheplug.core.hookspecs import hookimpl
from cacheplug.core.serializer import Serializer

if TYPE_CHECKING:
    from cacheplug.core.hookspecs import RegisterFn

__all__ = ["MsgpackSerializer"]


class MsgpackSerializer(Serializer):
    """Serializes with msgpack.

    ``str`` and ``bytes`` stay distinct; tuples come back as lists; map keys may be any
    hashable msgpack value.
    """

    name = "msgpack"

    def dumps(self, value: Any) -> bytes:
        try:
            data: bytes = msgpack.packb(value, use_bin_type=True)
        except Exception as err:  # TypeError, OverflowError, ValueError (nesting)...
            raise SerializationError(
                f"msgpack cannot encode a value of type {type(value).__name__}: {err}"
            ) from err
        return data

    def loads(self, data: bytes) -> Any:
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as err:  # msgpack raises ExtraData, ValueError, FormatError...
            raise SerializationError(f"not a readable msgpack payload: {err}") from err


@hookimpl
def cacheplug_register_serializers(register: RegisterFn) -> None:
    register("msgpack", MsgpackSerializer)
