"""SimpleCache beside cachelib's SimpleCache and cachetools' TTLCache, in one process.

Run ``python benchmarks/simple.py`` (``--quick`` for a smoke run) to print the tables; the full
report (``python -m benchmarks``) includes the same sections, with 1,000,000 entries added to the
set-into-full comparison.

Peers: cachelib's ``SimpleCache`` (the drop-in target, pickles every value), ``cachetools.TTLCache``
behind a lock (a fair thread-safe peer) and bare (unsafe to share between threads; shown as the
floor a plain dict-based LRU reaches). cachetools keeps references and copies nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
from collections.abc import Sequence
from itertools import repeat
from typing import Any

import cachelib

from benchmarks.payloads import FLAT, NESTED
from benchmarks.peers import simple_peers
from benchmarks.report import (
    Context,
    SectionResult,
    Target,
    fmt_ns,
    fmt_ratio,
    markdown_table,
    new_figure,
    save_figure,
)
from benchmarks.timing import Case, KeyPool, Timing, call_loop, compare, gc_paused, ratio
from cacheplug import SimpleCache, from_url

__all__ = ["eviction_section", "main", "measure_set_into_full", "simple_section"]

OURS = "cacheplug"
DRIVER_PEER = "cachelib"
HOT_PATH_GOAL = 0.8  # get hit and set overwrite: at most this fraction of cachelib's time
GROWTH_GOAL = 2.0  # set into a full cache: 100k entries at most this many times 1k
MILLION_GOAL = 3.0  # and 1M entries at most this many times 1k (issue 6)
SIZES = (1_000, 10_000, 100_000)
FULL_RUN_SIZES = (*SIZES, 1_000_000)
QUICK_SIZES = (100, 1_000)
VALUES: dict[str, Any] = {"flat dict": FLAT, "nested dict": NESTED}


def _ops_table(
    section: SectionResult, rows: list[tuple[str, str, dict[str, Timing]]], names: Sequence[str]
) -> None:
    section.table(
        ["operation", "value", *names, "cacheplug/cachelib", "cacheplug/cachetools+lock"],
        [
            (
                op,
                value,
                *(fmt_ns(timings[n].best_ns) for n in names),
                fmt_ratio(ratio(timings[OURS], timings[DRIVER_PEER])),
                fmt_ratio(ratio(timings[OURS], timings["cachetools+lock"])),
            )
            for op, value, timings in rows
        ],
    )


def simple_section(ctx: Context, *, plot: bool = True) -> SectionResult:
    """get hit, set overwrite and get miss against the peers; ``from_url`` cost."""
    section = SectionResult("simple", "SimpleCache vs cachelib and cachetools")
    # short repeats, many of them: on a busy machine some run undisturbed
    number, repeats = ctx.scale(5_000, 200), ctx.scale(60, 2)
    caches = simple_peers(10_000)
    rows: list[tuple[str, str, dict[str, Timing]]] = []
    for label, value in VALUES.items():
        for cache in caches.values():
            cache.set("hit", value)
        ctx.tick(f"simple: get hit, {label}")
        gets = {name: Case(call_loop(c.get, "hit"), number) for name, c in caches.items()}
        rows.append(("get hit", label, compare(gets, repeats)))
        ctx.tick(f"simple: set overwrite, {label}")
        sets = {name: Case(call_loop(c.set, "hit", value), number) for name, c in caches.items()}
        rows.append(("set overwrite", label, compare(sets, repeats)))
    ctx.tick("simple: get miss")
    misses = {name: Case(call_loop(c.get, "missing"), number) for name, c in caches.items()}
    rows.append(("get miss", "-", compare(misses, repeats)))
    section.add(
        f"ns/op, minimum of {repeats} interleaved repeats of {number:,} calls; threshold 10,000; "
        "pickle serializer (cacheplug keeps flat builtin values unpickled, a dict as a shallow "
        "copy; nested ones are pickled, and a two-level one, as here, is kept unpickled from "
        "its eighth get on, so the get-hit loop copies it and each set overwrite pickles it "
        "again); cachetools stores references and copies nothing.",
        "",
    )
    _ops_table(section, rows, list(caches))
    for op, label, timings in rows:
        if op == "get miss":
            continue
        measured = ratio(timings[OURS], timings[DRIVER_PEER])
        section.targets.append(
            Target(
                f"SimpleCache {op} ({label}) vs cachelib",
                f"<= {HOT_PATH_GOAL}x cachelib's time",
                fmt_ratio(measured),
                measured <= HOT_PATH_GOAL,
            )
        )
    by_row = {(op, label): timings for op, label, timings in rows}
    for op in ("get hit", "set overwrite"):
        flat, nested = (ratio(by_row[op, v][OURS], by_row[op, v][DRIVER_PEER]) for v in VALUES)
        section.highlights.append(
            f"SimpleCache {op} vs cachelib: {fmt_ratio(flat)} (flat dict), "
            f"{fmt_ratio(nested)} (nested dict) of cachelib's time"
        )
    _from_url_rows(ctx, section, number // 5, repeats)
    if plot:
        _ops_plot(ctx, section, rows, list(caches))
    return section


def _ops_plot(
    ctx: Context,
    section: SectionResult,
    rows: list[tuple[str, str, dict[str, Timing]]],
    names: Sequence[str],
) -> None:
    figure = new_figure(9, 4)
    axes = figure.add_subplot()
    width = 0.8 / len(names)
    for offset, name in enumerate(names):
        axes.bar(
            [i + offset * width for i in range(len(rows))],
            [timings[name].best_ns for _, _, timings in rows],
            width,
            label=name,
        )
    axes.set_xticks(
        [i + width * (len(names) - 1) / 2 for i in range(len(rows))],
        [f"{op}\n{value}" for op, value, _ in rows],
    )
    axes.set_ylabel("ns per operation")
    axes.set_title("SimpleCache and peers (lower is better)")
    axes.legend(fontsize="small")
    save_figure(figure, ctx, section, "simple_vs_peers.png")


def _from_url_rows(ctx: Context, section: SectionResult, number: int, repeats: int) -> None:
    ctx.tick("simple: from_url")
    from_url("simple://")  # warm: the plugin manager is built once per process
    timings = compare(
        {
            'from_url("simple://")': Case(call_loop(from_url, "simple://"), number),
            "SimpleCache()": Case(call_loop(SimpleCache), number),
            "cachelib.SimpleCache()": Case(call_loop(cachelib.SimpleCache), number),
        },
        repeats,
    )
    section.add("Building a cache, warm (plugin manager already built), per call:", "")
    section.table(["call", "time"], [(name, fmt_ns(t.best_ns)) for name, t in timings.items()])


def _fill(cache: Any, size: int) -> None:
    with gc_paused():
        for i in range(size):
            cache.set(f"fill{i}", FLAT)


def _set_new_keys(cache: Any, pool: KeyPool) -> Any:
    def loop(n: int) -> None:
        keys = pool.take(n)
        for key, value in zip(keys, repeat(FLAT, n), strict=False):
            cache.set(key, value)

    return loop


def measure_set_into_full(
    sizes: Sequence[int], ctx: Context, *, quick: bool = False
) -> dict[int, dict[str, Timing]]:
    """ns per ``set`` of a new key into a full cache (one eviction each), per size and peer.

    cachelib sorts every entry on such a set, so its count shrinks as the size grows.
    """
    results: dict[int, dict[str, Timing]] = {}
    for size in sizes:
        ctx.tick(f"set into full: {size:,}")
        caches = simple_peers(size)
        number = 50 if quick else 2_000
        repeats = 2 if quick else (3 if size >= 1_000_000 else 7 if size >= 100_000 else 15)
        cases = {}
        for name, cache in caches.items():
            _fill(cache, size)
            cache.set("one-more", FLAT)  # cachelib prunes only once over its threshold
            if name == DRIVER_PEER:
                count = max(1, min(number, 20_000 // size))
            elif name == OURS:
                # one repeat spans a whole cycle of cacheplug's amortized work (its expiry heap
                # is rebuilt every size + 65 sets), so even the fastest repeat pays for it
                count = size + 65
            else:
                count = number
            pool = KeyPool(f"{name}-new", count * repeats)
            cases[name] = Case(_set_new_keys(cache, pool), count)
        results[size] = compare(cases, repeats)
        del caches, cases
    return results


def eviction_section(
    ctx: Context, sizes: Sequence[int] | None = None, *, plot: bool = True
) -> SectionResult:
    """Set into a full cache against its size, with the growth target and a log-log plot."""
    section = SectionResult("eviction", "Set of a new key into a full cache, against size")
    if sizes is None:
        sizes = QUICK_SIZES if ctx.quick else FULL_RUN_SIZES
    results = measure_set_into_full(sizes, ctx, quick=ctx.quick)
    names = list(next(iter(results.values())))
    section.add(
        "ns per `set` of a key not in the cache, the cache full (each set evicts one entry); "
        "minimum over repeats, each a run of n sets (for cacheplug n = size + 65, so every "
        "repeat, the fastest included, pays for one periodic O(size) rebuild of its expiry heap); "
        "the value is the flat dict. cachelib runs only "
        "`max(1, 20000 // size)` sets per repeat (each one sorts the whole cache).",
        "",
    )
    section.table(
        ["entries", *names],
        [
            (f"{size:,}", *(f"{fmt_ns(t[n].best_ns)} (n={t[n].number:,})" for n in names))
            for size, t in results.items()
        ],
    )
    small = min(results)
    growth = {
        size: {n: t[n].best_ns / results[small][n].best_ns for n in names}
        for size, t in results.items()
        if size != small
    }
    section.table(
        ["growth", *names],
        [
            (f"{size:,} / {small:,}", *(fmt_ratio(g[n]) for n in names))
            for size, g in growth.items()
        ],
    )
    large = 100_000 if small == 1_000 and 100_000 in growth else max(growth)
    measured = growth[large][OURS]
    top = max(results)
    section.highlights.append(
        f"set into a full cache of {top:,}: cacheplug {fmt_ns(results[top][OURS].best_ns)}, "
        f"cachelib {fmt_ns(results[top][DRIVER_PEER].best_ns)}; growth {top:,}/{small:,}: "
        f"cacheplug {fmt_ratio(growth[top][OURS])}, cachelib {fmt_ratio(growth[top][DRIVER_PEER])}"
    )
    section.targets.append(
        Target(
            f"SimpleCache set into full: {large:,} vs {small:,} entries",
            f"<= {GROWTH_GOAL}x",
            fmt_ratio(measured),
            measured <= GROWTH_GOAL,
        )
    )
    if small == 1_000 and 1_000_000 in growth:
        million = growth[1_000_000][OURS]
        section.targets.append(
            Target(
                f"SimpleCache set into full: 1,000,000 vs {small:,} entries",
                f"<= {MILLION_GOAL}x",
                fmt_ratio(million),
                million <= MILLION_GOAL,
            )
        )
    if not plot:
        return section
    figure = new_figure()
    axes = figure.add_subplot()
    for name in names:
        axes.loglog(list(results), [results[s][name].best_ns for s in results], "o-", label=name)
    axes.set_xlabel("entries in the full cache")
    axes.set_ylabel("ns per set of a new key")
    axes.set_title("Set into a full cache (log-log)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    save_figure(figure, ctx, section, "set_into_full.png")
    return section


def main(argv: Sequence[str] | None = None) -> None:
    """Print the SimpleCache comparison tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    ctx = Context(out_dir=args.out, quick=args.quick, tick=lambda label: print(f"# {label}"))
    sections = [
        simple_section(ctx, plot=False),
        eviction_section(ctx, QUICK_SIZES if args.quick else SIZES, plot=False),
    ]
    for section in sections:
        print(f"\n## {section.title}\n")
        print("\n".join(section.body))
    targets = [t for s in sections for t in s.targets]
    print(
        "\n".join(
            markdown_table(
                ["target", "goal", "measured", "verdict"],
                [(t.name, t.goal, t.measured, t.verdict) for t in targets],
            )
        )
    )


if __name__ == "__main__":
    main()
