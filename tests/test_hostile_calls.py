"""Hostile arguments to the calls of a cache that was built fine: values, timeouts, deltas,
mappings, key counts and factories, on every backend with every built-in serializer.

Each call either does what the contract says or raises one of the documented caller errors
(``TypeError``, ``SerializationError``, ``OverflowError``) with a message naming what was wrong;
whatever happened, nothing stored before is lost, ``stats()`` counts no outage, and the next
call on the same cache works.
"""

from __future__ import annotations

import collections.abc
import decimal
import fractions
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cacheplug import (
    BaseCache,
    FileSystemCache,
    SerializationError,
    SimpleCache,
    from_url,
    get_serializer,
)

BACKENDS = ["simple", "file", "redis", "memcached"]
SERIALIZERS = ["pickle", "json", "msgpack"]
ENGINES = {"redis", "memcached"}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SECRET = "hostile-calls-secret-0123456789"


@contextmanager
def opened(
    name: str, serializer: str, request: pytest.FixtureRequest, tmp: Path
) -> Iterator[BaseCache]:
    """An empty cache of backend ``name`` with ``serializer``, cleared and closed after."""
    cache = build(name, serializer, request, tmp)
    cache.clear()
    try:
        yield cache
    finally:
        cache.clear()
        cache.close()


def build(name: str, serializer: str, request: pytest.FixtureRequest, tmp: Path) -> BaseCache:
    """A cache of backend ``name`` with ``serializer``; pickle caches are signed (``secret=``),
    as a shared store should be."""
    options: dict[str, Any] = {"serializer": serializer}
    if serializer == "pickle":
        options["secret"] = SECRET
    if name == "simple":
        return SimpleCache(threshold=200_000, **options)
    if name == "file":
        return from_url(f"file://{tmp}?threshold=200000", **options)
    server: Any = request.getfixturevalue(f"{name}_server")
    return from_url(server.url, key_prefix=f"hostile-calls-{serializer}:", **options)


@pytest.fixture(params=[(b, s) for b in BACKENDS for s in SERIALIZERS], ids="-".join)
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseCache]:
    backend, serializer = request.param
    with opened(backend, serializer, request, tmp_path) as built:
        built.backend = backend  # type: ignore[attr-defined]
        built.serializer_name = serializer  # type: ignore[attr-defined]
        built.set("witness", "stored before", 0)
        yield built


def backend_of(cache: BaseCache) -> str:
    return str(cache.backend)  # type: ignore[attr-defined]


def serializer_of(cache: BaseCache) -> str:
    return str(cache.serializer_name)  # type: ignore[attr-defined]


def assert_still_works(cache: BaseCache) -> None:
    """Nothing stored before is lost, no outage was counted, and the next calls work."""
    assert cache.get("witness") == "stored before"
    assert cache.set("after", [1, "two"]) is True
    assert cache.get("after") == [1, "two"]
    assert cache.stats()["errors"] == 0


# -- values ------------------------------------------------------------------------------------


class Boom(Exception):
    """Raised by hostile user code; must reach the caller unchanged."""


class RaisingReduce:
    def __reduce__(self) -> Any:
        raise RuntimeError("cannot reduce")


class JunkReduce:
    def __reduce__(self) -> Any:
        return 42


class ShortReduce:
    def __reduce__(self) -> Any:
        return (len,)


class RaisingGetstate:
    def __getstate__(self) -> Any:
        raise ValueError("no state")


