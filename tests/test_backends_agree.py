"""One contract, every backend: random operation sequences give SimpleCache's answers everywhere.

A hypothesis state machine runs the same steps on SimpleCache (the reference), FileSystemCache,
RedisCache on one server, RedisCache on a cluster and MemcachedCache, and checks at every step
that each backend returns what SimpleCache returns, or raises the same exception type. It runs
with every built-in serializer (each compared with a SimpleCache using the same serializer, so
JSON's tuples-become-lists and the like agree), with a ``key_prefix`` and with a ``secret``.

Timeouts are None, 0, long or negative only: memcached's clock ticks once a second and cannot be
moved, so short expiries are left to each backend's own tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test
from servers import MemcachedServer, RedisCluster, RedisServer

from cacheplug import (
    BaseCache,
    FileSystemCache,
    MemcachedCache,
    RedisCache,
    SerializationError,
    SimpleCache,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Backends whose counters are the engine's signed 64-bit integers (docs/backends.md: an ``inc``
#: whose result or delta leaves that range raises OverflowError there and the value stays).
ENGINES = ("redis", "redis-cluster", "memcached")

KEYS = (
    "a",
    "b",
    "",
    "with space",
    "ctl\x00\x07\n\t\x7f",
    "ключ-ü-🎉",
    "k" * 300,
    "glob*[?]~#",
    "lone\ud800surrogate",
)
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "prefixed": {"key_prefix": "ns[*]? é:"},
    "signed": {"secret": "not-a-real-secret"},
}
TIMEOUTS = (
    None,
    0,
    3600,
    1_000_000.5,
    40 * 24 * 3600,  # past memcached's 30 days: sent as an absolute time
    10**12,  # capped by Redis (2**62 ms) and memcached (2038)
    timedelta(days=2),
    -1,
    -0.5,
    -(10**9),
    "60",  # TypeError everywhere
)
BIG_INTS = (
    INT64_MAX,
    INT64_MIN,
    INT64_MAX + 1,
    INT64_MIN - 1,
    2**64 - 1,
    2**64,
    2**100,
    -(2**100),
)
DELTAS = st.integers(-3, 3) | st.sampled_from((*BIG_INTS, 2**62, True, 1.0))


class Unencodable:
    """A value no serializer can encode."""

    def __reduce__(self) -> Any:
        raise TypeError("Unencodable cannot be pickled")

    def __repr__(self) -> str:
        return "Unencodable()"


@dataclass(frozen=True)
class Raised:
    """An operation's exception, compared by type."""

    error: type[BaseException]

    def __repr__(self) -> str:
        return f"<raised {self.error.__name__}>"


def outcome(call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)``'s return value, or :class:`Raised` with the type of what it raised."""
    try:
        return call(*args)
    except Exception as err:
        return Raised(type(err))


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types all the way down: True is not 1, nor a tuple a list."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    return bool(a == b)


