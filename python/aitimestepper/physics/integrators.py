"""Integrators as sequences of kick-drift-kick leapfrog substeps with weights c_s.

The compiled kernels hold the same table in csrc/include/aitimestepper/physics.h; a test checks
that both agree through the fourth-order convergence of yoshida4 on every backend.
"""
from __future__ import annotations

from typing import Callable

import torch

_CBRT2 = 2.0 ** (1.0 / 3.0)
_YOSHIDA_W1 = 1.0 / (2.0 - _CBRT2)
_YOSHIDA_W0 = -_CBRT2 / (2.0 - _CBRT2)

# name -> (kernel index, substep weights c_s: substep s advances by c_s * dt)
INTEGRATORS: dict[str, tuple[int, tuple[float, ...]]] = {
    "leapfrog": (0, (1.0,)),
    "yoshida4": (1, (_YOSHIDA_W1, _YOSHIDA_W0, _YOSHIDA_W1)),
}


def _lookup(name: str) -> tuple[int, tuple[float, ...]]:
    try:
        return INTEGRATORS[name]
    except KeyError:
        raise ValueError(f"unknown integrator {name!r}; choose one of {sorted(INTEGRATORS)}") from None


def integrator_index(name: str) -> int:
    return _lookup(name)[0]


def substep_weights(name: str) -> tuple[float, ...]:
    return _lookup(name)[1]


def kick_drift_kick(
    pos: torch.Tensor,
    vel: torch.Tensor,
    acc: torch.Tensor,
    h: torch.Tensor,
    acceleration: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One leapfrog substep of size h (broadcastable to pos) in PyTorch: v += h/2 a; x += h v;
    a = a(x); v += h/2 a. `acc` is a(pos) on entry and a(new pos) on exit, so a substep costs one
    force evaluation. The compiled kernels do the same in physics.h's order of operations: the
    fused step (csrc/cpu/integrate.cpp) and, for loops that carry acc from step to step, the
    in-place carried step (csrc/cpu/carried_step.cpp, ops.bind_carried_step), which
    tests/test_ops_bound.py checks against this function.
    """
    vel = torch.addcmul(vel, h, acc, value=0.5)
    pos = torch.addcmul(pos, h, vel)
    acc = acceleration(pos)
    vel = torch.addcmul(vel, h, acc, value=0.5)
    return pos, vel, acc