class RaisingEq:
    """Picklable, but comparing or hashing it raises."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    def __hash__(self) -> int:
        raise RuntimeError("no hash")


class RaisingRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class IntSub(int):
    pass


def recursive_list() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


def recursive_dict() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


def deep_list(depth: int = 50_000) -> list[Any]:
    top: list[Any] = []
    current = top
    for _ in range(depth):
        current.append([])
        current = current[0]
    return top


REFUSED = object()  # the serializer must raise SerializationError
SAME = object()  # read back equal to what was stored
OPAQUE = object()  # stored and read back as an instance of the same class
SELF = object()  # read back holding itself, as it was stored

# name, value factory, then what pickle, json and msgpack give back
VALUES: list[tuple[str, Callable[[], Any], Any, Any, Any]] = [
    ("recursive list", recursive_list, SELF, REFUSED, REFUSED),
    ("recursive dict", recursive_dict, SELF, REFUSED, REFUSED),
    ("50k deep list", deep_list, REFUSED, REFUSED, REFUSED),
    ("__reduce__ raises", RaisingReduce, REFUSED, REFUSED, REFUSED),
    ("__reduce__ returns junk", JunkReduce, REFUSED, REFUSED, REFUSED),
    ("__reduce__ too short", ShortReduce, REFUSED, REFUSED, REFUSED),
    ("__getstate__ raises", RaisingGetstate, REFUSED, REFUSED, REFUSED),
    ("__eq__/__hash__ raise", RaisingEq, OPAQUE, REFUSED, REFUSED),
    ("__repr__ raises", RaisingRepr, OPAQUE, REFUSED, REFUSED),
    ("list of __eq__ raisers", lambda: [RaisingEq()], OPAQUE, REFUSED, REFUSED),
    ("2**64", lambda: 2**64, SAME, REFUSED, REFUSED),
    ("2**64-1", lambda: 2**64 - 1, SAME, SAME, SAME),
    ("-2**63", lambda: INT64_MIN, SAME, SAME, SAME),
    ("-2**63-1", lambda: INT64_MIN - 1, SAME, REFUSED, REFUSED),
    ("10**5000", lambda: 10**5000, SAME, REFUSED, REFUSED),
    ("nan", lambda: math.nan, SAME, REFUSED, SAME),
    ("inf", lambda: math.inf, SAME, REFUSED, SAME),
    ("nan nested", lambda: {"a": [1.0, -math.inf]}, SAME, REFUSED, SAME),
    ("-0.0", lambda: -0.0, SAME, SAME, SAME),
    ("True", lambda: True, SAME, SAME, SAME),
    ("int subclass", lambda: IntSub(5), SAME, 5, 5),
    ("bytes", lambda: b"\x00\xff", SAME, REFUSED, SAME),
    ("bytearray", lambda: bytearray(b"ab"), SAME, REFUSED, b"ab"),
    ("memoryview", lambda: memoryview(b"ab"), REFUSED, REFUSED, b"ab"),
    ("lone surrogate", lambda: "a\udc80b", SAME, REFUSED, REFUSED),
    ("lone surrogate in a dict key", lambda: {"\ud800": 1}, SAME, REFUSED, REFUSED),
    ("None inside", lambda: [None, {"k": None}], SAME, SAME, SAME),
    ("tuple", lambda: (1, (2, 3)), SAME, [1, [2, 3]], [1, [2, 3]]),
    ("int dict keys", lambda: {1: "a", "1": "b"}, SAME, REFUSED, SAME),
    ("tuple dict keys", lambda: {(1, 2): "a"}, SAME, REFUSED, SAME),
    ("None dict key", lambda: {None: 1}, SAME, REFUSED, SAME),
    ("bytes dict key", lambda: {b"k": 1}, SAME, REFUSED, SAME),
    ("set", lambda: {1, 2}, SAME, REFUSED, REFUSED),
    ("complex", lambda: 1j, SAME, REFUSED, REFUSED),
    ("Decimal", lambda: decimal.Decimal("1.5"), SAME, REFUSED, REFUSED),
    ("generator", lambda: (i for i in range(2)), REFUSED, REFUSED, REFUSED),
    ("lambda", lambda: lambda: 1, REFUSED, REFUSED, REFUSED),
    ("huge floats", lambda: [1e308, -1e308, 5e-324], SAME, SAME, SAME),
]


def same(got: Any, expected: Any) -> bool:
    """Equality that treats NaN as equal to NaN, also inside lists and dicts."""
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(expected, float):
        return (
            type(got) is float
            and got == expected
            and math.copysign(1, got) == math.copysign(1, expected)
        )
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(same, got, expected))
    if isinstance(expected, dict):
        return (
            isinstance(got, dict)
            and got.keys() == expected.keys()
            and all(same(got[k], v) for k, v in expected.items())
        )
    return type(got) is type(expected) and bool(got == expected)


@pytest.mark.parametrize("operation", ["set", "add", "set_many"])
def test_hostile_values_round_trip_or_are_refused_keeping_the_old_value(
    cache: BaseCache, operation: str
) -> None:
    column = 2 + SERIALIZERS.index(serializer_of(cache))
    for row in VALUES:
        name, make, expected = row[0], row[1], row[column]
        value = make()
        key = f"{operation} {name}"
        cache.set(key, "old value", 0)
        cache.delete("first")
        if operation == "add":
            cache.delete(key)
        try:
            if operation == "set_many":
                stored: Any = cache.set_many({"first": 1, key: value})
            else:
                stored = getattr(cache, operation)(key, value)
        except SerializationError as err:
            assert expected is REFUSED, f"{name}: refused ({err})"
            assert serializer_of(cache) in str(err), err  # names the serializer that refused
            assert cache.get(key) == ("old value" if operation != "add" else None), name
            assert cache.get("first") is None, name  # set_many stored nothing
            continue
        assert expected is not REFUSED, f"{name}: stored, but {serializer_of(cache)} cannot"
        assert stored in (True, ["first", key]), name
        got = cache.get(key)
        if expected is OPAQUE:
            assert type(got) is type(value), name
        elif expected is SELF:
            assert type(got) is type(value), name
            assert got[0 if isinstance(got, list) else "self"] is got, name
        else:
            assert same(got, value if expected is SAME else expected), (name, got)
    assert_still_works(cache)


def test_none_is_stored_but_reads_like_a_miss(cache: BaseCache) -> None:
    assert cache.set("none", None) is True
    assert cache.get("none") is None
    assert cache.has("none") is True
    assert cache.add("none", 1) is False
    assert cache.get_many("none", "missing") == [None, None]
    # get_or_set cannot tell the stored None from a miss: it runs the factory
    assert cache.get_or_set("none", lambda: 7) == 7
    assert cache.get("none") == 7
    cache.set("none", None)
    with pytest.raises(TypeError, match="cannot increment 'none'"):
        cache.inc("none")
    assert cache.has("none") is True
    assert_still_works(cache)


@pytest.mark.parametrize("size", [1024 * 1024 - 4096, 8 * 1024 * 1024])
def test_large_values_are_stored_or_left_out_on_memcached(cache: BaseCache, size: int) -> None:
    value: Any = "v" * size if serializer_of(cache) == "json" else b"v" * size
    refused = backend_of(cache) == "memcached" and size > 1024 * 1024
    assert cache.set("large", value) is not refused
    assert cache.get("large") == (None if refused else value)
    stored = cache.set_many({"large": value, "small": 1})
    assert stored == (["small"] if refused else ["large", "small"])
    errors = cache.stats()["errors"]
    assert errors == (2 if refused else 0)  # memcached's refusal is logged and counted
    assert cache.get("witness") == "stored before"
    assert cache.get("small") == 1


# -- timeouts ----------------------------------------------------------------------------------

numpy: Any
try:
    import numpy
except ImportError:  # pragma: no cover - numpy is optional
    numpy = None

BAD_TIMEOUTS: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    decimal.Decimal("1.5"),
    fractions.Fraction(1, 3),
    "60",
    b"60",
    [],
    1j,
]
if numpy is not None:
    BAD_TIMEOUTS += [numpy.int64(5), numpy.bool_(True)]
LASTING_TIMEOUTS: list[Any] = [
    0,
    -0.0,
    2**31,
    2**32,
    2**53 + 1,
    2**62,
    2**63,
    2**64,
    10**400,
    1e308,
    timedelta.max,
    timedelta(days=30, seconds=1),
    30 * 24 * 3600,
]
if numpy is not None:
    LASTING_TIMEOUTS.append(numpy.float64(3600.5))  # a float subclass, accepted as a float
EXPIRED_TIMEOUTS: list[Any] = [
    -1,
    -1e-9,
    -(2**63),
    -(10**400),
    -1e308,
    timedelta.min,
    timedelta(microseconds=-1),
]


def timed_calls(cache: BaseCache, key: str, timeout: Any) -> list[Callable[[], Any]]:
    """Each call that takes a timeout, storing 1 under ``key``."""

    def memoized() -> Any:
        return cache.memoize(timeout)(lambda: 1)()

    return [
        lambda: cache.set(key, 1, timeout),
        lambda: cache.add(key, 1, timeout),
        lambda: cache.set_many({key: 1}, timeout),
        lambda: cache.get_or_set(key, lambda: 1, timeout),
        memoized,
    ]


def test_bad_timeouts_are_type_errors_storing_nothing(cache: BaseCache) -> None:
    for timeout in BAD_TIMEOUTS:
        for call in timed_calls(cache, "timed", timeout):
            cache.delete("timed")
            with pytest.raises(TypeError, match="timeout must be None, 0") as caught:
                call()
            assert type(timeout).__name__ in str(caught.value)
            assert cache.has("timed") is False, timeout
    with pytest.raises(TypeError, match="timeout must be"):
        cache.set_many({}, "60")  # type: ignore[arg-type]  # also with nothing to store
    assert_still_works(cache)


def test_huge_zero_and_negative_timeouts_mean_what_the_contract_says(cache: BaseCache) -> None:
    for timeouts, present in ((LASTING_TIMEOUTS, True), (EXPIRED_TIMEOUTS, False)):
        for timeout in timeouts:
            for n, call in enumerate(timed_calls(cache, "timed", timeout)[:4]):
                cache.set("timed", "before", 0)
                if n == 1:  # add: the key must be absent
                    cache.delete("timed")
                if n == 3:  # get_or_set: a miss runs the factory
                    cache.delete("timed")
                assert call() in (True, ["timed"], 1, []), timeout
                assert cache.has("timed") is present, (timeout, n)
                assert cache.get("timed") == (1 if present else None), (timeout, n)
    assert_still_works(cache)


def test_tiny_positive_timeouts_are_accepted(cache: BaseCache) -> None:
    # Engines round up (Redis to 1 ms, memcached to 1 s), in-process backends are exact: only
    # that the call is accepted and leaves the cache working is common to all.
    for timeout in (1e-9, 5e-324, timedelta(microseconds=1)):
        assert cache.set("tiny", 1, timeout) is True
        assert cache.get("tiny") in (1, None)
    assert_still_works(cache)


# -- inc / dec ---------------------------------------------------------------------------------

BAD_DELTAS: list[Any] = [True, False, 1.0, math.nan, decimal.Decimal(1), "1", None, b"1"]
if numpy is not None:
    BAD_DELTAS += [numpy.int64(1)]


def test_bad_deltas_are_type_errors_leaving_the_counter(cache: BaseCache) -> None:
    cache.set("n", 5)
    for delta in BAD_DELTAS:
        for operation in (cache.inc, cache.dec):
            with pytest.raises(TypeError, match="delta must be int"):
                operation("n", delta)
            with pytest.raises(TypeError, match="delta must be int"):
                operation("missing", delta)
    assert cache.get("n") == 5
    assert cache.has("missing") is False
    assert cache.inc("n", 0) == 5
    assert cache.inc("zero", 0) == 0
    assert cache.get("zero") == 0
    assert_still_works(cache)


NON_COUNTERS: list[Any] = [True, False, 1.0, "5", b"5", None, [1], {"n": 1}]


def test_inc_on_a_non_integer_is_a_type_error_leaving_it(cache: BaseCache) -> None:
    for value in NON_COUNTERS:
        try:
            cache.set("c", value, 0)
        except SerializationError:
            continue  # bytes under json
        for delta in (0, 1, -1, 2**70):
            with pytest.raises((TypeError, OverflowError)) as caught:
                cache.inc("c", delta)
            if isinstance(caught.value, OverflowError):  # engines check the delta first
                assert backend_of(cache) in ENGINES and delta == 2**70
                assert "64-bit" in str(caught.value)
            else:
                assert "cannot increment 'c'" in str(caught.value)
                if value is not None:  # every backend says what it holds
                    held = f"holds a {type(value).__name__}, not an int"
                    assert held in str(caught.value), (value, caught.value)
            assert same(cache.get("c"), value), value
    assert_still_works(cache)


def counter_range(cache: BaseCache) -> tuple[int, int]:
    """The integers ``cache`` can count to, as the contract says."""
    if backend_of(cache) in ENGINES:
        return INT64_MIN, INT64_MAX
    if serializer_of(cache) == "pickle":
        return -(10**100), 10**100  # Python ints: no bound within the drawn values
    return INT64_MIN, 2**64 - 1


edge_ints = st.sampled_from(
    [0, 1, -1, INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1, 2**63, 2**64 - 1, 2**64]
) | st.integers(-(2**65), 2**65)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(start=st.none() | edge_ints, delta=edge_ints, down=st.booleans())
def test_counting_gives_the_exact_result_or_overflows_leaving_the_value(
    cache: BaseCache, start: int | None, delta: int, down: bool
) -> None:
    cache.delete("count")
    if start is not None:
        try:
            cache.set("count", start, 0)
        except SerializationError:
            return  # json/msgpack cannot store it at all
    lowest, highest = counter_range(cache)
    expected = (start or 0) + (-delta if down else delta)
    engine = backend_of(cache) in ENGINES
    added = -delta if down else delta  # engines take what they add as a 64-bit integer
    fits = lowest <= expected <= highest and (not engine or lowest <= added <= highest)
    if engine and start is not None and not lowest <= start <= highest:
        fits = False  # a stored int beyond 64 bits is no engine counter
    try:
        got = cache.dec("count", delta) if down else cache.inc("count", delta)
    except OverflowError as err:
        assert not fits, (start, delta, down, err)
        assert "64" in str(err) or "cannot store" in str(err), err
        assert cache.get("count") == start
    else:
        assert fits, (start, delta, down, got)
        assert got == expected
        assert type(cache.get("count")) is int
        assert cache.get("count") == expected
    assert cache.get("witness") == "stored before"


@pytest.mark.parametrize("backend", ["simple", "file"])
def test_a_value_from_another_serializer_is_another_value_unless_signed(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """As docs/contract.md says: after the serializer is reassigned, json's 5 (b"5") reads as
    msgpack's 53; with a secret, whose MAC names the serializer, it is a miss."""
    with opened(backend, "json", request, tmp_path) as cache:
        cache.set("n", 5)
        cache.serializer = get_serializer("msgpack")
        assert cache.get("n") == 53
    signed = SimpleCache(serializer="json", secret=SECRET)
    if backend == "file":
        signed = FileSystemCache(tmp_path / "signed", serializer="json", secret=SECRET)
    signed.set("n", 5)
    signed.serializer = get_serializer("msgpack")
    assert signed.get("n") is None
    with pytest.raises(TypeError, match="unreadable"):
        signed.inc("n")
    signed.serializer = get_serializer("json")
    assert signed.get("n") == 5  # untouched