def values(serializer: str) -> st.SearchStrategy[Any]:
    """Values in ``serializer``'s domain: what it encodes and decodes without refusing."""
    # lone surrogates: only pickle encodes them
    text_chars = (
        st.characters() if serializer == "pickle" else st.characters(exclude_categories=["Cs"])
    )
    big = BIG_INTS if serializer == "pickle" else [n for n in BIG_INTS if INT64_MIN <= n < 2**64]
    ints = st.integers(-1000, 1000) | st.sampled_from(big)
    scalars: st.SearchStrategy[Any] = (
        st.none()
        | st.booleans()
        | ints
        | st.floats(allow_nan=serializer != "json", allow_infinity=serializer != "json")
        | st.text(text_chars, max_size=12)
    )
    map_keys: st.SearchStrategy[Any] = st.text(text_chars, max_size=4)
    if serializer != "json":
        scalars |= st.binary(max_size=12)
        map_keys |= st.integers(-5, 5)

    def nest(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return (
            st.lists(children, max_size=3)
            | st.lists(children, max_size=3).map(tuple)
            | st.dictionaries(map_keys, children, max_size=3)
        )

    return st.recursive(scalars, nest, max_leaves=6)


def in_int64(number: int) -> bool:
    """Whether an engine counter can hold ``number``."""
    return INT64_MIN <= number <= INT64_MAX


@dataclass
class Stores:
    """The servers and options of one run; makes the caches of each example on a clean store."""

    serializer: str
    options: dict[str, Any]
    root: Path
    redis_server: RedisServer
    redis_cluster: RedisCluster
    memcached_server: MemcachedServer
    engines: dict[str, BaseCache] = field(default_factory=dict)
    examples: int = 0

    def open_engines(self) -> None:
        common = {"serializer": self.serializer, **self.options}
        host, port = self.redis_server.host, self.redis_server.port
        self.engines = {
            "redis": RedisCache(host, port, **common),
            "redis-cluster": RedisCache(startup_nodes=self.redis_cluster.nodes, **common),
            "memcached": MemcachedCache([f"{host}:{self.memcached_server.port}"], **common),
        }

    def close_engines(self) -> None:
        for cache in self.engines.values():
            cache.close()

    def fresh(self) -> dict[str, BaseCache]:
        """SimpleCache first (the reference), then the others, all empty."""
        self.redis_server.flush()
        self.redis_cluster.flush()
        self.memcached_server.flush()
        self.examples += 1
        common = {"serializer": self.serializer, **self.options}
        return {
            "simple": SimpleCache(**common),
            "file": FileSystemCache(self.root / f"example{self.examples}", **common),
            **self.engines,
        }


def agreement_machine(stores: Stores) -> type[RuleBasedStateMachine]:
    """A state machine class running each step on every backend of ``stores``."""
    keys = st.sampled_from(KEYS)
    key_lists = st.lists(keys, max_size=4)
    timeouts = st.sampled_from(TIMEOUTS)
    data = values(stores.serializer)

    class BackendsAgree(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.caches = stores.fresh()

        def agree(
            self, method: str, *args: Any, engines: Any = None, unchecked: tuple[str, ...] = ()
        ) -> dict[str, Any]:
            """Run ``method`` everywhere; each answer must be SimpleCache's (or ``engines``).

            The answers of the ``unchecked`` backends are not compared (a known defect).
            """
            caches = self.caches.items()
            results = {name: outcome(getattr(cache, method), *args) for name, cache in caches}
            reference = results["simple"]
            wrong = []
            for name, got in results.items():
                expected = engines if engines is not None and name in ENGINES else reference
                if name not in unchecked and not same(got, expected):
                    wrong.append(f"{name} gave {got!r}, expected {expected!r}")
            assert not wrong, f"{method}{args!r}: " + "; ".join(wrong)
            return results

        @rule(key=keys)
        def get(self, key: str) -> None:
            self.agree("get", key)

        @rule(key=keys, value=data, timeout=timeouts)
        def set(self, key: str, value: Any, timeout: Any) -> None:
            self.agree("set", key, value, timeout)

        @rule(key=keys, value=data, timeout=timeouts)
        def add(self, key: str, value: Any, timeout: Any) -> None:
            self.agree("add", key, value, timeout)

        @rule(method=st.sampled_from(("set", "add")), key=keys, timeout=timeouts)
        def store_unencodable(self, method: str, key: str, timeout: Any) -> None:
            self.agree(method, key, [1, Unencodable()], timeout)
            self.agree("get", key)

        @rule(key=keys)
        def delete(self, key: str) -> None:
            self.agree("delete", key)

        @rule(key=keys)
        def has(self, key: str) -> None:
            self.agree("has", key)

        @rule(key=keys, delta=DELTAS)
        def inc(self, key: str, delta: Any) -> None:
            self.count("inc", key, delta, delta)

        @rule(key=keys, delta=DELTAS)
        def dec(self, key: str, delta: Any) -> None:
            self.count("dec", key, delta, -delta if type(delta) is int else delta)

        def count(self, method: str, key: str, delta: Any, signed: Any) -> None:
            """``inc``/``dec`` (``signed``: the delta ``inc`` gets) with the documented
            differences of engine counters."""
            reference = self.caches["simple"]
            before = reference.get(key)
            holds_none = before is None and reference.has(key)  # None is not a counter
            if type(signed) is not int or holds_none or type(before) not in (int, type(None)):
                # TypeError everywhere, but engines check a delta's range before the value
                refused = type(signed) is int and not in_int64(signed)
                self.agree(method, key, delta, engines=Raised(OverflowError) if refused else None)
                return
            result = (before or 0) + signed
            # The documented difference (docs/backends.md): engine counters are signed 64-bit,
            # so there a delta, value or result out of that range raises OverflowError and the
            # value stays, where the in-process backends count with Python ints.
            overflow = not (in_int64(before or 0) and in_int64(signed) and in_int64(result))
            # In-process backends with json or msgpack raise OverflowError for a result their
            # serializer cannot store (outside [-2**63, 2**64)), as engines do outside int64.
            refused = stores.serializer != "pickle" and not INT64_MIN <= result < 2**64
            self.agree(method, key, delta, engines=Raised(OverflowError) if overflow else None)
            if overflow:  # bring the in-process backends back to the engines' state
                for name in () if refused else ("simple", "file"):
                    if before is None:
                        assert self.caches[name].delete(key)
                    else:
                        assert self.caches[name].inc(key, -signed) == before
                self.agree("get", key)  # and the engines kept their value

        @rule(keys=key_lists)
        def get_many(self, keys: list[str]) -> None:
            self.agree("get_many", *keys)

        @rule(keys=key_lists)
        def get_dict(self, keys: list[str]) -> None:
            self.agree("get_dict", *keys)

        @rule(mapping=st.dictionaries(keys, data, max_size=4), timeout=timeouts)
        def set_many(self, mapping: dict[str, Any], timeout: Any) -> None:
            self.agree("set_many", mapping, timeout)

        @rule(mapping=st.dictionaries(keys, data, max_size=3), bad=keys, timeout=timeouts)
        def set_many_unencodable(self, mapping: dict[str, Any], bad: str, timeout: Any) -> None:
            # last, so a backend that stored items before it would show them
            others = {key: value for key, value in mapping.items() if key != bad}
            self.agree("set_many", {**others, bad: Unencodable()}, timeout)
            self.agree("get_many", *KEYS)

        @rule(keys=key_lists)
        def delete_many(self, keys: list[str]) -> None:
            self.agree("delete_many", *keys)

        @rule()
        def clear(self) -> None:
            self.agree("clear")

        def teardown(self) -> None:
            try:
                self.agree("get_many", *KEYS)
                for key in KEYS:
                    self.agree("has", key)
            finally:
                self.caches["file"].close()

    return BackendsAgree


@pytest.fixture(params=["pickle", "json", "msgpack"])
def serializer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=list(VARIANTS))
def stores(
    request: pytest.FixtureRequest,
    serializer: str,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_cluster: RedisCluster,
    memcached_server: MemcachedServer,
) -> Iterator[Stores]:
    made = Stores(
        serializer,
        VARIANTS[request.param],
        tmp_path,
        redis_server,
        redis_cluster,
        memcached_server,
    )
    made.open_engines()
    yield made
    made.close_engines()
    redis_server.flush()
    redis_cluster.flush()
    memcached_server.flush()


def test_every_backend_answers_as_simple_cache(stores: Stores) -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        agreement_machine(stores),
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )


