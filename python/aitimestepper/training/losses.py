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
    return torch.where(torch.isfinite(r), r, torch.ones_like(r))


def band_loss(r: torch.Tensor, E_lower: float, E_upper: float) -> torch.Tensor:
    """Per-sample band loss on ln r, same shape as r. r = 0 (an exact step) is clamped to the
    smallest positive float so that ln r stays finite."""
    log_r = torch.log(r.clamp_min(torch.finfo(r.dtype).tiny))
    below = torch.relu(math.log(E_lower) - log_r)
    above = torch.relu(log_r - math.log(E_upper))
    return below.square() + above.square()
