"""Serializer cost: dumps and loads time, and payload size, on realistic values."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.payloads import SERIALIZER_PAYLOADS
from benchmarks.report import Context, SectionResult, fmt_ns, new_figure, save_figure
from benchmarks.timing import Case, Timing, call_loop, compare
from cacheplug import get_serializer

__all__ = ["serializers_section"]

NAMES = ("pickle", "json", "msgpack")


def serializers_section(ctx: Context) -> SectionResult:
    """pickle, json (orjson) and msgpack on a record, 100 records, 64 KiB text, 1000 floats."""
    section = SectionResult("serializers", "Serializers: dumps, loads and size")
    serializers = {name: get_serializer(name) for name in NAMES}
    repeats = ctx.scale(9, 2)
    results: dict[str, dict[str, dict[str, Timing]]] = {}
    sizes: dict[str, dict[str, int]] = {}
    for label, value in SERIALIZER_PAYLOADS.items():
        ctx.tick(f"serializers: {label}")
        encoded = {name: bytes(s.dumps(value) or b"") for name, s in serializers.items()}
        sizes[label] = {name: len(data) for name, data in encoded.items()}
        # ~2 ms of work per repeat whatever the payload's size
        number = max(1, ctx.scale(2_000_000, 20_000) // max(64, min(sizes[label].values())))
        results[label] = {
            "dumps": compare(
                {n: Case(call_loop(s.dumps, value), number) for n, s in serializers.items()},
                repeats,
            ),
            "loads": compare(
                {n: Case(call_loop(s.loads, encoded[n]), number) for n, s in serializers.items()},
                repeats,
            ),
        }
    section.add(f"cacheplug's serializer objects; minimum of {repeats} interleaved repeats.", "")
    section.table(
        ["payload", *(f"{n} dumps" for n in NAMES), *(f"{n} loads" for n in NAMES)],
        [
            (
                label,
                *(fmt_ns(r["dumps"][n].best_ns) for n in NAMES),
                *(fmt_ns(r["loads"][n].best_ns) for n in NAMES),
            )
            for label, r in results.items()
        ],
    )
    section.table(
        ["payload", *(f"{n} bytes" for n in NAMES)],
        [(label, *(f"{s[n]:,}" for n in NAMES)) for label, s in sizes.items()],
    )
    figure = new_figure(11, 4)
    labels = list(results)
    width = 0.8 / len(NAMES)
    panels: dict[str, Callable[[str, str], float]] = {
        "dumps (µs, log)": lambda label, n: results[label]["dumps"][n].best_ns / 1e3,
        "loads (µs, log)": lambda label, n: results[label]["loads"][n].best_ns / 1e3,
        "size (bytes, log)": lambda label, n: float(sizes[label][n]),
    }
    for index, (title, metric) in enumerate(panels.items(), start=1):
        axes = figure.add_subplot(1, 3, index)
        for offset, name in enumerate(NAMES):
            axes.bar(
                [i + offset * width for i in range(len(labels))],
                [metric(label, name) for label in labels],
                width,
                label=name,
            )
        axes.set_xticks([i + width for i in range(len(labels))], labels, rotation=20)
        axes.set_yscale("log")
        axes.set_title(title)
        axes.legend(fontsize="small")
    save_figure(figure, ctx, section, "serializers.png")
    return section
