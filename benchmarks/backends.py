"""Every backend with every serializer, and get_many(100) against 100 single gets.

Caches are built the way users build them, with ``from_url``; an engine backend that is not
there (yet) is listed as missing and the others still run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.engines import MissingEngine
from benchmarks.payloads import FLAT
from benchmarks.report import (
    Context,
    SectionResult,
    Target,
    fmt_ns,
    fmt_ratio,
    new_figure,
    save_figure,
)
from benchmarks.timing import Case, Timing, call_loop, compare
from cacheplug import BaseCache

__all__ = ["BACKENDS", "backend_matrix_section", "get_many_section", "per_backend"]

BACKENDS = ("simple", "null", "file", "redis", "memcached")
SERIALIZERS = ("pickle", "json", "msgpack")
OPS = ("get hit", "set", "get miss")
BATCH = 100
MANY_GOAL = 20.0  # issue 5: get_many(100) at least this many times faster than 100 gets


def calls_per_repeat(ctx: Context, backend: str) -> int:
    """Operations per repeat: many for memory, fewer for a disk or a network round trip."""
    if backend in ("simple", "null"):
        return ctx.scale(5_000, 100)
    # short repeats, many of them: a round trip shares 2 cores with the server and whatever
    # else runs, so the minimum needs many chances to catch an undisturbed stretch
    return ctx.scale(100, 10)


def per_backend(
    ctx: Context,
    section: SectionResult,
    backends: tuple[str, ...],
    run: Callable[[str], None],
) -> list[str]:
    """Run ``run(backend)`` for each backend; the ones missing are noted in the section."""
    missing = []
    for backend in backends:
        ctx.tick(f"{section.key}: {backend}")
        try:
            run(backend)
        except MissingEngine as err:
            missing.append(backend)
            section.add(f"- **{backend}: not measured**: {err}")
    if missing:
        section.add("")
    return missing


def _op_cases(caches: dict[str, BaseCache], op: str, number: int) -> dict[str, Case]:
    if op == "get hit":
        return {name: Case(call_loop(c.get, "hit"), number) for name, c in caches.items()}
    if op == "set":
        return {name: Case(call_loop(c.set, "hit", FLAT), number) for name, c in caches.items()}
    return {name: Case(call_loop(c.get, "missing"), number) for name, c in caches.items()}


def backend_matrix_section(ctx: Context) -> SectionResult:
    """Per-operation latency of every backend with every serializer (the flat user dict)."""
    section = SectionResult("backends", "Per-operation latency: every backend x serializer")
    repeats = ctx.scale(15, 2)
    results: dict[str, dict[str, dict[str, Timing]]] = {}

    def run(backend: str) -> None:
        caches = {
            s: ctx.engines.cache(backend, serializer=s, key_prefix=f"m-{s}:") for s in SERIALIZERS
        }
        for cache in caches.values():
            cache.set("hit", FLAT)
        number = calls_per_repeat(ctx, backend)
        results[backend] = {op: compare(_op_cases(caches, op, number), repeats) for op in OPS}
        for cache in caches.values():
            cache.close()

    per_backend(ctx, section, BACKENDS, run)
    if not results:
        return section
    section.add(
        'Built with `from_url("<scheme>://...?serializer=<name>&key_prefix=m-<name>:")` (on '
        "memcached a key_prefix adds a namespace token to every call); value: the flat user "
        "dict; "
        f"minimum of {repeats} interleaved repeats. SimpleCache skips pickling builtins "
        "(pickle column only); NullCache encodes on set and stores nothing.",
        "",
    )
    section.table(
        ["backend", "operation", *SERIALIZERS],
        [
            (backend, op, *(fmt_ns(by_op[op][s].best_ns) for s in SERIALIZERS))
            for backend, by_op in results.items()
            for op in OPS
        ],
    )
    figure = new_figure(9, 4)
    for index, op in enumerate(("get hit", "set"), start=1):
        axes = figure.add_subplot(1, 2, index)
        width = 0.8 / len(SERIALIZERS)
        for offset, serializer in enumerate(SERIALIZERS):
            axes.bar(
                [i + offset * width for i in range(len(results))],
                [results[b][op][serializer].best_ns / 1e3 for b in results],
                width,
                label=serializer,
            )
        axes.set_xticks([i + width for i in range(len(results))], list(results))
        axes.set_yscale("log")
        axes.set_ylabel("µs per operation (log)")
        axes.set_title(op)
        axes.legend(fontsize="small")
    save_figure(figure, ctx, section, "backend_latency.png")
    return section


def _batch_cases(cache: BaseCache, keys: list[str], number: int) -> dict[str, Case]:
    get, get_many = cache.get, cache.get_many

    def singles(n: int) -> None:
        for _ in range(n):
            for key in keys:
                get(key)

    return {
        f"get_many({BATCH})": Case(call_loop(get_many, *keys), number),
        f"{BATCH} x get": Case(singles, number),
    }


def get_many_section(ctx: Context) -> SectionResult:
    """One ``get_many`` of 100 keys against 100 ``get`` calls, per backend."""
    section = SectionResult("get_many", f"get_many({BATCH}) vs {BATCH} single gets")
    # engines: a repeat is one get_many against 100 gets; loopback latency here swings by
    # 3x with the machine's load, so many repeats let both minima come from the same state
    repeats = ctx.scale(60, 2)
    keys = [f"many{i}" for i in range(BATCH)]
    rows: list[tuple[Any, ...]] = []

    def run(backend: str) -> None:
        cache = ctx.engines.cache(backend, serializer="pickle")
        cache.set_many(dict.fromkeys(keys, FLAT))
        number = max(1, calls_per_repeat(ctx, backend) // BATCH)
        timings = compare(_batch_cases(cache, keys, number), repeats)
        many, single = timings[f"get_many({BATCH})"], timings[f"{BATCH} x get"]
        if backend in ("redis", "memcached"):
            speedup = single.best_ns / many.best_ns
            section.highlights.append(
                f"{backend}: get_many({BATCH}) is {fmt_ratio(speedup)} "
                f"faster than {BATCH} single gets"
            )
            section.targets.append(
                Target(
                    f"{backend} get_many({BATCH}) vs {BATCH} single gets",
                    f">= {MANY_GOAL:g}x faster",
                    fmt_ratio(speedup),
                    speedup >= MANY_GOAL,
                )
            )
        rows.append(
            (
                backend,
                fmt_ns(many.best_ns),
                fmt_ns(single.best_ns),
                fmt_ratio(single.best_ns / many.best_ns),
            )
        )
        cache.close()

    per_backend(ctx, section, ("simple", "file", "redis", "memcached"), run)
    section.add("Time for all 100 keys (pickle, flat user dict); speedup = singles / get_many.", "")
    section.table(["backend", f"get_many({BATCH})", f"{BATCH} x get", "speedup"], rows)
    return section
