"""memoize on a hit: cacheplug beside functools.lru_cache, cachetools and Flask-Caching.

Run ``python benchmarks/memoize.py`` (``--quick`` for a smoke run) to print the table; the full
report (``python -m benchmarks --only memoize``) includes the same section.

Each row is one argument shape, each column one memoizer wrapping the same function, timed on
calls whose result is already cached. Peers: ``functools.lru_cache`` (the floor: a C dict
lookup on a tuple of the arguments, in process, never expires), ``cachetools.cached`` on a
``TTLCache`` behind a lock (the thread-safe expiring peer), and Flask-Caching's ``memoize`` on
its ``SimpleCache`` (the peer a Flask app has). The first two hash the arguments, so they cannot
take a dict argument. No target: this section informs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import functools
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import cachetools

from benchmarks.report import Context, SectionResult, fmt_ns, fmt_ratio, markdown_table
from benchmarks.timing import Case, Loop, Timing, compare, ratio
from cacheplug import SimpleCache

__all__ = ["SHAPES", "Shape", "main", "memoize_section", "memoizers"]

OURS = "cacheplug"
SIZE = 10_000
TIMEOUT = 300
UNHASHABLE = "n/a"

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def memoizers() -> dict[str, tuple[Decorator, int]]:
    """Each memoizer by name, with the calls per repeat that suit its speed.

    Every decorated function gets a store of its own in the peers that key by arguments
    alone (lru_cache, cachetools), as each Flask-Caching and cacheplug function has a key
    namespace of its own.
    """
    from flask import Flask
    from flask_caching import Cache

    ours = SimpleCache(SIZE, default_timeout=TIMEOUT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        flask_cache = Cache(
            Flask("memoize-benchmark"),
            config={
                "CACHE_TYPE": "SimpleCache",
                "CACHE_THRESHOLD": SIZE,
                "CACHE_DEFAULT_TIMEOUT": TIMEOUT,
            },
        )

    def ttl_cached(func: Callable[..., Any]) -> Callable[..., Any]:
        store: cachetools.TTLCache[Any, Any] = cachetools.TTLCache(SIZE, TIMEOUT)
        wrapped: Callable[..., Any] = cachetools.cached(store, lock=threading.Lock())(func)
        return wrapped

    return {
        OURS: (ours.memoize(), 2_000),
        "lru_cache": (functools.lru_cache(maxsize=SIZE), 20_000),
        "cachetools+lock": (ttl_cached, 10_000),
        "Flask-Caching": (flask_cache.memoize(), 200),
    }


# -- the argument shapes: each builds its function with a memoizer and a loop calling it ------


def _no_args(decorate: Decorator) -> Loop:
    @decorate
    def settings() -> dict[str, int]:
        return {"workers": 4}

    def loop(n: int) -> None:
        for _ in repeat(None, n):
            settings()

    return loop


def _two_ints(decorate: Decorator) -> Loop:
    @decorate
    def area(width: int, height: int) -> int:
        return width * height

    def loop(n: int) -> None:
        for _ in repeat(None, n):
            area(640, 480)

    return loop


def _str_and_kwarg(decorate: Decorator) -> Loop:
    @decorate
    def greeting(name: str, punctuation: str = ".") -> str:
        return f"Hello, {name}{punctuation}"

    def loop(n: int) -> None:
        for _ in repeat(None, n):
            greeting("world", punctuation="!")

    return loop


def _method(decorate: Decorator) -> Loop:
    class Account:
        def __init__(self, number: int) -> None:
            self.number = number

        def __repr__(self) -> str:
            return f"Account({self.number})"

        @decorate
        def balance(self, year: int) -> int:
            return self.number * year

    account = Account(42)

    def loop(n: int) -> None:
        for _ in repeat(None, n):
            account.balance(2024)

    return loop


def _tuple_and_dict(decorate: Decorator) -> Loop:
    @decorate
    def search(tags: tuple[str, ...], filters: dict[str, Any]) -> list[str]:
        return sorted(tags)

    tags = ("python", "cache")
    filters = {"lang": "en", "limit": 20}

    def loop(n: int) -> None:
        for _ in repeat(None, n):
            search(tags, filters)

    return loop


@dataclass(frozen=True)
class Shape:
    """One row: a typical call of a memoized function."""

    label: str
    call: str
    build: Callable[[Decorator], Loop]


SHAPES = (
    Shape("no arguments", "settings()", _no_args),
    Shape("two ints", "area(640, 480)", _two_ints),
    Shape("str and a kwarg", 'greeting("world", punctuation="!")', _str_and_kwarg),
    Shape("method, object with __repr__", "account.balance(2024)", _method),
    Shape(
        "tuple and dict",
        'search(("python", "cache"), {"lang": "en", "limit": 20})',
        _tuple_and_dict,
    ),
)


def _time_shape(shape: Shape, scale: Callable[[int], int], repeats: int) -> dict[str, Timing]:
    """ns per hit of each memoizer that can take the shape's arguments."""
    cases = {}
    for name, (decorate, number) in memoizers().items():
        loop = shape.build(decorate)
        try:
            loop(1)  # the miss that stores the result
        except TypeError:  # unhashable arguments
            if name == OURS:
                raise
            continue
        cases[name] = Case(loop, scale(number))
    return compare(cases, repeats)


