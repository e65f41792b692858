"""The ``cacheplug demo`` command: memoize a deliberately slow function through a cache, call it
over a repeating workload and print its hits and timings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cacheplug._cli_target import Target, token, url_of

if TYPE_CHECKING:
    import argparse

__all__ = ["run_demo"]


def run_demo(args: argparse.Namespace) -> int:
    """Run ``cacheplug demo``; the exit status."""
    import threading
    import time

    from cacheplug.core.serializer import serializer_name

    url, origin = url_of(args)
    target = Target(url, origin)
    delay = args.delay_ms / 1000
    executions = 0
    with target as cache:
        target.probe(f"cacheplug-demo:{token()}:probe")

        @cache.memoize(timeout=60, key_prefix=f"cacheplug-demo:{token()}")
        def slow_sum(n: int) -> int:
            nonlocal executions
            executions += 1
            threading.Event().wait(delay)  # stands in for a slow query or computation
            return sum(range(n))

        cold: list[float] = []
        warm: list[float] = []
        for round_ in range(args.rounds):
            for n in range(args.keys):
                started = time.perf_counter()
                slow_sum(n)
                (cold if round_ == 0 else warm).append(time.perf_counter() - started)
        for n in range(args.keys):
            slow_sum.invalidate(n)
        errors = cache.stats().get("errors", 0)

    calls = len(cold) + len(warm)
    cold_ms = 1000 * sum(cold) / len(cold)
    warm_ms = 1000 * sum(warm) / len(warm) if warm else 0.0
    rows = [
        ("cache", target.scrub(repr(cache))),
        ("url", target.url.redacted()),
        ("serializer", serializer_name(cache.serializer)),
        (
            "workload",
            f"{_count(args.rounds, 'round')} over {_count(args.keys, 'argument')}, "
            f"{args.delay_ms:g} ms each",
        ),
        ("calls", str(calls)),
        ("executions", str(executions)),
        ("hit ratio", f"{100 * (calls - executions) / calls:.1f}%"),
        ("cold", f"{cold_ms:.3f} ms per call (first round)"),
        ("warm", f"{warm_ms:.3f} ms per call (later rounds)" if warm else "n/a (one round)"),
        ("speed-up", _speed_up(cold_ms, warm_ms, hits=calls - executions)),
    ]
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"{label + ':':<{width}}{value}")
    if errors:
        print(f"warning: the cache reported {errors} backend errors during the demo")
    return 0


def _speed_up(cold_ms: float, warm_ms: float, hits: int) -> str:
    if warm_ms <= 0:
        return "n/a"
    if not hits:  # the warm calls ran the function too: their ratio is noise, not the cache's
        return "none: no call was served from the cache"
    return f"{cold_ms / warm_ms:.1f}x"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
