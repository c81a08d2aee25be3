"""Benchmarks: measured cost against baselines taken in the same run (see RESULTS.md).

Each ``benchmarks/bench_*.py`` module has a ``main()``; ``python -m benchmarks.run_all``
runs them all. Shared timing / peak-memory helpers live in :mod:`benchmarks.common`.
"""
