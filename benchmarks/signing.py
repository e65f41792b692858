"""The cost of ``secret=``: HMAC-SHA256 signing on set and verification on get."""

from __future__ import annotations

from typing import Any

from benchmarks.payloads import FLAT, UserRecord
from benchmarks.report import Context, SectionResult, Target, fmt_ns
from benchmarks.timing import Case, call_loop, compare
from cacheplug import SimpleCache

__all__ = ["VALUES", "signing_section"]

GOAL_NS = 1_000.0  # signing adds at most 1 microsecond per operation
SECRET = "benchmark-secret-0123456789abcdef"
#: label -> (value, whether SimpleCache signs it): only signed values are held to the goal;
#: the flat dict is kept unpickled and unsigned, so its "cost" measures no signing at all
VALUES: dict[str, tuple[Any, bool]] = {
    "flat dict (kept unpickled, not signed)": (FLAT, False),
    "UserRecord (pickled)": (UserRecord(1, "Ada", "ada@example.com", True, 3.5), True),
}


def signing_section(ctx: Context) -> SectionResult:
    """SimpleCache get/set with and without a secret, for a builtin and a custom-class value."""
    section = SectionResult("signing", "Signing cost (secret=) on SimpleCache")
    number, repeats = ctx.scale(5_000, 100), ctx.scale(60, 2)
    caches = {"plain": SimpleCache(10_000), "signed": SimpleCache(10_000, secret=SECRET)}
    rows = []
    for label, (value, is_signed) in VALUES.items():
        for cache in caches.values():
            cache.set("hit", value)
        ctx.tick(f"signing: {label}")
        for op, args in (("get", ("hit",)), ("set", ("hit", value))):
            timings = compare(
                {
                    name: Case(call_loop(getattr(cache, op), *args), number)
                    for name, cache in caches.items()
                },
                repeats,
            )
            delta = timings["signed"].best_ns - timings["plain"].best_ns
            plain, signed = timings["plain"].best_ns, timings["signed"].best_ns
            rows.append((op, label, fmt_ns(plain), fmt_ns(signed), f"{delta:+,.0f} ns"))
            if not is_signed:
                continue
            section.highlights.append(f"signing adds {delta:+,.0f} ns to {op} of a {label}")
            section.targets.append(
                Target(
                    f"signing adds to SimpleCache {op}, {label}",
                    "<= 1 µs",
                    f"{delta:+,.0f} ns",
                    delta <= GOAL_NS,
                )
            )
    section.add(
        f"Minimum of {repeats} interleaved repeats of {number:,} calls. With the default pickle "
        "serializer SimpleCache keeps builtin values unpickled in memory, so no payload is signed "
        "for the flat dict (shown, held to no target); a custom class goes through pickle and "
        "HMAC-SHA256.",
        "",
    )
    section.table(["operation", "value", "no secret", "secret=", "signing adds"], rows)
    return section
