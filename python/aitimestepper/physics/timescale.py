"""The local time scales of a state that the classical step criterion and the learned step are
measured in.

tau = min_i sqrt(d_i / |a_i|), d_i the distance from body i to its nearest neighbour and a_i its
acceleration. It scales as sqrt(L^3 / (G M)) when lengths, masses and G are rescaled, which is
how every time of a gravitating system scales, so a step written as dt = tau * g with a
dimensionless g is unit-aware whatever g is. The classical criterion is dt = eta * tau.

A step can be measured in one of two time scales (config.TIMESCALES, the --timescale setting):
- `acceleration`: tau above, the classical criterion's.
- `encounter`: min(tau, t_flyby), t_flyby = min_(i<j) d_ij / |v_i - v_j| the shortest time in
  which a pair's separation can change by itself. In a close encounter of comparable masses
  t_flyby is about half of tau, in the quiet stretches between encounters it is longer than tau:
  at equal force evaluations the encounter time spends the steps where leapfrog's energy error
  is made (measured against the acceleration time in bench/NOTES.md). On an orbit of two equal
  masses it is the fly-by time where r < 1.5 a (tau / sqrt(2 (1 + e)) at pericentre), tau beyond.
Both scale as sqrt(L^3 / (G M)).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..config import TIMESCALES


def dynamical_time(pos: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """tau [B] of states pos, acc [B, N, D] (differentiable; an isolated body with a = 0 does
    not count: its tau is infinite, and the minimum is over the others)."""
    distance = torch.cdist(pos, pos)
    distance = distance + torch.diag_embed(torch.full_like(distance[..., 0], float("inf")))
    nearest = distance.amin(-1)
    magnitude = torch.linalg.vector_norm(acc, dim=-1).clamp_min(torch.finfo(pos.dtype).tiny)
    return torch.sqrt(nearest / magnitude).amin(-1)


def flyby_time(pos: torch.Tensor, vel: torch.Tensor) -> torch.Tensor:
    """t_flyby [B] = min over pairs of d_ij / |v_i - v_j| of states [B, N, D] (a pair at rest
    relative to each other does not count: infinite)."""
    first, second = torch.triu_indices(pos.shape[-2], pos.shape[-2], 1, device=pos.device)
    distance = torch.linalg.vector_norm(pos[..., first, :] - pos[..., second, :], dim=-1)
    speed = torch.linalg.vector_norm(vel[..., first, :] - vel[..., second, :], dim=-1)
    return (distance / speed).amin(-1)


def step_time(pos: torch.Tensor, vel: torch.Tensor, acc: torch.Tensor, timescale: str,
              tau: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The time scale [B] a step is measured in (config.TIMESCALES); `tau`: dynamical_time(pos, acc)
    when the caller has it already."""
    if tau is None:
        tau = dynamical_time(pos, acc)
    if timescale == "acceleration":
        return tau
    if timescale == "encounter":
        return torch.minimum(tau, flyby_time(pos, vel))
    raise ValueError(f"unknown timescale {timescale!r}; choose one of {list(TIMESCALES)}")


def eta_criterion(pos: torch.Tensor, acc: torch.Tensor, eta: float) -> torch.Tensor:
    """The classical step dt = eta * tau, [B]."""
    return eta * dynamical_time(pos, acc)


class _BoundStepTime:
    """bind_step_time's function for the compiled kernel (the time only: no feature block)."""

    def __init__(self, pos, vel, mass, acc, G: float, softening: float, timescale: str) -> None:
        from ..features import scaled_kernel

        B, N, D = pos.shape
        self.run, self.pos = scaled_kernel, pos
        self.out = pos.new_empty(B)
        self.args = (pos.data_ptr(), vel.data_ptr(), mass.data_ptr(), acc.data_ptr(), 0, self.out.data_ptr(),
                     B, N, D, G, softening, pos.dtype == torch.float64, timescale == "encounter")

    def __call__(self) -> torch.Tensor:
        self.run(self.pos, self.args)
        return self.out


def bind_step_time(pos: torch.Tensor, vel: torch.Tensor, mass: torch.Tensor, acc: torch.Tensor,
                   G: float = 1.0, softening: float = 0.0, timescale: str = "acceleration"):
    """`t()`, step_time(pos, vel, acc, timescale), of state buffers [B, N, D] that the caller
    advances in place (the simulation loop): one compiled call where it applies (CPU,
    float32/64, contiguous; on CUDA up to 32 bodies), else the PyTorch formula. The returned
    tensor is a buffer that the next call overwrites."""
    from ..features import compiled_scaled_applies

    if compiled_scaled_applies(pos, vel, mass, acc) and all(t.is_contiguous() for t in (pos, vel, mass, acc)):
        return _BoundStepTime(pos, vel, mass, acc, G, softening, timescale)
    return lambda: step_time(pos, vel, acc, timescale)
