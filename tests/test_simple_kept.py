"""SimpleCache keeps nested builtin values unpickled from their first read on.

Every read must still give a value equal to the one stored that shares no mutable object with
the cache or with another read, and keep what pickle keeps (shared parts, cycles), whatever
the shape of the value.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacheplug import SimpleCache
from cacheplug.backends import simple as simple_backend

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
)
_hashables = st.recursive(
    _scalars, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3), max_leaves=6
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_hashables, inner, max_size=4)
        | st.tuples(inner, inner)
        | st.sets(_hashables, max_size=3)
        | st.frozensets(_hashables, max_size=3)
    ),
    max_leaves=20,
)


def _mutables(value: Any) -> Iterator[Any]:
    """Every mutable container inside ``value``, itself included."""
    kind = type(value)
    if kind in (dict, list, set):
        yield value
    if kind is dict:
        for item in value.values():
            yield from _mutables(item)
    elif kind in (list, tuple):
        for item in value:
            yield from _mutables(item)


def _mutate(value: Any) -> None:
    """Change every mutable container inside ``value``."""
    for container in list(_mutables(value)):
        if type(container) is list:
            container.append("changed")
        elif type(container) is dict:
            container["changed"] = True
        else:
            container.add("changed")


@settings(max_examples=400, deadline=None)
@given(value=_values.filter(lambda value: value is not None))  # a stored None reads as a miss
def test_every_read_equals_the_value_and_shares_no_mutable_part(value: Any) -> None:
    cache = SimpleCache()
    cache.set("k", value)
    first, second = cache.get("k"), cache.get("k")
    assert first == value == second
    assert type(first) is type(value)
    assert not {id(c) for c in _mutables(first)} & {id(c) for c in _mutables(second)}
    _mutate(first)
    _mutate(second)
    assert cache.get("k") == value
    assert cache.stats()["hits"] == 3


def test_a_small_nested_dict_is_kept_with_a_copy_plan_after_its_first_read() -> None:
    cache = SimpleCache()
    value = {"id": 1, "tags": ["a", "b"], "profile": {"age": 36}, "pair": (1, [2])}
    cache.set("k", value)
    assert cache._cache["k"][1] == simple_backend._SERIALIZED
    assert cache.get("k") == value
    assert cache._cache["k"][1] == simple_backend._PLANNED
    read = cache.get("k")
    read["tags"].append("c")
    read["profile"]["age"] = 0
    read["pair"][1].append(3)
    assert cache.get("k") == value


@pytest.mark.parametrize(
    ("value", "codec"),
    [
        (((1, 2), ("a", (b"b", None))), simple_backend._RAW),  # immutable all through
        ([(1, 2), frozenset({3})], simple_backend._SHALLOW),  # one copy of the list suffices
        ({"a": [1], "b": {2: {3}}}, simple_backend._PLANNED),
    ],
)
def test_what_a_first_read_keeps(value: Any, codec: int) -> None:
    cache = SimpleCache()
    cache.set("k", value)
    assert cache.get("k") == value
    assert cache._cache["k"][1] == codec
    assert cache.get("k") == value


def _deep(levels: int) -> list[Any]:
    top = inner = []
    for _ in range(levels):
        inner.append([])
        inner = inner[0]
    return top


def _shared() -> dict[str, Any]:
    part = [1, 2]
    return {"a": part, "b": part}


def _cyclic() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    "make",
    [
        _shared,
        _cyclic,
        lambda: _deep(40),
        lambda: {"f": [Fraction(1, 3)]},
        lambda: [bytearray(b"x")],
    ],
    ids=["shared part", "cycle", "40 deep", "a class of the standard library", "bytearray"],
)
def test_values_no_plan_copies_are_unpickled_on_every_read(make: Any) -> None:
    cache = SimpleCache()
    cache.set("k", make())
    first = cache.get("k")
    assert cache._cache["k"][1] == simple_backend._PICKLED
    second = cache.get("k")
    assert pickle.dumps(first) == pickle.dumps(second) == pickle.dumps(make())
    if isinstance(first, dict) and "b" in first:  # pickle keeps the sharing, and so does every read
        assert first["a"] is first["b"] and second["a"] is second["b"]
        assert first["a"] is not second["a"]
    if isinstance(first, list) and len(first) == 2 and first[1] is first:
        assert second[1] is second and second is not first


def test_a_value_set_while_the_first_read_unpickled_is_not_replaced() -> None:
    cache = SimpleCache()
    cache.set("k", {"a": [1]})
    cache.set("other", 1)
    entry = cache._cache["k"]
    read = pickle.loads(entry[2])
    cache.set("k", {"a": [2]})  # another thread's set between the unpickling and the keeping
    assert cache._keep_decoded("k", entry, read) == {"a": [1]}
    assert cache._cache["k"][1] == simple_backend._SERIALIZED  # the new value, not yet read
    entry = cache._cache["k"]
    cache.delete("k")
    assert cache._keep_decoded("k", entry, pickle.loads(entry[2])) == {"a": [2]}
    assert not cache.has("k")
    assert len(cache) == 1


def test_keeping_a_value_leaves_its_recency_alone() -> None:
    cache = SimpleCache(threshold=2)
    cache.set("old", {"a": [1]})
    cache.set("new", 1)
    entry = cache._cache["old"]
    cache._keep_decoded("old", entry, pickle.loads(entry[2]))  # as a read racing the next set
    cache.set("third", 1)  # evicts the least recently used: "old" was not used since
    assert not cache.has("old") and cache.has("new")


def test_inc_on_a_kept_nested_value_names_its_type() -> None:
    cache = SimpleCache()
    cache.set("k", {"a": {"b": 1}})
    cache.get("k")
    with pytest.raises(TypeError, match="holds a dict"):
        cache.inc("k")


def test_threads_reading_and_writing_nested_values_always_read_a_written_one() -> None:
    cache = SimpleCache()
    written = [{"n": n, "items": [n, [n]], "meta": {"n": (n, [n])}} for n in range(8)]
    errors: list[str] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait()
        for round_ in range(1_500):
            if round_ % 5 == 0:
                cache.set(f"k{round_ % 4}", written[n])
            read = cache.get(f"k{round_ % 4}")
            if read is not None:
                if read not in written:
                    errors.append(repr(read))
                read["items"][1].append("changed")  # a later read must not see it
                read["meta"]["n"][1].append("changed")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    for key in ("k0", "k1", "k2", "k3"):
        assert cache.get(key) in written
