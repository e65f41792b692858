"""The msgpack serializer: compact binary, bytes kept as bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack

from cacheplug.core.errors import SerializationError
from cacheplug.core.hookspecs import hookimpl
from cacheplug.core.serializer import Serializer, error_text

if TYPE_CHECKING:
    from cacheplug.core.hookspecs import RegisterFn

__all__ = ["MsgpackSerializer"]


class MsgpackSerializer(Serializer):
    """Serializes with msgpack.

    ``str`` and ``bytes`` stay distinct; tuples come back as lists, except in map keys, where
    they stay tuples (a list cannot be a key); map keys may be any hashable msgpack value.
    """

    name = "msgpack"

    def dumps(self, value: Any) -> bytes:
        try:
            data: bytes = msgpack.packb(value, use_bin_type=True)
        except Exception as err:  # TypeError, OverflowError, ValueError (nesting)...
            raise SerializationError(
                f"msgpack cannot encode a value of type {type(value).__name__}: {error_text(err)}"
            ) from err
        return data

    def loads(self, data: bytes) -> Any:
        try:
            try:
                return msgpack.unpackb(data, raw=False, strict_map_key=False)
            except TypeError:  # unhashable: a tuple key, written as an array, read as a list
                return msgpack.unpackb(
                    data, raw=False, strict_map_key=False, object_pairs_hook=_dict_of_pairs
                )
        except Exception as err:  # msgpack raises ExtraData, ValueError, FormatError...
            raise SerializationError(f"not a readable msgpack payload: {error_text(err)}") from err


def _dict_of_pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A map whose array keys are tuples again, as they were when written."""
    return {_as_key(key): value for key, value in pairs}


def _as_key(key: Any) -> Any:
    return tuple(map(_as_key, key)) if isinstance(key, list) else key


@hookimpl
def cacheplug_register_serializers(register: RegisterFn) -> None:
    register("msgpack", MsgpackSerializer)