# -- the *_many calls --------------------------------------------------------------------------


def test_empty_and_duplicate_many_calls(cache: BaseCache) -> None:
    assert cache.set_many({}) == []
    assert cache.get_many() == []
    assert cache.get_dict() == {}
    assert cache.delete_many() == []
    cache.set("d", 1)
    assert cache.get_many("d", "d", "missing", "d") == [1, 1, None, 1]
    assert cache.get_dict("d", "d", "missing") == {"d": 1, "missing": None}
    assert cache.delete_many("d", "d", "missing") == ["d"]
    assert cache.has("d") is False
    assert_still_works(cache)


def test_a_hundred_thousand_keys(cache: BaseCache) -> None:
    count = 2_000 if backend_of(cache) == "file" else 100_000
    mapping = {f"many{i}": i for i in range(count)}
    assert cache.set_many(mapping, 0) == list(mapping)
    values = cache.get_many(*mapping)
    assert values == list(range(count))
    assert cache.delete_many(*mapping) == list(mapping)
    assert cache.get_many("many0", f"many{count - 1}") == [None, None]
    assert_still_works(cache)


class MappingRaisingMidway(collections.abc.Mapping[str, int]):
    def __getitem__(self, key: str) -> int:
        return 1

    def __len__(self) -> int:
        return 10

    def __iter__(self) -> Iterator[str]:
        for i in range(10):
            if i == 5:
                raise Boom("iteration failed")
            yield f"mid{i}"


