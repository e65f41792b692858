"""How every benchmark measures: interleaved, timeit-style repeats with the collector off.

A *case* is a loop that performs ``n`` operations. :func:`compare` runs the cases of one
comparison in turn, rotating their order on every repeat so a slow drift of the machine (a
frequency change, a noisy neighbour) falls on every implementation alike, and keeps the time
per operation of each repeat. The reported figure is the minimum over repeats, as :mod:`timeit`
advises (larger values come from interference, not from the code); the median is kept to show
the spread. For amortized costs every repeat is made long enough to include the periodic
expensive operation, so the minimum cannot pick a repeat that escaped it.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from typing import Any

__all__ = [
    "Case",
    "KeyPool",
    "Timing",
    "call_loop",
    "compare",
    "gc_paused",
    "ratio",
]

Loop = Callable[[int], None]


@dataclass(frozen=True)
class Case:
    """One implementation's loop in a comparison, and how many operations a repeat runs."""

    loop: Loop
    number: int


@dataclass(frozen=True)
class Timing:
    """Nanoseconds per operation over the repeats of one case."""

    best_ns: float
    median_ns: float
    number: int
    repeats: int

    @property
    def ops_per_s(self) -> float:
        return 1e9 / self.best_ns if self.best_ns else float("inf")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Switch the cyclic garbage collector off for the block, as :mod:`timeit` does."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compare(cases: Mapping[str, Case], repeats: int) -> dict[str, Timing]:
    """Time every case ``repeats`` times, interleaved and in a rotating order."""
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    with gc_paused():
        for round_ in range(repeats):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                case = cases[name]
                start = time.perf_counter_ns()
                case.loop(case.number)
                samples[name].append((time.perf_counter_ns() - start) / case.number)
    return {
        name: Timing(
            min(values),
            statistics.median(values),
            cases[name].number,
            repeats,
        )
        for name, values in samples.items()
    }


def call_loop(func: Callable[..., Any], *args: Any) -> Loop:
    """A loop calling ``func(*args)`` ``n`` times, with the same shape for every peer."""
    if len(args) == 1:
        (a,) = args

        def loop1(n: int) -> None:
            for _ in repeat(None, n):
                func(a)

        return loop1
    if len(args) == 2:
        a, b = args

        def loop2(n: int) -> None:
            for _ in repeat(None, n):
                func(a, b)

        return loop2

    def loop(n: int) -> None:
        for _ in repeat(None, n):
            func(*args)

    return loop


class KeyPool:
    """Keys never used before, made ahead of time so the timed loop only takes them."""

    def __init__(self, prefix: str, count: int) -> None:
        self._keys = [f"{prefix}{i}" for i in range(count)]
        self._next = 0

    def take(self, n: int) -> Sequence[str]:
        start, self._next = self._next, self._next + n
        if self._next > len(self._keys):
            raise RuntimeError(f"key pool of {len(self._keys)} exhausted; make it larger")
        return self._keys[start : self._next]


def ratio(ours: Timing, theirs: Timing) -> float:
    """Our time divided by the peer's: below 1 means we are faster."""
    return ours.best_ns / theirs.best_ns
