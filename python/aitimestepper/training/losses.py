"""The quantities training optimizes: the relative energy error of a step and the band loss on it.

r = |E1 - E0| / |E0|, where a non-finite r (a step that blew up) counts as r = 1. The band
loss on l = ln r is max(0, ln E_lower - l)^2 + max(0, l - ln E_upper)^2: zero inside the band,
so the network is pushed toward steps that are neither wastefully small nor inaccurate.
"""
from __future__ import annotations

import math

import torch


def relative_energy_error(energy: torch.Tensor, energy0: torch.Tensor) -> torch.Tensor:
    """|E - E0| / |E0| per system, with non-finite values replaced by 1 (differentiable elsewhere)."""
    r = ((energy - energy0) / energy0).abs()
    # = where(isfinite(r), r, 1) in one op; its gradient is zero where r was replaced.
    return torch.nan_to_num(r, nan=1.0, posinf=1.0, neginf=1.0)


def finite_gradient(dt: torch.Tensor) -> torch.Tensor:
    """dt itself, with the non-finite entries of its gradient replaced by 0.

    A system whose step blew up has r counted as 1 (a constant), yet the step's backward still
    multiplies zeros by the NaN/inf of its trajectory; without this guard that NaN would reach
    every weight through the shared network and Adam would spread it.
    """
    if dt.requires_grad:
        dt.register_hook(lambda grad: torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0))
    return dt


def band_loss(r: torch.Tensor, E_lower: float, E_upper: float) -> torch.Tensor:
    """Per-sample band loss on ln r, same shape as r. r = 0 (an exact step) is clamped to the
    smallest positive float so that ln r stays finite."""
    log_r = torch.log(r.clamp_min(torch.finfo(r.dtype).tiny))
    # (l - clamp(l, ln E_lower, ln E_upper))^2 is the two relu terms in one (at most one of them is
    # non-zero), with the same values and gradients bit for bit, in fewer tensor operations.
    return (log_r - log_r.clamp(math.log(E_lower), math.log(E_upper))).square()