def test_set_many_stores_nothing_when_an_item_is_bad(cache: BaseCache) -> None:
    with pytest.raises(Boom):
        cache.set_many(MappingRaisingMidway())
    assert cache.get_many("mid0", "mid4") == [None, None]
    with pytest.raises(TypeError, match="key must be str"):
        cache.set_many({"bad0": 1, 5: 1, "bad2": 2})  # type: ignore[dict-item]
    bad_value: Any = RaisingReduce() if serializer_of(cache) == "pickle" else object()
    with pytest.raises(SerializationError):
        cache.set_many({"bad0": 1, "bad1": bad_value, "bad2": 2})
    assert cache.get_many("bad0", "bad2") == [None, None]
    with pytest.raises(TypeError, match="timeout must be"):
        cache.set_many({"bad0": 1}, math.nan)
    assert cache.has("bad0") is False
    assert_still_works(cache)


@pytest.fixture
def pickle_cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseCache]:
    """A signed pickle cache of the backend given by indirect parametrization."""
    with opened(request.param, "pickle", request, tmp_path) as built:
        yield built


@pytest.mark.parametrize("pickle_cache", BACKENDS, indirect=True)
def test_delete_many_with_a_bad_key_deletes_nothing(pickle_cache: BaseCache) -> None:
    cache = pickle_cache
    cache.set("kept", 1)
    with pytest.raises(TypeError, match="key must be str"):
        cache.delete_many("kept", None)  # type: ignore[arg-type]
    assert cache.get("kept") == 1


