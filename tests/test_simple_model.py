"""SimpleCache against an obviously correct model of its documented policy.

A hypothesis state machine runs random operation sequences on a small SimpleCache (threshold
1..6, a fake clock moved by random amounts and exactly onto expiry instants, ``default_timeout``
reassigned) and on ``Model``: a plain dict in recency order, O(n) everywhere. Every answer, every
raised exception type and ``stats()`` must agree after every step, and ``len(cache)`` never
exceeds the threshold.

The policy the model encodes, from docs/backends.md "SimpleCache", docs/contract.md and the
class docstring; where they are silent the code was read, and the choice is marked "code:":

- A use (most recently used) is a ``get`` hit, any write of the key (``set``, ``set_many``,
  ``add`` that stores, ``inc``/``dec``), and a ``get_or_set`` lookup that finds the entry.
  Code: ``has``, a refused ``add`` and an ``inc`` that raises do not move the entry.
- When a new key arrives in a full cache, expired entries go first, then the least recently
  used one, expiring or not. Only as many go as the new key needs. Which of several expired
  entries goes is not said (the cache goes by its heap records, which may be older than an
  entry's current expiry): the model tries every choice and keeps the states that match.
- An expired entry stays held (counted in ``len`` and ``stats()["size"]``) until an operation
  on its key drops it (``get``, ``has``, ``delete``, ``add``, ``inc``: not counted as an
  eviction) or an eviction takes it (counted). Code: ``set`` of a key whose entry expired but is
  still held overwrites it in place, so nothing is evicted for it.
- An overwrite takes the new timeout (``None``: the ``default_timeout`` of that moment) and
  makes the entry the most recently used; ``inc`` keeps an existing entry's expiry, a new
  counter gets ``default_timeout``.
- A born-expired write (negative timeout) removes the key, returns ``True`` (``set_many``
  lists the key) and counts as a set, not as a delete.
- ``stats()``: hits and misses per key looked up by ``get``/``get_many``; one lookup per
  ``get_or_set``, a miss when it ran the factory, else a hit; sets per key written (also
  born-expired); deletes per key that existed and was deleted; evictions per entry taken to
  make room; size = entries held. A stored ``None`` read by ``get`` may count as a hit or a
  miss (not written down yet; tests/test_stats_agree.py settles it).

The clock also goes backwards in one variant (a test clock, or a monotonic clock after a fork
or a suspend): expiry instants are absolute, so an entry that had expired but was still held is
live again when the clock goes back before its instant, in the cache and in the model alike.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from conftest import FakeClock
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cacheplug import SimpleCache

KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
# 1..6, mostly below the number of keys, so that evictions happen
THRESHOLDS = st.sampled_from([1, 2, 2, 3, 3, 3, 4, 4, 5, 6])
VALUES = st.one_of(
    st.integers(-3, 3),
    st.none(),
    st.booleans(),
    st.text("xy", max_size=2),
    st.lists(st.integers(0, 2), max_size=2),
    st.dictionaries(st.sampled_from(["p", "q"]), st.integers(0, 2), max_size=2),
)
# short expiries, and enough long ones that the least recently used entry decides evictions
TIMEOUTS = st.sampled_from(
    [None, None, 0, 0, 1, 2.5, 5, 30, 30, -1, timedelta(seconds=3), timedelta(milliseconds=1500)]
)
DEFAULT_TIMEOUTS = st.sampled_from([0, 300, 300, 1, 2.5, 30])
STEPS = st.sampled_from([0, 0.5, 1, 1, 1.5, 2, 2.5, 3, 31, 400])
DELTAS = st.integers(-3, 3)


@dataclass(frozen=True)
class Entry:
    expires: float  # absolute; 0 = never
    value: Any

    def expired(self, now: float) -> bool:
        return bool(self.expires) and self.expires <= now


class Model:
    """The documented SimpleCache policy, written for clarity: a dict in recency order."""

    def __init__(self, threshold: int, default_timeout: float, clock: FakeClock) -> None:
        self.threshold = threshold
        self.default_timeout = default_timeout
        self.clock = clock
        self.entries: dict[str, Entry] = {}  # least recently used first
        self.counts = dict.fromkeys(("hits", "misses", "sets", "deletes", "evictions"), 0)
        # Where the docs leave a choice open (which of several expired entries an eviction
        # takes), it is read from ``script`` (0 past its end) and recorded in ``made`` as
        # (chosen, options).
        self.script: list[int] = []
        self.made: list[tuple[int, int]] = []

    def copy(self) -> Model:
        twin = copy.copy(self)
        twin.entries, twin.counts = dict(self.entries), dict(self.counts)
        twin.script, twin.made = [], []
        return twin

    def key(self) -> str:
        return repr((self.entries, self.counts))

    def stats(self) -> dict[str, int]:
        return {**self.counts, "errors": 0, "size": len(self.entries)}

    def _expiry(self, timeout: float | timedelta | None) -> float | None:
        """Absolute expiry, 0 for never, None when born expired."""
        seconds: float
        if timeout is None:
            seconds = self.default_timeout
        elif isinstance(timeout, timedelta):
            total = timeout.total_seconds()
            seconds = int(total) if total.is_integer() else total
        else:
            seconds = timeout
        if seconds < 0:
            return None
        return self.clock() + seconds if seconds else 0

    def _live(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        if entry is not None and entry.expired(self.clock()):
            del self.entries[key]  # dropped on sight: not an eviction
            return None
        return entry

    def _use(self, key: str) -> None:
        self.entries[key] = self.entries.pop(key)

    def _store(self, key: str, entry: Entry) -> None:
        if key in self.entries:  # also an expired entry still held: overwritten in place
            del self.entries[key]
        else:
            self._make_room()
        self.entries[key] = entry

    def _make_room(self) -> None:
        if len(self.entries) < self.threshold:
            return
        now = self.clock()
        expired = [k for k, e in self.entries.items() if e.expired(now)]
        while expired and len(self.entries) >= self.threshold:
            del self.entries[expired.pop(self._choose(len(expired)))]
            self.counts["evictions"] += 1
        while len(self.entries) >= self.threshold:
            del self.entries[next(iter(self.entries))]
            self.counts["evictions"] += 1

    def _choose(self, options: int) -> int:
        """One of ``options`` ways the docs leave open (see :func:`runs`)."""
        chosen = self.script[len(self.made)] if len(self.made) < len(self.script) else 0
        self.made.append((chosen, options))
        return chosen

    def _write(self, key: str, value: Any, expires: float | None) -> None:
        self.counts["sets"] += 1
        if expires is None:
            self.entries.pop(key, None)
        else:
            self._store(key, Entry(expires, value))

    # -- the public operations ------------------------------------------------------------------

    def get(self, key: str) -> Any:
        entry = self._live(key)
        if entry is None:
            self.counts["misses"] += 1
            return None
        # a stored None reads like a miss, and counts as one (docs/contract.md), and no use
        if entry.value is None:
            self.counts["misses"] += 1
            return None
        self._use(key)
        self.counts["hits"] += 1
        return entry.value

    def set(self, key: str, value: Any, timeout: Any = None) -> bool:
        self._write(key, value, self._expiry(timeout))
        return True

    def add(self, key: str, value: Any, timeout: Any = None) -> bool:
        if self._live(key) is not None:
            return False
        self._write(key, value, self._expiry(timeout))
        return True

    def delete(self, key: str) -> bool:
        if self._live(key) is None:
            return False
        del self.entries[key]
        self.counts["deletes"] += 1
        return True

    def has(self, key: str) -> bool:
        return self._live(key) is not None

    def clear(self) -> bool:
        self.entries.clear()
        return True

    def get_many(self, *keys: str) -> list[Any]:
        return [self.get(key) for key in keys]

    def set_many(self, mapping: dict[str, Any], timeout: Any = None) -> list[str]:
        expires = self._expiry(timeout)
        for key, value in mapping.items():
            self._write(key, value, expires)
        return list(mapping)

    def delete_many(self, *keys: str) -> list[str]:
        return [key for key in keys if self.delete(key)]

    def inc(self, key: str, delta: int = 1) -> int:
        entry = self._live(key)
        if entry is None:
            value, expires = delta, self._expiry(None)
        else:
            if type(entry.value) is not int:
                raise TypeError(f"{key!r} holds no int")
            value, expires = entry.value + delta, entry.expires
        self._write(key, value, expires)
        return value

    def dec(self, key: str, delta: int = 1) -> int:
        return self.inc(key, -delta)

    def get_or_set(self, key: str, factory: Callable[[], Any], timeout: Any = None) -> Any:
        entry = self._live(key)
        if entry is not None and entry.value is not None:
            self._use(key)
            self.counts["hits"] += 1
            return entry.value
        self.counts["misses"] += 1  # one lookup, and it ran the factory
        value = factory()
        if value is not None:
            self.set(key, value, timeout)
        return value


def runs(model: Model, operation: Callable[[Model], Any]) -> list[tuple[str, Model]]:
    """Every (outcome, state after) that ``operation`` may give from ``model``."""
    found: list[tuple[str, Model]] = []
    scripts: list[list[int]] = [[]]
    while scripts:
        script = scripts.pop()
        twin = model.copy()
        twin.script = script
        found.append((outcome(partial(operation, twin)), twin))
        for depth in range(len(script), len(twin.made)):
            prefix = [chosen for chosen, _ in twin.made[:depth]]
            scripts.extend([*prefix, other] for other in range(1, twin.made[depth][1]))
    return found


def outcome(call: Callable[[], Any]) -> str:
    """What a call answered, exactly (``True`` is not ``1``), or the type it raised."""
    try:
        return f"returned {call()!r}"
    except Exception as err:
        return f"raised {type(err).__name__}"


class SimpleCacheModel(RuleBasedStateMachine):
    """Each rule calls the cache, then the model, and compares outcomes and stats.

    The model may hold several states at once, one per choice the docs leave open; a step
    keeps those that answer as the cache did and have its stats, and fails if none does.
    """

    def __init__(self, serializer: str, secret: str | None, backwards: bool) -> None:
        super().__init__()
        self.serializer, self.secret, self.backwards = serializer, secret, backwards
        self.clock = FakeClock()
        self.models: list[Model] = []

    @initialize(threshold=THRESHOLDS, default_timeout=DEFAULT_TIMEOUTS)
    def build(self, threshold: int, default_timeout: float) -> None:
        self.cache = SimpleCache(
            threshold,
            default_timeout,
            serializer=self.serializer,
            secret=self.secret,
            clock=self.clock,
        )
        self.models = [Model(threshold, default_timeout, self.clock)]

    def step(self, got: str, operation: Callable[[Model], Any], call: str) -> None:
        """Keep the model states that answer ``got`` and have the cache's stats."""
        stats = self.cache.stats()
        kept: dict[str, Model] = {}
        seen: list[str] = []
        for model in self.models:
            for expected, after in runs(model, operation):
                seen.append(f"{expected} with {after.stats()}")
                if expected == got and after.stats() == stats:
                    kept.setdefault(after.key(), after)
        assert kept, f"{call}: the cache {got} with {stats}; the model: {seen}"
        self.models = list(kept.values())

    def both(self, name: str, *args: Any) -> None:
        got = outcome(lambda: getattr(self.cache, name)(*args))
        self.step(got, lambda model: getattr(model, name)(*args), f"{name}{args!r}")

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        self.both("get", key)

    @rule(key=KEYS, value=VALUES, timeout=TIMEOUTS)
    def set(self, key: str, value: Any, timeout: Any) -> None:
        self.both("set", key, value, timeout)

    @rule(key=KEYS, value=VALUES, timeout=TIMEOUTS)
    def add(self, key: str, value: Any, timeout: Any) -> None:
        self.both("add", key, value, timeout)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        self.both("delete", key)

    @rule(key=KEYS)
    def has(self, key: str) -> None:
        self.both("has", key)

    @rule(key=KEYS, delta=DELTAS)
    def inc(self, key: str, delta: int) -> None:
        self.both("inc", key, delta)

    @rule(key=KEYS, delta=DELTAS)
    def dec(self, key: str, delta: int) -> None:
        self.both("dec", key, delta)

    @rule(keys=st.lists(KEYS, max_size=4))
    def get_many(self, keys: list[str]) -> None:
        self.both("get_many", *keys)

    @rule(mapping=st.dictionaries(KEYS, VALUES, max_size=4), timeout=TIMEOUTS)
    def set_many(self, mapping: dict[str, Any], timeout: Any) -> None:
        self.both("set_many", mapping, timeout)

    @rule(keys=st.lists(KEYS, max_size=4))
    def delete_many(self, keys: list[str]) -> None:
        self.both("delete_many", *keys)

    @rule()
    def clear(self) -> None:
        self.both("clear")

    @rule(key=KEYS, value=VALUES, timeout=TIMEOUTS)
    def get_or_set(self, key: str, value: Any, timeout: Any) -> None:
        def calling(target: SimpleCache | Model) -> tuple[Any, int]:
            calls = []

            def factory() -> Any:
                calls.append(key)
                return value

            return target.get_or_set(key, factory, timeout), len(calls)

        got = outcome(lambda: calling(self.cache))
        self.step(got, calling, f"get_or_set({key!r})")

    @rule(default_timeout=st.sampled_from([0, 300, 300, 1, 2.5, 30, -1, -0.5]))
    def reassign_default_timeout(self, default_timeout: float) -> None:
        self.cache.default_timeout = default_timeout
        for model in self.models:
            model.default_timeout = default_timeout

    @rule(seconds=STEPS)
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(data=st.data())
    def advance_to_an_expiry(self, data: st.DataObject) -> None:
        instants = sorted({e.expires for m in self.models for e in m.entries.values() if e.expires})
        if not self.backwards:
            instants = [t for t in instants if t >= self.clock.now]
        if instants:
            self.clock.now = data.draw(st.sampled_from(instants))

    @precondition(lambda self: self.backwards)
    @rule(seconds=STEPS)
    def go_back(self, seconds: float) -> None:
        self.clock.now -= seconds

    @invariant()
    def stats_agree_and_threshold_holds(self) -> None:
        if self.models:
            assert len(self.cache) <= self.cache.threshold


