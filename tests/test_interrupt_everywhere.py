"""SimpleCache calls cut short at every point a signal can reach (session 20, helper I; the
cutters moved to tests/cutting.py in session 21).

Each operation is cut at every line start (``call_cut_at``) and at every instruction where
CPython handles a pending signal (``cut_at_instruction``), on a fresh cache each time. After
each cut the test checks what a user relies on (docs/reliability.md, "a call cut short"): the
cache's locks are free for other threads, each touched entry is its old or its new value,
whole, the structures agree, no flight is left behind, and the next calls work.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import FakeClock
from cutting import CutResult, call_cut_at, cut_at_instruction

from cacheplug import SimpleCache
from cacheplug.backends import simple as simple_backend

CUTTERS = {"lines": call_cut_at, "instructions": cut_at_instruction}

WAIT = 60.0  # bound on any wait for another thread: only a hang reaches it
MOST_CUTS = 2000  # a call with more cut points than this is not what this file is for
CODECS = range(simple_backend._SERIALIZED + 1)  # how an entry's payload reads back

OLD = {"tag": "old", "items": [0, 1]}
NEW = {"tag": "new", "items": [2, 3, 4]}
OLD_M = {"tag": "old-m", "items": [5]}
NEW_M = {"tag": "new-m", "items": [6]}
BYSTANDER = {"tag": "bystander", "items": [7]}
MADE = {"tag": "made", "items": [8]}


def in_thread(call: Callable[[], Any]) -> tuple[bool, Any]:
    """(finished within WAIT, its result or exception) of ``call`` run in another thread."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as err:
            box.append(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(WAIT)
    return (not worker.is_alive(), box[0] if box else None)


@dataclass
class Scenario:
    """One operation on a prepared cache, and what each watched key may hold after a cut."""

    name: str
    run: Callable[[Any], Any]
    allowed: dict[str, list[Any]] = field(default_factory=dict)


def allowed_of(config: str, allowed: dict[str, list[Any]], evicts: bool) -> dict[str, list[Any]]:
    bystander: list[Any] = [BYSTANDER, None] if evicts or config == "full" else [BYSTANDER]
    return {"b": bystander, **allowed}


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("set", lambda c: c.set("k", NEW), {"k": [OLD, NEW]}),
        Scenario("set_scalar", lambda c: c.set("k", 12345), {"k": [OLD, 12345]}),
        Scenario("add_new", lambda c: c.add("a", NEW), {"a": [None, NEW], "k": [OLD]}),
        Scenario("add_existing", lambda c: c.add("k", NEW), {"k": [OLD]}),
        Scenario("inc", lambda c: c.inc("n", 3), {"n": [5, 8]}),
        Scenario("dec", lambda c: c.dec("n", 2), {"n": [5, 3]}),
        Scenario("inc_new", lambda c: c.inc("fresh"), {"fresh": [None, 1]}),
        Scenario("delete", lambda c: c.delete("k"), {"k": [OLD, None]}),
        Scenario("get_many", lambda c: c.get_many("k", "m", "nope"), {"k": [OLD], "m": [OLD_M]}),
        Scenario(
            "set_many",
            lambda c: c.set_many({"k": NEW, "m": NEW_M}),
            {"k": [OLD, NEW], "m": [OLD_M, NEW_M]},
        ),
        Scenario(
            "delete_many", lambda c: c.delete_many("k", "m"), {"k": [OLD, None], "m": [OLD_M, None]}
        ),
        Scenario("clear", lambda c: c.clear(), {"k": [OLD, None], "m": [OLD_M, None]}),
        Scenario("get_or_set", lambda c: c.get_or_set("g", lambda: MADE), {"g": [None, MADE]}),
    ]
}
EVICTING = {"clear"}
CONFIGS = ["plain", "secret", "prefix", "full", "expired"]


def prepare(cache: Any, config: str, clock: FakeClock, room: int) -> None:
    """Fill ``cache`` as ``config`` says; ``room``: its threshold."""
    if config == "full":
        for i in range(room - 4):
            cache.set(f"filler{i}", i)
    if config == "expired":
        for i in range(3):
            cache.set(f"short{i}", i, timeout=10)
    cache.set("b", BYSTANDER)
    cache.set("k", OLD)
    cache.set("m", OLD_M)
    cache.set("n", 5)
    if config == "expired":
        clock.advance(20)


def options(config: str) -> dict[str, Any]:
    if config == "secret":
        return {"secret": "s3cret-for-signing"}
    if config == "prefix":
        return {"key_prefix": "app:"}
    return {}


def cut_everywhere(
    make: Callable[[], tuple[Any, FakeClock]],
    run: Callable[[Any], Any],
    check: Callable[[Any, FakeClock, CutResult], list[str]],
    cutter: Callable[[int, Callable[[], Any]], CutResult] = cut_at_instruction,
) -> tuple[int, list[str]]:
    """Cut ``run`` at each point of ``cutter`` in turn on a fresh cache each time; (cut points,
    problems)."""
    problems: list[str] = []
    for n in range(1, MOST_CUTS + 1):
        cache, clock = make()
        outcome = cutter(n, functools.partial(run, cache))
        if not outcome.cut:
            return n - 1, problems
        if not outcome.escaped:
            problems.append(f"cut at {outcome.where} (#{n}) was swallowed")
        problems.extend(f"cut at {outcome.where} (#{n}): {p}" for p in check(cache, clock, outcome))
        close = getattr(cache, "close", None)
        if close is not None:
            close()
    raise AssertionError(f"more than {MOST_CUTS} cut points")


