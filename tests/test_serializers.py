"""The three built-in serializers: exact round trips, typed failures, and the registry."""

from __future__ import annotations

import ast
import contextlib
import math
import pickle
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cacheplug import (
    ConfigurationError,
    FileSystemCache,
    JSONSerializer,
    MsgpackSerializer,
    PickleSerializer,
    SerializationError,
    SimpleCache,
    get_serializer,
)

SERIALIZERS = [PickleSerializer(), JSONSerializer(), MsgpackSerializer()]
ids = [s.name for s in SERIALIZERS]

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite_floats | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
msgpack_scalars = json_scalars | st.binary()
# tuples as map keys: msgpack writes them as arrays, which must come back hashable
tuple_keys = st.recursive(
    st.tuples(st.integers(-100, 100) | st.text(max_size=4)),
    lambda inner: st.tuples(inner, st.binary(max_size=4) | inner),
    max_leaves=4,
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.text(max_size=8) | st.integers(-100, 100) | tuple_keys, inner, max_size=5
        )
    ),
    max_leaves=20,
)
pickle_values = st.recursive(
    msgpack_scalars | st.floats(allow_nan=False) | st.complex_numbers(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.frozensets(st.integers() | st.text(max_size=4), max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=5)
    ),
    max_leaves=20,
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(pickle_values)
def test_pickle_round_trips_exactly(value: Any) -> None:
    serializer = PickleSerializer()
    assert serializer.loads(serializer.dumps(value)) == value


@FAST
@given(json_values)
def test_json_round_trips_its_domain(value: Any) -> None:
    serializer = JSONSerializer()
    assert serializer.loads(serializer.dumps(value)) == value


@FAST
@given(msgpack_values)
def test_msgpack_round_trips_its_domain(value: Any) -> None:
    serializer = MsgpackSerializer()
    assert serializer.loads(serializer.dumps(value)) == value


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=ids)
@settings(max_examples=2000, deadline=None)
@given(data=st.binary(max_size=64))
def test_loads_of_random_bytes_is_a_value_or_serialization_error(
    serializer: Any, data: bytes
) -> None:
    with contextlib.suppress(SerializationError):
        serializer.loads(data)


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=ids)
@pytest.mark.parametrize(
    "value",
    [threading.Lock(), (i for i in range(1)), lambda: 1],
    ids=["lock", "generator", "lambda"],
)
def test_unencodable_value_raises_serialization_error(serializer: Any, value: Any) -> None:
    with pytest.raises(SerializationError, match=serializer.name) as info:
        serializer.dumps(value)
    assert isinstance(info.value, pickle.PickleError)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    ("serializer", "value"),
    [(JSONSerializer(), b"bytes"), (JSONSerializer(), 2**70), (MsgpackSerializer(), 2**70)],
    ids=["json-bytes", "json-bigint", "msgpack-bigint"],
)
def test_values_outside_a_serializers_domain_are_refused(serializer: Any, value: Any) -> None:
    with pytest.raises(SerializationError):
        serializer.dumps(value)


non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def json_values_holding_a_non_finite_float(draw: st.DrawFn) -> Any:
    """A JSON value with NaN or an infinity put at a random place inside it."""
    value, bad = draw(json_values), draw(non_finite)
    containers = [value] if isinstance(value, (list, dict)) else []
    for container in containers:
        children = container.values() if isinstance(container, dict) else container
        containers.extend(c for c in children if isinstance(c, (list, dict)))
    if not containers:
        return draw(st.sampled_from([bad, [value, bad], {"k": bad, "v": value}]))
    target = draw(st.sampled_from(containers))
    if isinstance(target, dict):
        target[draw(st.text(max_size=8))] = bad
    else:
        target.insert(draw(st.integers(0, len(target))), bad)
    return value


@FAST
@given(json_values_holding_a_non_finite_float())
def test_json_refuses_nan_and_infinity_anywhere(value: Any) -> None:
    # orjson alone writes them as null: the value would come back changed, as None
    with pytest.raises(SerializationError, match="NaN or infinity"):
        JSONSerializer().dumps(value)


def test_json_refusal_keeps_what_was_stored() -> None:
    cache = SimpleCache(serializer="json")
    cache.set("k", {"score": 1.5, "note": None})
    with pytest.raises(SerializationError):
        cache.set("k", {"score": math.nan})
    assert cache.get("k") == {"score": 1.5, "note": None}


def test_msgpack_keeps_bytes_and_str_apart() -> None:
    serializer = MsgpackSerializer()
    assert serializer.loads(serializer.dumps([b"raw", "text"])) == [b"raw", "text"]


