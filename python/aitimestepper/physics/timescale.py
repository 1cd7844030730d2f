"""The local dynamical time of a state: the time scale both the classical step criterion and the
learned step are measured in.

tau = min_i sqrt(d_i / |a_i|), d_i the distance from body i to its nearest neighbour and a_i its
acceleration. It scales as sqrt(L^3 / (G M)) when lengths, masses and G are rescaled, which is
how every time of a gravitating system scales, so a step written as dt = tau * g with a
dimensionless g is unit-aware whatever g is. The classical criterion is dt = eta * tau.
"""
from __future__ import annotations

import torch


def dynamical_time(pos: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """tau [B] of states pos, acc [B, N, D] (differentiable; an isolated body with a = 0 does
    not count: its tau is infinite, and the minimum is over the others)."""
    distance = torch.cdist(pos, pos)
    distance = distance + torch.diag_embed(torch.full_like(distance[..., 0], float("inf")))
    nearest = distance.amin(-1)
    magnitude = torch.linalg.vector_norm(acc, dim=-1).clamp_min(torch.finfo(pos.dtype).tiny)
    return torch.sqrt(nearest / magnitude).amin(-1)


def eta_criterion(pos: torch.Tensor, acc: torch.Tensor, eta: float) -> torch.Tensor:
    """The classical step dt = eta * tau, [B]."""
    return eta * dynamical_time(pos, acc)


class _BoundDynamicalTime:
    """bind_dynamical_time's function for the compiled kernel (tau only: no feature block)."""

    def __init__(self, core, pos, vel, mass, acc, G: float, softening: float) -> None:
        B, N, D = pos.shape
        self.core = core
        self.out = pos.new_empty(B)
        self.args = (pos.data_ptr(), vel.data_ptr(), mass.data_ptr(), acc.data_ptr(), 0, self.out.data_ptr(),
                     B, N, D, G, softening, pos.dtype == torch.float64)

    def __call__(self) -> torch.Tensor:
        self.core.cpu_scaled_features(*self.args)
        return self.out


def bind_dynamical_time(pos: torch.Tensor, vel: torch.Tensor, mass: torch.Tensor, acc: torch.Tensor,
                        G: float = 1.0, softening: float = 0.0):
    """`tau()` of state buffers [B, N, D] that the caller advances in place (the simulation loop):
    one compiled call where it applies (CPU, float32/64, contiguous), else dynamical_time. The
    returned tensor is a buffer that the next call overwrites."""
    from ..features import compiled_scaled_applies
    from ..ops.backends import _core

    if compiled_scaled_applies(pos, vel, mass, acc) and all(t.is_contiguous() for t in (pos, vel, mass, acc)):
        return _BoundDynamicalTime(_core, pos, vel, mass, acc, G, softening)
    return lambda: dynamical_time(pos, acc)