def checked_values(cache: Any, allowed: dict[str, list[Any]]) -> list[str]:
    problems = []
    for key, values in allowed.items():
        done, value = in_thread(lambda key=key: cache.get(key))  # type: ignore[misc]
        if not done:
            return [f"get({key!r}) from another thread hung"]
        if value not in values:
            problems.append(f"{key!r} holds {value!r}, not one of {values!r}")
    return problems


def next_calls_work(cache: Any) -> list[str]:
    """The next calls on watched and other keys, from another thread: each answers right."""

    def calls() -> list[str]:
        wrong = []
        if cache.set("k", NEW) is not True or cache.get("k") != NEW:
            wrong.append("set/get k")
        if cache.set("z", 1) is not True or cache.inc("z", 2) != 3 or cache.dec("z") != 2:
            wrong.append("set/inc/dec z")
        if cache.add("z", 9) is not False or cache.add("y", NEW_M) is not True:
            wrong.append("add")
        if cache.get_many("y", "z") != [NEW_M, 2]:
            wrong.append("get_many")
        if cache.delete("y") is not True or cache.has("y"):
            wrong.append("delete y")
        if cache.get_or_set("h", lambda: MADE) != MADE:
            wrong.append("get_or_set h")
        return wrong

    done, wrong = in_thread(calls)
    if not done:
        return ["the next calls from another thread hung"]
    if isinstance(wrong, BaseException):
        return [f"the next calls raised {wrong!r}"]
    return [f"the next call went wrong: {w}" for w in wrong]


# -- SimpleCache -----------------------------------------------------------------------------

SIMPLE_ROOM = 12


def make_simple(config: str) -> Callable[[], tuple[Any, FakeClock]]:
    def make() -> tuple[Any, FakeClock]:
        clock = FakeClock()
        cache = SimpleCache(threshold=SIMPLE_ROOM, clock=clock, **options(config))
        prepare(cache, config, clock, SIMPLE_ROOM)
        return cache, clock

    return make


def simple_structure(cache: SimpleCache) -> list[str]:
    """SimpleCache's dict, expiry heap, threshold and counters agree."""
    problems = []
    if len(cache) > cache.threshold:
        problems.append(f"{len(cache)} entries over threshold {cache.threshold}")
    negative = {name: n for name, n in cache.stats().items() if n < 0}
    if negative:
        problems.append(f"negative counters {negative}")
    records: dict[str, float] = {}
    for expires, key in cache._expiries:
        records[key] = min(expires, records.get(key, expires))
    for key, entry in cache._cache.items():
        if type(entry) is not tuple or len(entry) != 3 or entry[1] not in CODECS:
            problems.append(f"{key!r} holds a malformed entry {entry!r}")
        elif entry[0] and records.get(key, entry[0] + 1) > entry[0]:
            problems.append(f"{key!r} expires at {entry[0]} without an expiry record before it")
    return problems


def lock_is_free(lock: Any) -> bool:
    """Whether another thread can take ``lock`` (an RLock this thread still holds: no)."""
    if getattr(lock, "_is_owned", lambda: False)():
        return False

    def take() -> bool:
        if not lock.acquire(timeout=WAIT):
            return False
        lock.release()
        return True

    done, taken = in_thread(take)
    return done and taken is True


def check_simple(
    scenario: Scenario, config: str
) -> Callable[[Any, FakeClock, CutResult], list[str]]:
    def check(cache: Any, clock: FakeClock, outcome: CutResult) -> list[str]:
        if not lock_is_free(cache._lock):
            return ["the cache's lock stays held: every other thread hangs"]
        if not lock_is_free(cache._flights_lock):
            return ["the flights' lock stays held"]
        problems = simple_structure(cache)
        if cache._flights:
            problems.append(f"a flight stays behind: {cache._flights!r}")
        problems += checked_values(
            cache, allowed_of(config, scenario.allowed, scenario.name in EVICTING)
        )
        problems += next_calls_work(cache)
        problems += simple_structure(cache)
        return problems

    return check


def simple_cases() -> Iterator[Any]:
    for name in SCENARIOS:
        for config in CONFIGS:
            for how in CUTTERS:
                yield pytest.param(name, config, how, id=f"{name}-{config}-{how}")


@pytest.mark.parametrize(("name", "config", "how"), list(simple_cases()))
def test_simple_cache_cut_short_anywhere(name: str, config: str, how: str) -> None:
    scenario = SCENARIOS[name]
    cuts, problems = cut_everywhere(
        make_simple(config), scenario.run, check_simple(scenario, config), CUTTERS[how]
    )
    assert cuts > 0
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("how", list(CUTTERS))
@pytest.mark.parametrize("config", CONFIGS)
def test_simple_cache_threshold_lowered_and_cut_short_anywhere(config: str, how: str) -> None:
    def check(cache: Any, clock: FakeClock, outcome: CutResult) -> list[str]:
        if not lock_is_free(cache._lock):
            return ["the cache's lock stays held"]
        return simple_structure(cache) + next_calls_work(cache) + simple_structure(cache)

    def lower(cache: SimpleCache) -> None:
        cache.threshold = 3

    cuts, problems = cut_everywhere(make_simple(config), lower, check, CUTTERS[how])
    assert cuts > 0
    assert not problems, "\n".join(problems)
