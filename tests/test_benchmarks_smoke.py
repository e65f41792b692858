"""The benchmarks still run: every section in ``--quick`` mode, report and plots written.

No timing is asserted: the point is that the benchmark code cannot rot unnoticed.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tqdm import tqdm  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import SECTIONS, main, run
from benchmarks.simple import main as simple_main


@pytest.fixture(scope="module", autouse=True)
def _no_progress_monitor() -> Iterator[None]:
    """tqdm starts a monitor thread even for a disabled bar and never stops it; left running,
    it would make every later fork in the suite warn of a multi-threaded process (3.12+)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tqdm, "monitor_interval", 0)
        yield


def test_a_run_leaves_no_thread_behind(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    run(tmp_path / "quiet", quick=True, only=["signing"], progress=False)
    main(["--quick", "--only", "signing", "--out", str(tmp_path / "shown")])
    assert set(threading.enumerate()) <= before


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out_dir = tmp_path_factory.mktemp("bench")
    path = run(out_dir, quick=True, progress=False)
    return out_dir, path.read_text(encoding="utf-8")


def test_report_is_written_in_the_output_dir(report: tuple[Path, str]) -> None:
    out_dir, text = report
    assert (out_dir / "REPORT.md").is_file()
    assert text.startswith("# cacheplug benchmarks")


@pytest.mark.parametrize(
    "heading",
    [
        "## Machine",
        "## Method",
        "## Targets",
        "## Key ratios",
        "## SimpleCache vs cachelib and cachetools",
        "## Set of a new key into a full cache, against size",
        "## Per-operation latency: every backend x serializer",
        "## get_many(100) vs 100 single gets",
        "## RedisCache and MemcachedCache vs raw drivers and cachelib",
        "## Serializers: dumps, loads and size",
        "## Throughput with 1, 2 and 8 threads",
        "## Signing cost (secret=) on SimpleCache",
        "## FileSystemCache vs cachelib's FileSystemCache",
        "## memoize on a hit: cacheplug vs lru_cache, cachetools, Flask-Caching",
    ],
)
def test_report_has_every_section(report: tuple[Path, str], heading: str) -> None:
    assert f"\n{heading}\n" in report[1]


def test_report_marks_every_target_pass_or_fail(report: tuple[Path, str]) -> None:
    targets = report[1].split("## Targets", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in targets.splitlines() if line.startswith("| ") and "**" in line]
    assert len(rows) >= 9
    assert all("**PASS**" in row or "**FAIL**" in row for row in rows)


def test_plots_are_png_files_linked_from_the_report(report: tuple[Path, str]) -> None:
    out_dir, text = report
    plots = sorted(out_dir.glob("*.png"))
    assert {"set_into_full.png", "serializers.png", "threads.png", "simple_vs_peers.png"} <= {
        p.name for p in plots
    }
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plot.name})" in text


def test_only_runs_one_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--quick", "--only", "signing", "--out", str(tmp_path)])
    text = (tmp_path / "REPORT.md").read_text(encoding="utf-8")
    assert "## Signing cost (secret=) on SimpleCache" in text
    assert "## Serializers" not in text
    assert str(tmp_path / "REPORT.md") in capsys.readouterr().out


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown section"):
        run(tmp_path, quick=True, only=["nope"], progress=False)
    assert "signing" in SECTIONS


def test_simple_script_prints_the_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    simple_main(["--quick"])
    out = capsys.readouterr().out
    assert "| get hit       | flat dict" in out
    assert "cacheplug/cachelib" in out
    assert "SimpleCache set into full" in out
