"""``python -m benchmarks``: run every benchmark and write the report."""

from __future__ import annotations

from benchmarks.run import main

main()
