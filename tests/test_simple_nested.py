"""SimpleCache's nested values: a pickled dict or list of flat containers, once read a few
times, is kept for copying two levels deep, and every later read must be indistinguishable from
unpickling it again (equal, same types, same sharing, no container shared with the cache)."""

from __future__ import annotations

import pickle
import sys
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacheplug import SimpleCache
from cacheplug.backends import simple as simple_backend

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.binary(max_size=5)
)
FLAT = (
    st.lists(SCALARS, max_size=4)
    | st.dictionaries(st.text(max_size=3) | st.integers(), SCALARS, max_size=4)
    | st.sets(st.integers() | st.text(max_size=3), max_size=4)
    | st.tuples(SCALARS, SCALARS)
    | st.frozensets(st.integers(), max_size=3)
)
# also deeper values and other types, which stay pickled
VALUES = st.recursive(
    SCALARS | FLAT | st.builds(bytearray, st.binary(max_size=3)),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=3), inner, max_size=4)
        | st.tuples(inner, inner)
    ),
    max_leaves=12,
)


def shape(value: Any) -> Any:
    """Types, values and which containers are shared, as an unpickled copy must have them."""
    seen: dict[int, int] = {}

    def walk(v: Any) -> Any:
        if isinstance(v, (dict, list, set, bytearray)):
            if id(v) in seen:
                return ("shared", seen[id(v)])
            seen[id(v)] = len(seen)
        if isinstance(v, dict):
            return dict, [(walk(k), walk(x)) for k, x in v.items()]
        if isinstance(v, (list, tuple)):
            return type(v), [walk(x) for x in v]
        if isinstance(v, (set, frozenset)):
            return type(v), sorted(map(repr, v))
        return type(v), repr(v)

    return walk(value)


def mutable_ids(value: Any) -> set[int]:
    """Ids of every mutable container inside ``value``, itself included."""
    found: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, (dict, list, set, bytearray)):
            if id(v) in found:
                continue
            found.add(id(v))
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return found


#: reads of an entry: the first ones unpickle it (those counting down, and the one that keeps
#: it unpickled if it can), the last three copy what it keeps
READS = simple_backend._SERIALIZED - simple_backend._DUE + 4


def read_repeatedly(cache: SimpleCache, value: Any) -> list[Any]:
    cache.set("k", value)
    return [cache.get("k") for _ in range(READS)]


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_every_read_is_a_fresh_unpickled_copy(value: Any) -> None:
    expected = shape(pickle.loads(pickle.dumps(value)))
    cache = SimpleCache()
    reads = read_repeatedly(cache, value)
    for got in reads:
        assert shape(got) == expected
    # no read shares a mutable container with another read, or with what was set
    owned = [mutable_ids(got) for got in reads]
    assert sum(map(len, owned)) == len(set().union(*owned))
    assert not mutable_ids(value) & set().union(*owned)


NESTED_ROWS = [
    {"id": 1, "tags": ["a", "b"], "profile": {"age": 36}},
    [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    {"ids": {1, 2}, "pair": (1, "x"), "frozen": frozenset({3}), 7: [None, b"\x00"]},
    [[1, 2], {"k": 1.5}, {True}, (None,)],
]


@pytest.mark.parametrize("value", NESTED_ROWS, ids=repr)
def test_mutating_a_read_changes_no_later_read(value: Any) -> None:
    cache = SimpleCache()
    *_, first, second = read_repeatedly(cache, value)
    inners = first.values() if isinstance(first, dict) else first
    for inner in inners:
        if isinstance(inner, (dict, list, set)):
            inner.clear()
    if isinstance(first, dict):
        first["added"] = 1
    else:
        first.append(1)
    assert cache.get("k") == value == second


def test_a_container_held_twice_is_still_one_container_on_every_read() -> None:
    cache = SimpleCache()
    tags = ["a"]
    for value in ({"x": tags, "y": tags}, [tags, tags], [{"a": 1}] * 2):
        for got in read_repeatedly(cache, value):
            first, second = got.values() if isinstance(got, dict) else got
            assert first is second


def test_inc_on_a_nested_value_read_before_names_its_type() -> None:
    cache = SimpleCache()
    read_repeatedly(cache, {"rows": [1]})
    with pytest.raises(TypeError, match="holds a dict"):
        cache.inc("k")
    assert cache.get("k") == {"rows": [1]}


def test_a_pickled_copy_of_the_cache_reads_nested_values_the_same() -> None:
    cache = SimpleCache()
    read_repeatedly(cache, {"rows": [{"a": 1}], "set": {1}})
    copied = pickle.loads(pickle.dumps(cache))
    assert copied.get("k") == {"rows": [{"a": 1}], "set": {1}}
    first, second = copied.get("k"), copied.get("k")
    assert first == second and first["set"] is not second["set"]


def test_a_read_never_brings_back_a_value_overwritten_meanwhile() -> None:
    # A reader keeping an entry unpickled while a writer replaces it: only the writer writes, so
    # its get right after its set must see that value, never the one the reader was reading.
    cache = SimpleCache()
    stop = threading.Event()
    errors: list[BaseException] = []
    stale: list[tuple[int, Any]] = []

    def read() -> None:
        try:
            while not stop.is_set():
                got = cache.get("k")
                assert got is None or got == {"v": got["v"], "rows": [got["v"]]}
        except BaseException as err:  # reported below, not lost in the thread
            errors.append(err)

    readers = [threading.Thread(target=read) for _ in range(3)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch inside get's few lines, not once in 5 ms
    try:
        for thread in readers:
            thread.start()
        for i in range(20_000):
            cache.set("k", {"v": i, "rows": [i]})
            got = cache.get("k")
            if got != {"v": i, "rows": [i]}:
                stale.append((i, got))
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        sys.setswitchinterval(interval)
    assert not errors
    assert not stale


class Tag:
    """A mutable object usable as a dict key: unpickling makes a new one each time."""

    def __init__(self, name: str) -> None:
        self.name = name


def test_keys_that_are_objects_are_never_shared_between_reads() -> None:
    cache = SimpleCache()
    reads = read_repeatedly(cache, {Tag("a"): [1], "rows": [2]})
    keys = [next(iter(got)) for got in reads]
    assert len({id(key) for key in keys}) == READS
    keys[-2].name = "changed"
    assert next(iter(cache.get("k"))).name == "a"
