"""Throughput with 1, 2 and 8 threads sharing one cache (90% get hits, 10% set overwrites)."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Mapping
from typing import Any

from benchmarks.engines import MissingEngine
from benchmarks.payloads import FLAT
from benchmarks.peers import CacheLike, simple_peers
from benchmarks.report import Context, SectionResult, new_figure, save_figure
from benchmarks.timing import gc_paused

__all__ = ["threads_section"]

THREADS = (1, 2, 8)
KEYS = 1_000


def _worker(cache: CacheLike, keys: list[str], ops: int, start: threading.Barrier) -> None:
    get, set_, count = cache.get, cache.set, len(keys)
    start.wait()
    for i in range(ops):
        if i % 10:
            get(keys[i % count])
        else:
            set_(keys[i % count], FLAT)


def _run_once(cache: CacheLike, keys: list[str], threads: int, total_ops: int) -> float:
    """Operations per second of one run of ``threads`` threads sharing ``total_ops``."""
    start = threading.Barrier(threads + 1)
    workers = [
        threading.Thread(target=_worker, args=(cache, keys, total_ops // threads, start))
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    return (total_ops // threads) * threads / (time.perf_counter() - began)


def throughput(
    caches: Mapping[str, CacheLike], keys: list[str], threads: int, total_ops: int, repeats: int
) -> dict[str, float]:
    """Best operations per second of each cache, ``threads`` threads sharing ``total_ops``.

    Interleaved like :func:`benchmarks.timing.compare`: each repeat runs every cache once, in
    an order rotated on every repeat, so a drift of the machine hits them all alike.
    """
    names = list(caches)
    best = dict.fromkeys(names, 0.0)
    with gc_paused():
        for round_ in range(repeats):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                best[name] = max(best[name], _run_once(caches[name], keys, threads, total_ops))
    return best


def _redis_caches(ctx: Context) -> dict[str, CacheLike]:
    import redis

    server = ctx.engines.server("redis")
    raw = redis.Redis(host=server.host, port=server.port, db=0)

    class PickledRedis:
        """redis-py with pickle by hand: what the cache layer replaces."""

        def get(self, key: str) -> Any:
            data: Any = raw.get(key)
            return None if data is None else pickle.loads(data)

        def set(self, key: str, value: Any) -> Any:
            return raw.set(key, pickle.dumps(value, pickle.HIGHEST_PROTOCOL), ex=300)

    return {"cacheplug RedisCache": ctx.engines.cache("redis"), "redis-py + pickle": PickledRedis()}


def threads_section(ctx: Context) -> SectionResult:
    """ops/s for 1, 2, 8 threads: SimpleCache and its peers; RedisCache and redis-py."""
    section = SectionResult("threads", "Throughput with 1, 2 and 8 threads")
    repeats = ctx.scale(5, 1)
    groups: dict[str, tuple[dict[str, CacheLike], int]] = {
        "in-memory": (simple_peers(10_000, bare=False), ctx.scale(200_000, 2_000))
    }
    try:
        groups["redis"] = (_redis_caches(ctx), ctx.scale(8_000, 80))
    except MissingEngine as err:
        section.add(f"- **redis: not measured**: {err}", "")
    results: dict[str, dict[int, float]] = {}
    keys = [f"t{i}" for i in range(ctx.scale(KEYS, 20))]
    for group, (caches, total) in groups.items():
        for cache in caches.values():
            for key in keys:
                cache.set(key, FLAT)
        per_count: dict[int, dict[str, float]] = {}
        for n in THREADS:
            ctx.tick(f"threads: {group}, {n}")
            per_count[n] = throughput(caches, keys, n, total, repeats)
        for name in caches:
            results[name] = {n: per_count[n][name] for n in THREADS}
    section.add(
        "One shared cache object; 90% get hits, 10% set overwrites of the flat dict on "
        f"{len(keys):,} keys; best of {repeats} runs, interleaved with the other caches of its "
        "group (in-memory, Redis). Python threads share the GIL: more threads do "
        "not add CPU here, they show the cost of lock contention (in memory) or overlap round "
        "trips (Redis). cachetools is shown with its lock only: bare it is not thread-safe.",
        "",
    )
    if "cacheplug" in results and "cachelib" in results:
        most = THREADS[-1]
        section.highlights.append(
            f"{most} threads on one SimpleCache: {results['cacheplug'][most]:,.0f} ops/s, "
            f"{results['cacheplug'][most] / results['cachelib'][most]:.2f}x cachelib's throughput"
        )
    section.table(
        ["cache", *(f"{n} thread{'s' if n > 1 else ''} (ops/s)" for n in THREADS)],
        [(name, *(f"{r[n]:,.0f}" for n in THREADS)) for name, r in results.items()],
    )
    figure = new_figure()
    axes = figure.add_subplot()
    for name, by_threads in results.items():
        axes.plot(list(by_threads), list(by_threads.values()), "o-", label=name)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xticks(list(THREADS), [str(n) for n in THREADS])
    axes.set_xlabel("threads")
    axes.set_ylabel("operations per second (log)")
    axes.set_title("Throughput of one shared cache")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    save_figure(figure, ctx, section, "threads.png")
    return section