NOT_MAPPINGS: list[Callable[[], Any]] = [
    lambda: [("pair", 1)],
    lambda: (("pair", v) for v in [1]),
    lambda: iter({"pair": 1}),
    {"pair": 1}.items,
    lambda: None,
]


@pytest.mark.parametrize("pickle_cache", BACKENDS, indirect=True)
def test_set_many_without_a_mapping_is_a_type_error_saying_so(pickle_cache: BaseCache) -> None:
    cache = pickle_cache
    for make in NOT_MAPPINGS:
        with pytest.raises(TypeError, match="set_many takes a mapping"):
            cache.set_many(make())
        assert cache.has("pair") is False


@pytest.mark.parametrize("pickle_cache", BACKENDS, indirect=True)
def test_an_unhashable_key_in_a_many_call_is_the_key_error(pickle_cache: BaseCache) -> None:
    cache = pickle_cache
    for call in (cache.get_many, cache.get_dict, cache.delete_many):
        with pytest.raises(TypeError, match="key must be str, got list"):
            call(["witness"])  # type: ignore[arg-type]


def test_keys_that_memcached_maps_do_not_collide(cache: BaseCache) -> None:
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    keys = [long_a, long_b, "a b", "a_b", "a~#b", "a\x00b", "ä", "a" * 250, "a" * 251]
    mapping = {key: n for n, key in enumerate(keys)}
    assert cache.set_many(mapping) == keys
    assert cache.get_many(*keys) == list(range(len(keys)))
    assert cache.delete_many(*keys[::2]) == keys[::2]
    assert cache.get_many(*keys) == [None if n % 2 == 0 else n for n in range(len(keys))]
    assert_still_works(cache)


