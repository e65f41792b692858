"""get_or_set, memoize and BaseCache's defaults cut short at every point a signal can reach
(session 21, helper M).

The cutters of tests/cutting.py (a trace raising ``Cut`` at the N-th line start, or the N-th
instruction where a signal handler's exception can show up) applied to the shared layer:
get_or_set and its single flight, sync and async memoize, invalidate, BaseCache's default
inc/dec and batch calls over a plugin author's minimal dict backend, NullCache, and SimpleCache
signed with a secret. After each cut: no flight left behind, the flight locks free, later
callers in other threads (or tasks) not hung and served by one factory call, the cut call's
factory run at most once, the counters never negative and agreeing with the lookups made, the
next calls right.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cutting import Cut, CutResult, call_cut_at, cut_at_instruction
from test_interrupt_everywhere import MADE, NEW, lock_is_free, next_calls_work

from cacheplug import BaseCache, NullCache, SimpleCache
from cacheplug.core.arguments import check_key
from cacheplug.core.timeouts import Timeout

HANG = 10.0  # bound on another thread's or task's call: only a hang reaches it
MOST_CUTS = 1500


class DictCache(BaseCache):
    """A plugin author's backend: the six abstract methods over a dict, every default kept."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._data: dict[str, bytes] = {}
        self.lookups = 0  # get calls, counted here (outside cacheplug: never cut)

    def get(self, key: str) -> Any:
        check_key(key)
        self.lookups += 1
        payload = self._data.get(key)
        value = None if payload is None else self._decode_or_miss(key, payload)
        if value is None:
            self._misses += 1
        else:
            self._hits += 1
        return value

    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        check_key(key)
        self._data[key] = self._encode(value, key)
        self._sets += 1
        return True

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        if key in self._data:
            return False
        return self.set(key, value, timeout)

    def delete(self, key: str) -> bool:
        check_key(key)
        if self._data.pop(key, None) is None:
            return False
        self._deletes += 1
        return True

    def has(self, key: str) -> bool:
        check_key(key)
        return key in self._data

    def clear(self) -> bool:
        self._data.clear()
        return True


class Factory:
    """A factory counting its calls."""

    def __init__(self, value: Any = MADE) -> None:
        self.calls = 0
        self.value = value

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.value

    def __repr__(self) -> str:  # what memoize names it by: no address
        return f"Factory({self.value!r})"


@dataclass
class Setup:
    """A prepared cache, with the memoized function and the factory its scenario calls."""

    cache: Any
    factory: Factory = field(default_factory=Factory)
    memo: Any = None


def make_cache(kind: str) -> Any:
    secret = "s3cret-for-signing" if kind.endswith("secret") else None
    if kind.startswith("dict"):
        return DictCache(secret=secret)
    if kind.startswith("simple"):
        return SimpleCache(secret=secret)
    return NullCache(secret=secret)


def prepare(kind: str, scenario: str) -> Setup:
    setup = Setup(make_cache(kind))
    cache = setup.cache
    setup.memo = cache.memoize()(setup.factory)
    cache.set("k", NEW)
    cache.set("n", 5)
    if scenario.endswith("_hit"):
        cache.set("g", MADE)
        setup.memo(3)
    setup.factory.calls = 0
    return setup


def reentrant(setup: Setup) -> Any:
    # the factory asks for its own key again in the same thread: the flight is re-entrant
    def factory() -> Any:
        setup.factory()
        return setup.cache.get_or_set("g", lambda: MADE)

    return setup.cache.get_or_set("g", factory)


def raising(setup: Setup) -> Any:
    def factory() -> Any:
        setup.factory()
        raise ValueError("the factory failed")

    try:
        return setup.cache.get_or_set("g", factory)
    except ValueError:
        return None


#: name -> (the call, what each watched key may hold after a cut, kinds of cache it runs on)
SCENARIOS: dict[str, tuple[Callable[[Setup], Any], dict[str, list[Any]], str]] = {
    "get_or_set_miss": (
        lambda s: s.cache.get_or_set("g", s.factory),
        {"g": [None, MADE]},
        "dict simple null",
    ),
    "get_or_set_hit": (
        lambda s: s.cache.get_or_set("g", s.factory),
        {"g": [MADE]},
        "dict simple",
    ),
    "get_or_set_reentrant": (reentrant, {"g": [None, MADE]}, "dict simple"),
    "get_or_set_raising": (raising, {"g": [None]}, "dict simple"),
    "memoize_miss": (lambda s: s.memo(3), {}, "dict simple null"),
    "memoize_hit": (lambda s: s.memo(3), {}, "dict simple"),
    "invalidate": (lambda s: s.memo.invalidate(3), {}, "dict simple"),
    "inc": (lambda s: s.cache.inc("n", 3), {"n": [5, 8]}, "dict"),
    "dec": (lambda s: s.cache.dec("n", 2), {"n": [5, 3]}, "dict"),
    "inc_new": (lambda s: s.cache.inc("fresh"), {"fresh": [None, 1]}, "dict"),
    "get_many": (lambda s: s.cache.get_many("k", "n", "nope"), {"k": [NEW]}, "dict"),
    "get_dict": (lambda s: s.cache.get_dict("k", "nope"), {"k": [NEW]}, "dict"),
    "set_many": (
        lambda s: s.cache.set_many({"k": MADE, "m": MADE}),
        {"k": [NEW, MADE], "m": [None, MADE]},
        "dict",
    ),
    "delete_many": (lambda s: s.cache.delete_many("k", "n"), {"k": [NEW, None]}, "dict"),
}
#: lookups a whole call makes (others: 1 or none)
LOOKUPS = {"get_many": 3, "get_dict": 2, "get_or_set_reentrant": 2}
LOOKING = {"get_or_set", "memoize", "get_many", "get_dict", "inc", "dec"}


