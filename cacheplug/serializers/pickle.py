"""The pickle serializer: any picklable Python object, the default."""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from cacheplug.core.errors import SerializationError
from cacheplug.core.hookspecs import hookimpl
from cacheplug.core.serializer import Serializer, error_text

if TYPE_CHECKING:
    from cacheplug.core.hookspecs import RegisterFn

__all__ = ["PickleSerializer"]


class PickleSerializer(Serializer):
    """Serializes with :mod:`pickle` at the highest protocol.

    Only read payloads you wrote yourself: unpickling foreign bytes can run code. Give the cache
    a ``secret`` when the store is shared (see docs/security.md).
    """

    name = "pickle"

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def dumps(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, self.protocol)
        except Exception as err:  # pickle raises TypeError, AttributeError, PicklingError...
            raise SerializationError(
                f"pickle cannot encode a value of type {type(value).__name__}: {error_text(err)}"
            ) from err

    def loads(self, data: bytes) -> Any:
        try:
            return pickle.loads(data)
        except Exception as err:
            raise SerializationError(f"not a readable pickle payload: {error_text(err)}") from err


@hookimpl
def cacheplug_register_serializers(register: RegisterFn) -> None:
    register("pickle", PickleSerializer)