def memoize_section(ctx: Context) -> SectionResult:
    """ns per call of a memoized function on a hit, per argument shape, beside the peers."""
    section = SectionResult(
        "memoize", "memoize on a hit: cacheplug vs lru_cache, cachetools, Flask-Caching"
    )
    repeats = ctx.scale(40, 2)
    peers = [name for name in memoizers() if name != OURS]
    names = [OURS, *peers]
    rows: list[tuple[Shape, dict[str, Timing]]] = []
    for shape in SHAPES:
        ctx.tick(f"memoize: {shape.label}")
        rows.append((shape, _time_shape(shape, lambda n: ctx.scale(n, 20), repeats)))

    def cell(timings: dict[str, Timing], name: str) -> str:
        return fmt_ns(timings[name].best_ns) if name in timings else UNHASHABLE

    def versus(timings: dict[str, Timing], peer: str) -> str:
        if peer not in timings:
            return UNHASHABLE
        return fmt_ratio(ratio(timings[OURS], timings[peer]))

    section.add(
        f"ns per call on a hit, minimum of {repeats} interleaved repeats; cacheplug on "
        f"`SimpleCache({SIZE:,})` with the pickle serializer, the result read back as a private "
        "copy; lru_cache and cachetools return the stored object itself. Per call, cacheplug "
        "binds the arguments to the signature and builds its key from their reprs (a key that "
        "holds across processes and engines, refusing reprs that show an address); "
        "Flask-Caching also reads its per-function version key from the cache. "
        f"{UNHASHABLE}: the peer hashes the arguments and cannot take a dict.",
        "",
    )
    section.table(
        ["arguments", "call", *names, *(f"cacheplug/{peer}" for peer in peers)],
        [
            (
                shape.label,
                f"`{shape.call}`",
                *(cell(timings, name) for name in names),
                *(versus(timings, peer) for peer in peers),
            )
            for shape, timings in rows
        ],
    )
    two_ints = next(timings for shape, timings in rows if shape is SHAPES[1])
    section.highlights.append(
        f"memoize hit, two ints: cacheplug {fmt_ns(two_ints[OURS].best_ns)}, "
        + ", ".join(f"{versus(two_ints, peer)} {peer}'s time" for peer in peers)
    )
    return section


def main(argv: Sequence[str] | None = None) -> None:
    """Print the memoize comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke run")
    args = parser.parse_args(argv)
    ctx = Context(out_dir=Path("."), quick=args.quick, tick=lambda label: print(f"# {label}"))
    section = memoize_section(ctx)
    print(f"\n## {section.title}\n")
    print("\n".join(section.body))
    print("\n".join(markdown_table(["highlight"], [(h,) for h in section.highlights])))


if __name__ == "__main__":
    main()
