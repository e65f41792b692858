"""The zpickle serializer: pickle's reach, zlib's size, cacheplug's errors."""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from decimal import Decimal

import pytest
from cacheplug_example.zpickle import ZlibPickleSerializer

from cacheplug import SerializationError, SimpleCache, get_serializer


@pytest.mark.parametrize(
    "value", [None, (1, "two"), {3, 4}, OrderedDict(a=1), Decimal("1.5"), b"\x00" * 10]
)
def test_round_trips_python_objects(value: object) -> None:
    serializer = ZlibPickleSerializer()
    assert serializer.loads(serializer.dumps(value)) == value


def test_repetitive_values_shrink() -> None:
    value = ["the same line of text"] * 1000
    assert len(ZlibPickleSerializer().dumps(value)) * 10 < len(pickle.dumps(value))


def test_unencodable_value_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="zpickle cannot encode a value of type lock"):
        ZlibPickleSerializer().dumps(threading.Lock())


@pytest.mark.parametrize("data", [b"", b"not zlib", pickle.dumps(1)])
def test_foreign_bytes_are_a_serialization_error(data: bytes) -> None:
    with pytest.raises(SerializationError, match="not a readable zpickle payload"):
        ZlibPickleSerializer().loads(data)


def test_bad_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="level"):
        ZlibPickleSerializer(level=10)


def test_registered_under_its_name_for_every_backend() -> None:
    cache = SimpleCache(serializer="zpickle")
    assert isinstance(get_serializer("zpickle"), ZlibPickleSerializer)
    cache.set("key", {"nested": [1, 2]})
    assert cache.get("key") == {"nested": [1, 2]}
