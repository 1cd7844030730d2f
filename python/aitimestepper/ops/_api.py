"""The public ops (re-exported by aitimestepper.ops): validate once, then run the reference or a
compiled backend through the torch.library ops of custom.py. A module of its own so that
bound.py can build on acceleration() without importing the package that re-exports both."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import InputTypeError
from ..physics.field import TidalField
from . import custom, reference
from .backends import resolve
from .validate import (
    check_backend,
    check_integrator,
    check_mass_not_differentiated,
    check_steps,
    prepare,
    restore,
)


def _backend_for(backend: str, batch) -> str:
    name = resolve(check_backend(backend), batch.pos.device)
    if name != "reference":
        check_mass_not_differentiated(batch.mass, name)
    return name


def acceleration(
    pos: torch.Tensor,
    mass: torch.Tensor,
    *,
    G: float = 1.0,
    softening: float = 0.0,
    field: Optional[TidalField] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Softened gravitational acceleration (+ tidal field) of every body, [..., N, D]."""
    batch = prepare(pos, mass, G=G, softening=softening, field=field)
    name = _backend_for(backend, batch)
    if name == "reference":
        return restore(reference.acceleration(batch.pos, batch.mass, G=G, softening=softening, field=field),
                       pos.shape[:-2], pos.shape[-2:])
    return restore(custom.acceleration(batch.pos, batch.mass, batch.physics, name), pos.shape[:-2], pos.shape[-2:])


def potential_energy(
    pos: torch.Tensor,
    mass: torch.Tensor,
    *,
    G: float = 1.0,
    softening: float = 0.0,
    field: Optional[TidalField] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """U = -G sum_{i<j} m_i m_j / sqrt(r_ij^2 + eps^2) (+ sum_i m_i Phi(x_i)), shape [...]."""
    batch = prepare(pos, mass, G=G, softening=softening, field=field)
    name = _backend_for(backend, batch)
    if name == "reference":
        energy = reference.potential_energy(batch.pos, batch.mass, G=G, softening=softening, field=field)
    else:
        energy = custom.potential_energy(batch.pos, batch.mass, batch.physics, name)
    return restore(energy, batch.batch_shape)


def total_energy(
    pos: torch.Tensor,
    vel: torch.Tensor,
    mass: torch.Tensor,
    *,
    G: float = 1.0,
    softening: float = 0.0,
    field: Optional[TidalField] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """E = T + U (+ field potential), shape [...]."""
    batch = prepare(pos, mass, vel=vel, G=G, softening=softening, field=field, need_vel=True)
    name = _backend_for(backend, batch)
    if name == "reference":
        energy = reference.total_energy(batch.pos, batch.vel, batch.mass, G=G, softening=softening, field=field)
    else:
        energy = custom.total_energy(batch.pos, batch.vel, batch.mass, batch.physics, name)
    return restore(energy, batch.batch_shape)


def kinetic_energy(vel: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """T = 1/2 sum_i m_i |v_i|^2, shape [...] (an O(N) reduction: plain PyTorch on every device)."""
    batch = prepare(vel, mass, pos_name="vel", forces=False)
    return restore(reference.kinetic_energy(batch.pos, batch.mass), batch.batch_shape)


def linear_momentum(vel: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """P = sum_i m_i v_i, shape [..., D]."""
    batch = prepare(vel, mass, pos_name="vel", forces=False)
    return restore(reference.linear_momentum(batch.pos, batch.mass), batch.batch_shape, (batch.dim,))


def angular_momentum(pos: torch.Tensor, vel: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """L = sum_i m_i x_i x v_i: [...] (L_z) in 2-D, [..., 3] in 3-D."""
    batch = prepare(pos, mass, vel=vel, need_vel=True, forces=False)
    L = reference.angular_momentum(batch.pos, batch.vel, batch.mass)
    return restore(L, batch.batch_shape, () if batch.dim == 2 else (3,))


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
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance `steps` steps of size dt (a float or a per-system [...] tensor); returns (pos, vel).

    Differentiable with respect to pos, vel and dt. The trajectory needed for the gradient is
    kept only when one of them requires grad.
    """
    steps = check_steps(steps)
    integrator_index = check_integrator(integrator)
    if dt is None:  # prepare() reads dt=None as "this op takes no dt"
        raise InputTypeError("dt must be a real number or a tensor, got None")
    batch = prepare(pos, mass, vel=vel, dt=dt, G=G, softening=softening, field=field, need_vel=True)
    name = _backend_for(backend, batch)
    if name == "reference":
        new_pos, new_vel = reference.step(batch.pos, batch.vel, batch.mass, batch.dt, steps=steps,
                                          integrator=integrator, G=G, softening=softening, field=field)
    else:
        wants_grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (batch.pos, batch.vel, batch.dt)
        )
        new_pos, new_vel, _ = custom.step(batch.pos, batch.vel, batch.mass, batch.dt, steps, integrator_index,
                                          batch.physics, name, wants_grad)
    return restore(new_pos, pos.shape[:-2], pos.shape[-2:]), restore(new_vel, vel.shape[:-2], vel.shape[-2:])