# -- get_or_set and memoize ----------------------------------------------------------------------


def test_factories_that_raise_return_none_or_reenter(cache: BaseCache) -> None:
    def raising() -> int:
        raise Boom("factory failed")

    with pytest.raises(Boom):
        cache.get_or_set("f", raising)
    assert cache.has("f") is False
    with pytest.raises(SystemExit):
        cache.get_or_set("f", lambda: (_ for _ in ()).throw(SystemExit(3)))
    assert cache.get_or_set("f", lambda: 3) == 3  # its single-flight lock was released
    assert cache.get_or_set("none", lambda: None) is None
    assert cache.has("none") is False
    assert cache.get_or_set("falsy", lambda: 0) == 0
    assert cache.get_or_set("falsy", lambda: 1) == 0  # 0 is cached, unlike None
    # a factory using its own key again (same thread) must not hang
    assert cache.get_or_set("re", lambda: cache.get_or_set("re", lambda: 5) + 1) == 6
    assert cache.get("re") == 6
    with pytest.raises(TypeError, match="not callable"):
        cache.get_or_set("nc", 5)  # type: ignore[arg-type]
    unencodable: Any = RaisingReduce() if serializer_of(cache) == "pickle" else object()
    with pytest.raises(SerializationError):
        cache.get_or_set("u", lambda: unencodable)
    assert cache.has("u") is False
    assert_still_works(cache)


def test_a_slow_factory_runs_once_for_threads_waiting_on_it(cache: BaseCache) -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow() -> str:
        calls.append(1)
        started.set()
        assert release.wait(10)
        return "slow"

    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_set("slow", slow)))
        for _ in range(4)
    ]
    threads[0].start()
    assert started.wait(10)
    for thread in threads[1:]:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert results == ["slow"] * 4
    assert calls == [1]
    assert_still_works(cache)


def test_memoized_functions_that_raise_return_none_or_reenter(cache: BaseCache) -> None:
    calls: list[str] = []

    @cache.memoize()
    def f(x: str) -> str | None:
        calls.append(x)
        if x == "raise":
            raise Boom(x)
        if x == "none":
            return None
        if x == "reenter":
            inner = f("inner")
            assert inner is not None
            return inner + "!"
        return x

    for _ in range(2):
        with pytest.raises(Boom):
            f("raise")
        assert f("none") is None
        assert f("reenter") == "inner!"
    assert calls == ["raise", "none", "reenter", "inner", "raise", "none"]
    with pytest.raises(TypeError, match="memory address"):
        f(RaisingReduce())  # type: ignore[arg-type]
    assert_still_works(cache)