def test_msgpack_reads_back_tuple_map_keys() -> None:
    # A tuple key came back as a list, which no dict takes: every get was a logged miss.
    value = {(1, ("a", b"b")): [1, (2,)], "rows": {(3,): None}}
    cache = SimpleCache(serializer="msgpack")
    assert cache.set("k", value) is True
    assert cache.get("k") == {(1, ("a", b"b")): [1, [2]], "rows": {(3,): None}}
    assert cache.stats()["errors"] == 0


def test_json_writes_plain_json() -> None:
    assert JSONSerializer().dumps({"a": [1, 2.5, None, True]}) == b'{"a":[1,2.5,null,true]}'


def test_json_returns_what_orjson_writes_on_its_own_as_plain_json() -> None:
    import dataclasses
    import datetime
    import enum
    import uuid
    from collections import OrderedDict

    @dataclasses.dataclass
    class Point:
        x: int

    class Color(enum.Enum):
        RED = "red"

    ident = uuid.UUID(int=7)
    value = {
        "when": datetime.date(2024, 5, 1),
        "id": ident,
        "point": Point(1),
        "color": Color.RED,
        "ordered": OrderedDict(a=1),
    }
    serializer = JSONSerializer()
    assert serializer.loads(serializer.dumps(value)) == {  # as docs/contract.md says
        "when": "2024-05-01",
        "id": str(ident),
        "point": {"x": 1},
        "color": "red",
        "ordered": {"a": 1},
    }


def test_pickle_handles_nan_and_tuples() -> None:
    serializer = PickleSerializer()
    got = serializer.loads(serializer.dumps((math.nan, 1)))
    assert type(got) is tuple
    assert math.isnan(got[0])


@pytest.mark.parametrize("name", ["pickle", "json", "msgpack"])
def test_get_serializer_by_name(name: str) -> None:
    serializer = get_serializer(name)
    assert serializer.name == name  # type: ignore[attr-defined]
    assert get_serializer(name) is serializer


def test_unknown_serializer_lists_known_ones_and_suggests() -> None:
    with pytest.raises(ConfigurationError) as info:
        get_serializer("msgpak")
    message = str(info.value)
    assert "known serializers: json, msgpack, pickle" in message
    assert "did you mean 'msgpack'" in message


def test_backend_accepts_serializer_objects_and_rejects_others() -> None:
    class Upper:
        def dumps(self, value: str) -> bytes:
            return value.upper().encode()

        def loads(self, data: bytes) -> str:
            return data.decode()

    cache = SimpleCache(serializer=Upper())
    cache.set("k", "shout")
    assert cache.get("k") == "SHOUT"
    with pytest.raises(ConfigurationError, match="dumps"):
        SimpleCache(serializer=42)  # type: ignore[arg-type]


def test_cachelib_serializer_objects_work() -> None:
    from cachelib.serializers import SimpleSerializer

    cache = SimpleCache()
    cache.serializer = SimpleSerializer()
    cache.set("k", {"from": "cachelib"})
    assert cache.get("k") == {"from": "cachelib"}


def test_foreign_serializer_errors_become_serialization_errors() -> None:
    class Picky:
        def dumps(self, value: Any) -> bytes:
            raise ValueError("no thanks")

        def loads(self, data: bytes) -> Any:
            return None

    cache = SimpleCache(serializer=Picky())
    with pytest.raises(SerializationError, match="no thanks"):
        cache.set("k", {"v": 1})


class _Repr:
    """A foreign serializer writing ``repr`` text, returned as ``encode`` makes it."""

    def __init__(self, encode: Any) -> None:
        self.encode = encode

    def dumps(self, value: Any) -> Any:
        return self.encode(repr(value).encode())

    def loads(self, data: bytes) -> Any:
        assert type(data) is bytes
        return ast.literal_eval(data.decode())


def _caches(serializer: Any, tmp_path: Any) -> list[Any]:
    return [
        SimpleCache(serializer=serializer),
        SimpleCache(serializer=serializer, secret="s3cret"),
        FileSystemCache(str(tmp_path), serializer=serializer),
    ]


@pytest.mark.parametrize("encode", [bytearray, memoryview], ids=["bytearray", "memoryview"])
def test_bytes_like_serializer_output_is_stored_as_bytes(encode: Any, tmp_path: Any) -> None:
    for cache in _caches(_Repr(encode), tmp_path):
        cache.set("k", [1, (2, 3)])
        assert cache.get("k") == [1, (2, 3)], cache


def test_serializer_returning_text_is_refused_with_the_fix(tmp_path: Any) -> None:
    for cache in _caches(PickleSerializer(), tmp_path):
        cache.set("k", [0])
        cache.serializer = _Repr(bytes.decode)
        with pytest.raises(SerializationError, match=r"dumps returned str, not bytes.*encode"):
            cache.set("k", [1])
        cache.serializer = PickleSerializer()
        assert cache.get("k") == [0], cache