def lookups(cache: Any) -> int:
    stats = cache.stats()
    return int(stats["hits"] + stats["misses"])


def flights_left(cache: Any) -> list[str]:
    """What a cut left in the cache's single flights; checked from this thread, no waiting."""
    if cache._flights_lock.locked():
        return ["the flights' lock stays held: every later miss hangs"]
    problems = []
    for key, flight in list(cache._flights.items()):
        lock, count = flight[:2]
        held = " and its lock held by the cut thread" if lock._is_owned() else ""
        problems.append(f"a flight of {key!r} stays behind (count {count}){held}")
    return problems


def later_callers(cache: Any, key: str, value: Any) -> list[str]:
    """Three threads at once get_or_set ``key``: none hangs, one factory call at most serves
    them (none when ``key`` holds a value; on a NullCache, a thread that waited for another's
    call is handed its result, one that came after calls again)."""
    calls = range(1, 4) if isinstance(cache, NullCache) else [0] if cache.has(key) else [1]
    made = Factory(value)
    gate = threading.Event()
    answers: list[Any] = []

    def call() -> None:
        gate.wait(HANG)
        answers.append(cache.get_or_set(key, made))

    threads = [threading.Thread(target=call, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(HANG)
    if any(thread.is_alive() for thread in threads):
        return [f"get_or_set({key!r}) from other threads hung"]
    problems = []
    if answers != [value] * 3:
        problems.append(f"other threads got {answers!r}")
    if made.calls not in calls:
        problems.append(f"other threads ran the factory {made.calls} times")
    return problems


def counters(cache: Any, before: int, most: int) -> list[str]:
    """The counters are never negative, and the cut call counted at most ``most`` lookups
    (a lookup it made before the cut may be counted or not, never twice)."""
    stats = cache.stats()
    negative = {name: n for name, n in stats.items() if n < 0}
    if negative:
        return [f"negative counters {negative}"]
    made = lookups(cache) - before
    if not 0 <= made <= most:
        return [f"the cut call counted {made} lookups, not 0 to {most}"]
    return []


def values_left(cache: Any, allowed: dict[str, list[Any]]) -> list[str]:
    problems = []
    for key, values in allowed.items():
        value = cache.get(key)
        if value not in values:
            problems.append(f"{key!r} holds {value!r}, not one of {values!r}")
    return problems


def exact_counts(cache: Any) -> list[str]:
    """The next calls count exactly what they look up (DictCache counts its gets itself)."""
    if not isinstance(cache, DictCache):
        return []
    before, gets = lookups(cache), cache.lookups
    cache.get_or_set("count-me", lambda: 1)
    cache.get_or_set("count-me", lambda: 1)
    cache.get_many("count-me", "nothing")
    made = lookups(cache) - before
    if made != 4:
        return [f"4 lookups after the cut counted {made} ({cache.lookups - gets} gets)"]
    return []


def check(name: str, setup: Setup, before: int, outcome: CutResult) -> list[str]:
    cache = setup.cache
    problems = flights_left(cache)
    if problems:  # later callers would hang, or wait for nothing
        return problems
    looking = any(name.startswith(prefix) for prefix in LOOKING)
    problems += counters(cache, before, LOOKUPS.get(name, 1) if looking else 0)
    if setup.factory.calls > 1:
        problems.append(f"the cut call ran the factory {setup.factory.calls} times")
    problems += values_left(cache, SCENARIOS[name][1])
    if name.startswith("memoize") or name == "invalidate":
        problems += later_callers(cache, setup.memo.cache_key(3), MADE)
    problems += later_callers(cache, "g", MADE)
    problems += later_callers(cache, "other", NEW)
    problems += flights_left(cache)
    if not lock_is_free(getattr(cache, "_lock", threading.Lock())):
        problems.append("the cache's lock stays held")
    elif not isinstance(cache, NullCache):  # which stores nothing
        problems += next_calls_work(cache)
    problems += exact_counts(cache)
    return problems


CUTTERS = {"line": call_cut_at, "instruction": cut_at_instruction}


def cut_each(name: str, kind: str, how: str) -> tuple[int, list[str]]:
    """Cut scenario ``name`` on a ``kind`` cache at each line in turn; (cut points, problems).

    Stops at the first cut that leaves a hang, as every later one would wait out HANG too.
    """
    run = SCENARIOS[name][0]
    problems: list[str] = []
    for n in range(1, MOST_CUTS + 1):
        setup = prepare(kind, name)
        before = lookups(setup.cache)
        outcome = CUTTERS[how](n, functools.partial(run, setup))
        if not outcome.cut:
            return n - 1, problems
        found = [] if outcome.escaped else ["swallowed"]
        found += check(name, setup, before, outcome)
        problems += [f"cut at {outcome.where} (#{n}): {p}" for p in found]
        if any("hung" in p or "held" in p for p in found):
            return n, problems
    raise AssertionError(f"more than {MOST_CUTS} line events")


def sync_cases() -> Iterator[Any]:
    for name, (_, _, kinds) in SCENARIOS.items():
        for base in kinds.split():
            for kind in [base, f"{base}-secret"] if base != "null" else [base]:
                for how in CUTTERS:
                    yield pytest.param(name, kind, how, id=f"{name}-{kind}-{how}")


@pytest.mark.parametrize(("name", "kind", "how"), list(sync_cases()))
def test_shared_layer_cut_short_anywhere(name: str, kind: str, how: str) -> None:
    cuts, problems = cut_each(name, kind, how)
    assert cuts > 0
    assert not problems, "\n".join(problems)


# -- async memoize -----------------------------------------------------------------------------


@dataclass
class AsyncRun:
    """Three tasks of one loop calling one async memoized function with the same argument."""

    cache: Any
    # not in the repr: memoizing self.slow keys each call by the repr of self
    calls: int = field(default=0, repr=False)
    answers: list[Any] = field(default_factory=list, repr=False)
    hung: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.memo = self.cache.memoize()(self.slow)
        self.gate: asyncio.Event | None = None

    async def slow(self, n: int) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return {"n": n}

    async def main(self) -> None:
        self.gate = asyncio.Event()
        try:
            tasks = [asyncio.create_task(self.memo(3)) for _ in range(3)]
            for _ in range(20):  # the leader reaches the gate, the others its flight
                await asyncio.sleep(0)
        finally:  # a cut in memoize's sync part raises here: the later calls find no gate
            self.gate.set()
            self.gate = None
        # nothing but these tasks runs on the loop: still pending after this many turns, they
        # wait for what never comes (no clock involved)
        for _ in range(1000):
            if all(task.done() for task in tasks):
                break
            await asyncio.sleep(0)
        else:
            self.hung = True
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=HANG)
            return
        self.answers = [task.exception() or task.result() for task in tasks]
        cut = [answer for answer in self.answers if isinstance(answer, Cut)]
        if cut:
            raise cut[0]


def check_async(run: AsyncRun, before: int) -> list[str]:
    if run.hung:
        return ["tasks waiting on the cut call's flight hung"]
    problems = flights_left(run.cache)
    if run.memo._flights:
        problems.append(f"an async flight stays behind: {run.memo._flights!r}")
    served = [a for a in run.answers if not isinstance(a, Cut)]
    if run.answers and (served != [{"n": 3}] * len(served) or len(served) < 2):
        problems.append(f"the tasks got {run.answers!r}")
    if run.calls > 2:  # the cut leader's call, and one a waiter makes in its place
        problems.append(f"the function ran {run.calls} times")
    negative = {k: v for k, v in run.cache.stats().items() if v < 0}
    if negative:
        problems.append(f"negative counters {negative}")
    if run.answers and not 2 <= lookups(run.cache) - before <= 3:
        problems.append(f"three calls, one cut, counted {lookups(run.cache) - before} lookups")
    calls = run.calls
    again = asyncio.run(asyncio.wait_for(run.memo(3), HANG))
    other = asyncio.run(asyncio.wait_for(run.memo(4), HANG))
    if again != {"n": 3} or other != {"n": 4} or run.calls - calls > 2:
        problems.append(f"the next calls got {again!r}, {other!r}")
    return problems + next_calls_work(run.cache)


# a cut in memoize's sync part drops the coroutine it made, never awaited
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
@pytest.mark.parametrize("how", list(CUTTERS))
@pytest.mark.parametrize("kind", ["dict", "simple", "simple-secret"])
def test_async_memoize_cut_short_anywhere(kind: str, how: str) -> None:
    problems: list[str] = []
    for n in range(1, MOST_CUTS + 1):
        run = AsyncRun(make_cache(kind))
        before = lookups(run.cache)
        outcome = CUTTERS[how](n, lambda run=run: asyncio.run(run.main()))
        if not outcome.cut:
            break
        found = ([] if outcome.escaped else ["swallowed"]) + check_async(run, before)
        problems += [f"cut at {outcome.where} (#{n}): {p}" for p in found]
        hung = run.hung
        # a dropped coroutine sits in a cycle with the cut's traceback: finalized here, not at
        # some later allocation, where CPython can fail to import warnings to say it was never
        # awaited (a namedtuple's __new__ runs with empty builtins) and reports that instead
        del outcome, run
        gc.collect(1)
        if hung:
            break
    assert n > 1
    assert not problems, "\n".join(problems)
