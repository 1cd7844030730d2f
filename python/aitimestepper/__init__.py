"""aitimestepper: learned adaptive time steps for gravitational N-body simulation.

The kernels (softened all-pairs gravity, energies, fused leapfrog/yoshida4 steps) live in the
compiled module `_core` (C++/OpenMP and CUDA) and in Triton; `aitimestepper.ops` exposes them as
differentiable torch ops. Training, simulation and the CLI sit on top.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

# The one source of the version is pyproject.toml: the installed metadata carries it here, and
# the build passes it to _core (build_info()["version"]).
try:
    __version__ = _distribution_version("aitimestepper")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

from . import ops
from .ops.backends import available_backends as backends
from .ops.backends import build_info
from .physics.field import TidalField

__all__ = ["ops", "backends", "build_info", "TidalField", "__version__"]