# -- known disagreements, each kept out of the machine above ----------------------------------


@pytest.fixture
def redis_cache(redis_server: RedisServer) -> Iterator[RedisCache]:
    cache = RedisCache(redis_server.host, redis_server.port, key_prefix="agree-known:")
    yield cache
    cache.clear()
    cache.close()


@pytest.fixture
def memcached_cache(memcached_server: MemcachedServer) -> Iterator[MemcachedCache]:
    address = f"{memcached_server.host}:{memcached_server.port}"
    cache = MemcachedCache([address])
    yield cache
    cache.close()


def test_redis_inc_returns_the_exact_count_beyond_2_53(redis_cache: RedisCache) -> None:
    # The stored value is right; the answer went through a Lua number (a double).
    assert redis_cache.inc("big", 2**53 + 1) == 2**53 + 1
    assert redis_cache.get("big") == 2**53 + 1


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_redis_refuses_an_int_its_serializer_cannot_encode(
    redis_server: RedisServer, serializer: str
) -> None:
    # SimpleCache, FileSystemCache and MemcachedCache raise SerializationError for 2**100.
    with RedisCache(redis_server.host, redis_server.port, serializer=serializer) as cache:
        with pytest.raises(SerializationError):
            cache.set("agree-known:int", 2**100)
        cache.delete("agree-known:int")


def test_memcached_inc_on_an_int_beyond_64_bits_raises_overflow_error(
    memcached_cache: MemcachedCache,
) -> None:
    # docs/backends.md: outside the signed 64-bit range, OverflowError on both engines.
    memcached_cache.set("big", 2**100)
    with pytest.raises(OverflowError):
        memcached_cache.inc("big")
    assert memcached_cache.get("big") == 2**100


def test_memcached_inc_counts_whatever_memory_memcached_reused(
    memcached_server: MemcachedServer, memcached_cache: MemcachedCache
) -> None:
    # memcached's incr parses with strchr(value, '-'), which reads past the value into what the
    # item's memory held before; counters are stored biased by 2**63, so every one >= 0 is
    # exposed. Leave dashes in the freed memory, then count there.
    from pymemcache.client.base import Client

    raw = Client(memcached_server.address, default_noreply=False)
    answers = []
    for size in range(24, 48, 4):  # a filler a little longer than the counter, same slab
        key = f"c{size}"
        raw.set(key, b"-" * size)
        raw.delete(key)  # memcached hands this chunk to the next item of its size
        memcached_cache.set(key, 5)
        answers.append(outcome(memcached_cache.inc, key))
    raw.close()
    assert answers == [6] * len(answers)


def test_filesystem_set_many_stores_nothing_when_a_value_cannot_be_encoded(
    tmp_path: Path,
) -> None:
    # SimpleCache, RedisCache and MemcachedCache encode every value before storing any.
    cache = FileSystemCache(tmp_path)
    with pytest.raises(SerializationError):
        cache.set_many({"first": 1, "bad": Unencodable()})
    assert cache.get("first") is None


def test_filesystem_set_many_refuses_a_bad_timeout_without_items(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        FileSystemCache(tmp_path).set_many({}, timeout="60")  # type: ignore[arg-type]


def test_counting_past_what_json_stores_is_an_overflow_on_both_in_process_backends(
    tmp_path: Path,
) -> None:
    # as engines raise OverflowError past int64; the value stays
    for cache in (SimpleCache(serializer="json"), FileSystemCache(tmp_path, serializer="json")):
        cache.set("n", 2**64 - 1)
        with pytest.raises(OverflowError, match="json cannot store it"):
            cache.inc("n")
        assert cache.get("n") == 2**64 - 1
        assert cache.dec("n") == 2**64 - 2
