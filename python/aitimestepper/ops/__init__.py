"""Public ops: gravity, energies, momenta and fused integration steps on torch tensors.

Shapes: positions/velocities [..., N, D], masses [..., N] (broadcast against the batch), per-
system scalars [...]; float32 or float64; D = 2 or 3. Every function validates its inputs once
(ops/validate.py), then runs either the PyTorch reference (`backend="reference"`) or a compiled
backend (`cpu`, `cuda`, `triton`) through the torch.library ops of ops/custom.py, which carry
autograd with respect to positions, velocities and dt. `backend="auto"` picks `cuda` for CUDA
tensors and `cpu` for CPU tensors.

For hot loops that call an op thousands of times on their own outputs (the simulation's step),
`bind_acceleration` and `bind_carried_step` check the arguments once and return a function
whose calls skip the checks, reshapes and backend lookup (tens of microseconds per call at
batch 1, beside a kernel of one or two).

    >>> import torch, aitimestepper.ops as ops
    >>> pos = torch.tensor([[-0.5, 0.0], [0.5, 0.0]], dtype=torch.float64)
    >>> vel = torch.tensor([[0.0, -0.7], [0.0, 0.7]], dtype=torch.float64)
    >>> mass = torch.ones(2, dtype=torch.float64)
    >>> pos1, vel1 = ops.step(pos, vel, mass, 1e-3, steps=100)
"""
from __future__ import annotations

from ._api import (
    acceleration,
    angular_momentum,
    kinetic_energy,
    linear_momentum,
    potential_energy,
    step,
    total_energy,
)
from .backends import available_backends, build_info
from .bound import bind_acceleration, bind_carried_step
from .validate import unchecked

__all__ = [
    "acceleration",
    "bind_acceleration",
    "bind_carried_step",
    "potential_energy",
    "kinetic_energy",
    "total_energy",
    "linear_momentum",
    "angular_momentum",
    "step",
    "available_backends",
    "build_info",
    "unchecked",
]