@pytest.mark.parametrize("backwards", [False, True], ids=["monotonic", "backwards"])
@pytest.mark.parametrize(
    ("serializer", "secret"),
    [("pickle", None), ("json", None), ("pickle", "model-secret"), ("json", "model-secret")],
    ids=["pickle", "json", "pickle-signed", "json-signed"],
)
def test_simple_cache_follows_the_model(
    serializer: str, secret: str | None, backwards: bool
) -> None:
    # MODEL_EXAMPLES=2000 for a longer hunt; the default keeps the file near 30 s
    examples = int(os.environ.get("MODEL_EXAMPLES", "300")) // (3 if backwards else 1)
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: SimpleCacheModel(serializer, secret, backwards),
        settings=settings(
            max_examples=examples,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_a_clock_going_back_revives_held_entries_and_keeps_the_threshold(
    clock: FakeClock,
) -> None:
    cache = SimpleCache(threshold=3, clock=clock)
    cache.set_many({"a": 1, "b": 2, "c": 3}, timeout=5)
    clock.advance(10)  # all three expired, still held
    clock.advance(-20)  # before their instant again: live, as their expiry is absolute
    assert cache.get_many("a", "b", "c") == [1, 2, 3]
    clock.advance(30)
    cache.set("d", 4, timeout=1)  # one expired entry goes for it, the others stay held
    clock.advance(-1000)
    for key in "efgh":
        cache.set(key, 0, timeout=-1 if key == "h" else 3)
        assert len(cache) <= 3
    assert cache.stats()["size"] == len(cache) == 3
    assert cache.get_many("f", "g", "h") == [0, 0, None]


def test_overwriting_an_expired_entry_still_held_evicts_nothing(clock: FakeClock) -> None:
    cache = SimpleCache(threshold=2, clock=clock)
    cache.set("a", 1, timeout=5)
    cache.set("b", 2, timeout=0)
    clock.advance(5)  # "a" expires at this very instant
    assert cache.set("a", 3, timeout=5)
    assert cache.get_many("a", "b") == [3, 2]
    assert cache.stats()["evictions"] == 0
