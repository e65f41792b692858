"""Run every benchmark and write ``REPORT.md`` and PNG plots.

Usage: ``python -m benchmarks [--quick] [--only NAME ...] [--out DIR]`` (or
``python benchmarks/run.py``). Sections: see ``--help``. redis-server and memcached are started
on free loopback ports for the run and stopped at its end.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import time
from collections.abc import Callable, Sequence

from tqdm import tqdm  # type: ignore[import-untyped]

from benchmarks.backends import backend_matrix_section, get_many_section
from benchmarks.drivers import drivers_section
from benchmarks.engines import Engines, MissingEngine
from benchmarks.filesystem import filesystem_section
from benchmarks.memoize import memoize_section
from benchmarks.report import Context, SectionResult, load_average, write_report
from benchmarks.serialization import serializers_section
from benchmarks.signing import signing_section
from benchmarks.simple import eviction_section, simple_section
from benchmarks.threads import threads_section

__all__ = ["SECTIONS", "main", "run"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"

Section = Callable[[Context], SectionResult]
#: name -> (section, progress steps it reports in a full run)
SECTIONS: dict[str, tuple[Section, int]] = {
    "simple": (simple_section, 6),
    "eviction": (eviction_section, 4),
    "backends": (backend_matrix_section, 5),
    "get_many": (get_many_section, 4),
    "drivers": (drivers_section, 2),
    "serializers": (serializers_section, 4),
    "threads": (threads_section, 6),
    "signing": (signing_section, 2),
    "filesystem": (filesystem_section, 3),
    "memoize": (memoize_section, 5),
}
TITLES = {
    "filesystem": "FileSystemCache vs cachelib's FileSystemCache",
}


def run(
    out_dir: Path, *, quick: bool = False, only: Sequence[str] = (), progress: bool = True
) -> Path:
    """Run the chosen sections (all by default) and write the report; its path."""
    names = list(only) or list(SECTIONS)
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    began = time.perf_counter()
    notes = [f"- Load average at the start (1/5/15 min): {load_average()}"]
    results: list[SectionResult] = []
    with (
        Engines() as engines,
        tqdm(total=sum(SECTIONS[n][1] for n in names), disable=not progress, unit="step") as bar,
    ):

        def tick(label: str) -> None:
            bar.set_description(label[:48])
            bar.update(0 if bar.n >= bar.total else 1)

        ctx = Context(out_dir=out_dir, quick=quick, tick=tick, engines=engines)
        for name in names:
            section, _ = SECTIONS[name]
            try:
                results.append(section(ctx))
            except MissingEngine as err:
                missing = SectionResult(name, TITLES.get(name, name))
                missing.add(f"**Not measured in this run**: {err}")
                results.append(missing)
    seconds = time.perf_counter() - began
    return write_report(results, out_dir, quick=quick, seconds=seconds, notes=notes)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: ``python -m benchmarks``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        choices=list(SECTIONS),
        metavar="NAME",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="report directory")
    args = parser.parse_args(argv)
    path = run(args.out, quick=args.quick, only=args.only)
    print(f"report: {path}")


if __name__ == "__main__":
    main()
