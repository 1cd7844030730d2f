"""The physics in plain PyTorch: the oracle every compiled backend is tested against.

Shapes: positions/velocities [..., N, D], masses [..., N] (broadcastable against the batch),
per-system scalars [...]. Everything here is differentiable by ordinary autograd and works in
any floating dtype; tests run it in float64. It materialises N x N pair tensors, so it is meant
for correctness, not speed. The formulas are those of docs/kernel-contract.md ("Physics") and
csrc/include/aitimestepper/physics.h.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..physics.field import TidalField
from ..physics.integrators import kick_drift_kick, substep_weights


def _pair_offsets(pos: torch.Tensor) -> torch.Tensor:
    """r[..., i, j, :] = x_j - x_i, shape [..., N, N, D]."""
    return pos.unsqueeze(-3) - pos.unsqueeze(-2)


def _pair_inverse_distance(r: torch.Tensor, softening: float) -> torch.Tensor:
    """1/sqrt(|r|^2 + eps^2) with the diagonal (self terms) set to exactly 0, shape [..., N, N].

    The diagonal is replaced before the rsqrt so that eps = 0 gives no inf/NaN in the values
    or in their gradients.
    """
    n = r.shape[-2]
    s2 = (r * r).sum(-1) + softening * softening
    eye = torch.eye(n, dtype=torch.bool, device=r.device)
    s2 = torch.where(eye, torch.ones_like(s2), s2)
    return torch.where(eye, torch.zeros_like(s2), torch.rsqrt(s2))


def tidal_acceleration(pos: torch.Tensor, field: TidalField, G: float) -> torch.Tensor:
    R = torch.tensor(field.position, dtype=pos.dtype, device=pos.device)
    u = R - pos
    u3 = (u * u).sum(-1, keepdim=True).pow(1.5)
    R3 = (R * R).sum().pow(1.5)
    return G * field.mass * (u / u3 - R / R3)


def tidal_potential(pos: torch.Tensor, field: TidalField, G: float) -> torch.Tensor:
    """Phi(x_i) per body, shape [..., N]."""
    R = torch.tensor(field.position, dtype=pos.dtype, device=pos.device)
    u = (R - pos).norm(dim=-1)
    Rn = R.norm()
    return -G * field.mass * (1.0 / u - 1.0 / Rn - (pos * R).sum(-1) / Rn**3)


def acceleration(
    pos: torch.Tensor,
    mass: torch.Tensor,
    *,
    G: float = 1.0,
    softening: float = 0.0,
    field: Optional[TidalField] = None,
) -> torch.Tensor:
    """a_i = G sum_{j != i} m_j (x_j - x_i) / (|x_j - x_i|^2 + eps^2)^{3/2} (+ tidal), [..., N, D]."""
    r = _pair_offsets(pos)
    inv = _pair_inverse_distance(r, softening)
    weight = mass.unsqueeze(-2) * inv**3  # [..., i, j]: m_j / s_ij^3
    acc = G * (weight.unsqueeze(-1) * r).sum(-2)
    if field is not None:
        acc = acc + tidal_acceleration(pos, field, G)
    return acc


def potential_energy(
    pos: torch.Tensor,
    mass: torch.Tensor,
    *,
    G: float = 1.0,
    softening: float = 0.0,
    field: Optional[TidalField] = None,
) -> torch.Tensor:
    """U = -G sum_{i<j} m_i m_j / s_ij (+ sum_i m_i Phi(x_i)), shape [...]."""
    inv = _pair_inverse_distance(_pair_offsets(pos), softening)
    pair_mass = mass.unsqueeze(-1) * mass.unsqueeze(-2)
    energy = -0.5 * G * (pair_mass * inv).sum((-2, -1))
    if field is not None:
        energy = energy + (mass * tidal_potential(pos, field, G)).sum(-1)
    return energy


def kinetic_energy(vel: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """T = 1/2 sum_i m_i |v_i|^2, shape [...]."""
    return 0.5 * (mass * (vel * vel).sum(-1)).sum(-1)


def total_energy(
    pos: torch.Tensor,
    vel: torch.Tensor,
    mass: torch.Tensor,
    *,
    G: float = 1.0,
    softening: float = 0.0,
    field: Optional[TidalField] = None,
) -> torch.Tensor:
    return kinetic_energy(vel, mass) + potential_energy(pos, mass, G=G, softening=softening, field=field)


def linear_momentum(vel: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """P = sum_i m_i v_i, shape [..., D]."""
    return (mass.unsqueeze(-1) * vel).sum(-2)


def angular_momentum(pos: torch.Tensor, vel: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """L = sum_i m_i x_i x v_i: shape [...] (L_z) in 2-D, [..., 3] in 3-D."""
    if pos.shape[-1] == 2:
        cross = pos[..., 0] * vel[..., 1] - pos[..., 1] * vel[..., 0]
        return (mass * cross).sum(-1)
    return (mass.unsqueeze(-1) * torch.linalg.cross(pos, vel, dim=-1)).sum(-2)


def step(
    pos: torch.Tensor,
    vel: torch.Tensor,
    mass: torch.Tensor,
    dt: torch.Tensor | float,
    *,
    steps: int = 1,
    integrator: str = "leapfrog",
    G: float = 1.0,
    softening: float = 0.0,
    field: Optional[TidalField] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` steps of kick-drift-kick substeps of size c_s * dt; dt is a float or [...]."""
    dt = torch.as_tensor(dt, dtype=pos.dtype, device=pos.device)
    dt = dt.unsqueeze(-1).unsqueeze(-1)  # [..., 1, 1] against [..., N, D]

    def force(x: torch.Tensor) -> torch.Tensor:
        return acceleration(x, mass, G=G, softening=softening, field=field)

    acc = force(pos)
    for _ in range(steps):
        for c in substep_weights(integrator):
            pos, vel, acc = kick_drift_kick(pos, vel, acc, c * dt, force)
    return pos, vel
