"""Benchmarks: one shared harness (harness.py) and the suites built on it.

`kernels.main(argv)` is the kernel benchmark behind `aitimestepper bench` and
bench/bench_kernels.py. Other suites (training, simulation) import the harness:

    from aitimestepper.bench import harness
    timing = harness.measure(fn, device="cuda", budget_s=5.0)

See harness.py's docstring for the API and the row schema of the results files.
"""
from __future__ import annotations

from . import harness
from .harness import (
    DEFAULT_COLUMNS,
    TARGET_COLUMNS,
    ResultLog,
    Rotation,
    Target,
    Timing,
    format_table,
    measure,
    provenance,
    read_rows,
)

__all__ = [
    "harness",
    "measure",
    "Timing",
    "Rotation",
    "ResultLog",
    "read_rows",
    "Target",
    "format_table",
    "provenance",
    "DEFAULT_COLUMNS",
    "TARGET_COLUMNS",
]
