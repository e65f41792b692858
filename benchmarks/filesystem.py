"""FileSystemCache beside cachelib's: hot path, and set into a full cache at 100 and 10,000."""

from __future__ import annotations

from typing import Any

import cachelib

from benchmarks.engines import backend_class
from benchmarks.payloads import FLAT
from benchmarks.report import Context, SectionResult, Target, fmt_ns, fmt_ratio
from benchmarks.timing import Case, KeyPool, call_loop, compare

__all__ = ["filesystem_section"]

SIZES = (100, 10_000)
GROWTH_GOAL = 2.0  # set at 10,000 entries at most this many times the cost at 100
TIMEOUT = 300


def _set_new_keys(cache: Any, pool: KeyPool) -> Any:
    def loop(n: int) -> None:
        for key in pool.take(n):
            cache.set(key, FLAT)

    return loop


def filesystem_section(ctx: Context) -> SectionResult:
    """get hit, set overwrite, and set of new keys into full caches of 100 and 10,000 entries."""
    section = SectionResult("filesystem", "FileSystemCache vs cachelib's FileSystemCache")
    ctx.tick("filesystem: hot path")
    ours_cls = backend_class("FileSystemCache")
    repeats = ctx.scale(5, 2)
    number = ctx.scale(400, 10)
    # a full cacheplug cache frees a tenth of its threshold at once: a repeat spans that cycle
    full_number = ctx.scale(1_000, 10)
    sizes = (10, 100) if ctx.quick else SIZES

    def pair(threshold: int) -> dict[str, Any]:
        return {
            "cacheplug": ours_cls(
                str(ctx.engines.directory(f"fs-ours-{threshold}")),
                threshold=threshold,
                default_timeout=TIMEOUT,
            ),
            "cachelib": cachelib.FileSystemCache(
                str(ctx.engines.directory(f"fs-cachelib-{threshold}")),
                threshold=threshold,
                default_timeout=TIMEOUT,
            ),
        }

    caches = pair(1_000)
    for cache in caches.values():
        cache.set("hit", FLAT)
    rows = []
    for op, args in (("get hit", ("hit",)), ("set overwrite", ("hit", FLAT))):
        method = op.split()[0]
        timings = compare(
            {n: Case(call_loop(getattr(c, method), *args), number) for n, c in caches.items()},
            repeats,
        )
        rows.append(
            (
                op,
                *(fmt_ns(t.best_ns) for t in timings.values()),
                fmt_ratio(timings["cacheplug"].best_ns / timings["cachelib"].best_ns),
            )
        )
    full: dict[int, dict[str, float]] = {}
    for size in sizes:
        ctx.tick(f"filesystem: set into full, {size:,}")
        caches = pair(size)
        cases = {}
        for name, cache in caches.items():
            cache.set_many({f"fill{i}": FLAT for i in range(size)})
            cache.set("one-more", FLAT)  # cachelib prunes only once over its threshold
            # cachelib reads every file on each set once full: few of those at 10,000
            count = max(1, min(number, 2_000 // size)) if name == "cachelib" else full_number
            cases[name] = Case(_set_new_keys(cache, KeyPool(f"{name}-", count * repeats)), count)
        timings = compare(cases, repeats)
        full[size] = {n: t.best_ns for n, t in timings.items()}
        rows.append(
            (
                f"set new key, full at {size:,}",
                *(fmt_ns(v) for v in full[size].values()),
                fmt_ratio(full[size]["cacheplug"] / full[size]["cachelib"]),
            )
        )
    small, large = sizes
    growth = {n: full[large][n] / full[small][n] for n in full[small]}
    section.add(
        f"pickle, the flat user dict; minimum of {repeats} interleaved repeats. A set into a "
        "full cache writes a key not there yet; its repeats run 1,000 sets, so each one, the "
        "fastest included, pays for the prune that frees a tenth of cacheplug's threshold at "
        "once. cachelib reads every file on each such set, so it runs few of them at 10,000.",
        "",
    )
    section.table(["operation", "cacheplug", "cachelib", "cacheplug/cachelib"], rows)
    section.table(
        ["growth", "cacheplug", "cachelib"],
        [(f"{large:,} / {small:,}", *(fmt_ratio(g) for g in growth.values()))],
    )
    section.highlights.append(
        f"FileSystemCache set into a full cache of {large:,}: {fmt_ns(full[large]['cacheplug'])}, "
        f"cachelib {fmt_ns(full[large]['cachelib'])}"
    )
    section.targets.append(
        Target(
            f"FileSystemCache set at {large:,} vs {small:,} entries",
            f"<= {GROWTH_GOAL}x",
            fmt_ratio(growth["cacheplug"]),
            growth["cacheplug"] <= GROWTH_GOAL,
        )
    )
    return section
