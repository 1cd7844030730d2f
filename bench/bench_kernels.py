#!/usr/bin/env python3
"""Kernel benchmark (acceleration, step, energy-error gradient) per backend, beside the
reference backend and REBOUND; the same as `aitimestepper bench`. See
python/aitimestepper/bench/kernels.py for what is measured and how; `--help` for the options.
"""
import sys
from pathlib import Path

try:
    import aitimestepper.bench.kernels as kernels
except ImportError:  # a source checkout that is not installed: use its python/ folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    import aitimestepper.bench.kernels as kernels

if __name__ == "__main__":
    sys.exit(kernels.main())
