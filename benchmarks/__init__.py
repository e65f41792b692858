"""cacheplug's benchmarks: every backend and serializer beside its peers, in one process.

``python -m benchmarks`` writes ``benchmarks/results/REPORT.md`` and its plots;
``python benchmarks/simple.py`` prints the SimpleCache comparison. See ``benchmarks.run``.
"""
