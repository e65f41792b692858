"""What a benchmark section produces, and the markdown report made of the sections."""

from __future__ import annotations

import os
import platform
import resource
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.engines import Engines

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Context",
    "SectionResult",
    "Target",
    "fmt_ns",
    "fmt_ratio",
    "load_average",
    "machine_lines",
    "markdown_table",
    "new_figure",
    "save_figure",
    "write_report",
]

#: hiredis too: with it redis-py parses replies in C, which moves every redis number
LIBRARIES = (
    "cacheplug",
    "cachelib",
    "cachetools",
    "redis",
    "hiredis",
    "pymemcache",
    "msgpack",
    "orjson",
)

METHOD = """\
- Every comparison runs its implementations in the same process, interleaved: each repeat runs
  every implementation once, in an order rotated on every repeat, so drift hits all of them alike.
- A repeat times a loop of N calls (`for _ in itertools.repeat(None, N): cache.get(key)`) with
  `time.perf_counter_ns`, the cyclic garbage collector off; the loop overhead (~10-20 ns) is in
  every figure alike, so ratios are, if anything, pulled towards 1.
- Reported: the **minimum** time per operation over the repeats (timeit's advice: larger values
  come from interference, not from the code). Amortized costs (set into a full cache) are timed
  in repeats that each span a whole cycle of the periodic work, so the fastest repeat pays for
  it too. Ratios are ours / peer's (below 1 = cacheplug faster).
- Other processes shared the machine during the run (see the load averages above): single
  numbers can be off by tens of percent; ratios of interleaved peers are steadier.
- Every implementation gets the very same key and value objects.
- Engines (redis-server, memcached) are started by the run on free loopback ports and stopped at
  the end; the client and the server share the machine's cores."""


@dataclass(frozen=True)
class Target:
    """A goal from the issues, checked against a measured number."""

    name: str
    goal: str
    measured: str
    passed: bool

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


@dataclass
class SectionResult:
    """The outcome of one benchmark section: markdown, targets and the plots it wrote."""

    key: str
    title: str
    body: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    #: one-line key ratios for the summary at the top of the report
    highlights: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.body.extend(lines)

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        self.body.extend([*markdown_table(headers, rows), ""])


@dataclass
class Context:
    """What every section gets: where to write, how long to run, the progress callback."""

    out_dir: Path
    quick: bool = False
    tick: Callable[[str], None] = lambda label: None
    engines: Engines = field(default_factory=Engines)

    def scale(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:,.2f} ms"
    if ns >= 1e4:
        return f"{ns / 1e3:,.1f} µs"
    return f"{ns:,.0f} ns"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table with columns padded, so it also reads well in a terminal."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    return [line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for text in info:
                if text.startswith("model name"):
                    return text.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_lines() -> list[str]:
    """The machine and software the numbers were measured on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(f"{name} {_version(name)}" for name in LIBRARIES)
    return [
        f"- CPU: {_cpu_model()}, {cores} cores usable",
        f"- OS: {platform.platform()}",
        f"- Python: {sys.version.split()[0]} ({platform.python_implementation()})",
        f"- Libraries: {versions}",
    ]


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews the numbers."""
    return " / ".join(f"{load:.2f}" for load in os.getloadavg())


def new_figure(width: float = 7.0, height: float = 4.2) -> Figure:
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure: Figure, ctx: Context, section: SectionResult, name: str) -> None:
    """Write a figure as PNG next to the report and link it from the section."""
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    figure.savefig(ctx.out_dir / name, dpi=110)
    section.figures.append(name)


def write_report(
    sections: Sequence[SectionResult],
    out_dir: Path,
    *,
    quick: bool,
    seconds: float,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``REPORT.md`` for the sections into ``out_dir``; its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# cacheplug benchmarks", ""]
    if quick:
        lines += ["> **Quick run** (`--quick`): tiny counts, the numbers are not meaningful.", ""]
    lines += ["## Machine", "", *machine_lines(), *notes]
    lines += [f"- Load average at the end (1/5/15 min): {load_average()}"]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    lines += [f"- Run time: {seconds:.0f} s; peak memory: {peak_mib:,.0f} MiB", ""]
    lines += ["## Method", "", METHOD, ""]
    targets = [(s.title, t) for s in sections for t in s.targets]
    lines += ["## Targets", ""]
    if targets:
        passed = sum(t.passed for _, t in targets)
        lines += [f"{passed} of {len(targets)} targets met.", ""]
        lines += markdown_table(
            ["Section", "Target", "Goal", "Measured", "Verdict"],
            [(title, t.name, t.goal, t.measured, f"**{t.verdict}**") for title, t in targets],
        )
    else:
        lines.append("No target was measured in this run.")
    lines.append("")
    highlights = [line for s in sections for line in s.highlights]
    if highlights:
        lines += ["## Key ratios", "", *(f"- {line}" for line in highlights), ""]
    for section in sections:
        lines += [f"## {section.title}", "", *section.body]
        lines += [f"![{name}]({name})" for name in section.figures]
        lines.append("")
    path = out_dir / "REPORT.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path
