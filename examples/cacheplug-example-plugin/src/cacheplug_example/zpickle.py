"""``zpickle``: pickle, compressed with zlib; for large, repetitive values."""

from __future__ import annotations

import pickle
import zlib
from typing import Any

from cacheplug import SerializationError, Serializer

__all__ = ["ZlibPickleSerializer"]


class ZlibPickleSerializer(Serializer):
    """Pickles a value and compresses the bytes with zlib.

    :param level: zlib compression level, 0 (none) to 9 (smallest, slowest).
    """

    name = "zpickle"

    def __init__(self, level: int = 6) -> None:
        if type(level) is not int or not 0 <= level <= 9:
            raise ValueError(f"level must be an int from 0 to 9, got {level!r}")
        self.level = level

    def dumps(self, value: Any) -> bytes:
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:  # PicklingError, TypeError, AttributeError, RecursionError...
            raise SerializationError(
                f"zpickle cannot encode a value of type {type(value).__name__}: {err}"
            ) from err
        return zlib.compress(data, self.level)

    def loads(self, data: bytes) -> Any:
        try:
            return pickle.loads(zlib.decompress(data))
        except Exception as err:  # zlib.error, UnpicklingError, EOFError...
            raise SerializationError(f"not a readable zpickle payload: {err}") from err

    def __repr__(self) -> str:
        return f"ZlibPickleSerializer(level={self.level})"
