"""Initial conditions: random clusters, sampled Kepler orbits and files, always batched.

Every generator returns a `Systems` of B systems (pos/vel [B, N, D], mass [B, N]) drawn from a
caller-supplied torch.Generator, so a seed fixes every draw. The state is checked here for what
would make training or simulation meaningless later (coincident bodies, zero total energy),
so the error comes before anything runs or is written.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import ops
from .errors import InputError


@dataclass
class Systems:
    """B systems of N bodies in D dimensions: pos/vel [B, N, D], mass [B, N]."""

    pos: torch.Tensor
    vel: torch.Tensor
    mass: torch.Tensor
    periods: Optional[torch.Tensor] = None  # [B] Kepler periods when known

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pos.shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "Systems":
        move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return Systems(move(self.pos), move(self.vel), move(self.mass), move(self.periods))


def _to_com_frame(pos: torch.Tensor, vel: torch.Tensor, mass: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weights = (mass / mass.sum(-1, keepdim=True)).unsqueeze(-1)
    return pos - (weights * pos).sum(-2, keepdim=True), vel - (weights * vel).sum(-2, keepdim=True)


def random_systems(num_systems: int, num_particles: int, dim: int, masses: list[float], pos_scale: float,
                   vel_scale: float, generator: torch.Generator) -> Systems:
    """Positions ~ N(0, pos_scale^2), velocities ~ N(0, vel_scale^2), shifted to the COM frame."""
    shape = (num_systems, num_particles, dim)
    pos = torch.randn(shape, generator=generator, dtype=torch.float64) * pos_scale
    vel = torch.randn(shape, generator=generator, dtype=torch.float64) * vel_scale
    mass = torch.tensor(masses, dtype=torch.float64).expand(num_systems, num_particles).clone()
    pos, vel = _to_com_frame(pos, vel, mass)
    return Systems(pos, vel, mass)


def kepler_orbits(num_systems: int, dim: int, mass: float, e_range: tuple[float, float],
                  a_range: tuple[float, float], G: float, generator: torch.Generator) -> Systems:
    """Two equal masses at pericentre, e ~ U[e_min, e_max], a ~ U[a_min, a_max].

    Body 0 sits at (-r_p/2, 0) moving +y with v_p/2, body 1 opposite; r_p = a(1-e),
    v_p = sqrt(G 2m (1+e) / (a(1-e))), period T = 2 pi sqrt(a^3 / (G 2m)).
    """
    u = torch.rand((2, num_systems), generator=generator, dtype=torch.float64)
    e = e_range[0] + (e_range[1] - e_range[0]) * u[0]
    a = a_range[0] + (a_range[1] - a_range[0]) * u[1]
    r_p = a * (1 - e)
    v_p = torch.sqrt(G * 2 * mass * (1 + e) / r_p)
    pos = torch.zeros(num_systems, 2, dim, dtype=torch.float64)
    vel = torch.zeros_like(pos)
    pos[:, 0, 0], pos[:, 1, 0] = -r_p / 2, r_p / 2
    vel[:, 0, 1], vel[:, 1, 1] = v_p / 2, -v_p / 2
    masses = torch.full((num_systems, 2), float(mass), dtype=torch.float64)
    periods = 2 * math.pi * torch.sqrt(a**3 / (G * 2 * mass))
    return Systems(pos, vel, masses, periods)


def load_case(path: Path, dim: int) -> Systems:
    """One system from a reference-case JSON file (keys masses [N], pos and vel [N][D], t_end;
    the format of tests/data/cases): its period is taken to be t_end, so --Nperiod counts t_end."""
    try:
        case = json.loads(path.read_text())
        masses, pos, vel = (torch.tensor(case[key], dtype=torch.float64) for key in ("masses", "pos", "vel"))
        t_end = float(case["t_end"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"cannot read the case file {str(path)!r} (needs masses, pos, vel, t_end): {error}") from None
    if pos.dim() != 2 or pos.shape != vel.shape or masses.shape != pos.shape[:1] or pos.shape[1] != dim:
        raise InputError(f"{path}: expected masses [N] and pos, vel [N][{dim}] for dim = {dim}, got masses "
                         f"{list(masses.shape)}, pos {list(pos.shape)}, vel {list(vel.shape)}")
    return Systems(pos[None], vel[None], masses[None], torch.tensor([t_end], dtype=torch.float64))


def load_systems(path: str | Path, dim: int) -> Systems:
    """Rows [m, x_1..x_D, v_1..v_D]: shape (N, 1+2D) or (B, N, 1+2D), from .npy or text; or one
    reference case from a .json file (load_case)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"initial-condition file {str(path)!r} does not exist")
    if path.suffix == ".json":
        return load_case(path, dim)
    try:
        with warnings.catch_warnings():  # an empty file is reported below, as holding no systems
            warnings.simplefilter("ignore", UserWarning)
            data = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=2)
    except Exception as error:  # numpy raises several types for unreadable files
        raise InputError(f"cannot read initial conditions from {str(path)!r}: {error}") from None
    data = np.asarray(data, dtype=np.float64)
    if data.size == 0:
        raise InputError(f"initial-condition file {str(path)!r} holds no systems (shape {data.shape})")
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[-1] != 1 + 2 * dim:
        raise InputError(
            f"{path}: expected rows [m, x_1..x_{dim}, v_1..v_{dim}] of shape (N, {1 + 2 * dim}) or "
            f"(B, N, {1 + 2 * dim}) for dim = {dim}, got shape {data.shape}")
    table = torch.from_numpy(data)
    return Systems(table[..., 1:1 + dim].clone(), table[..., 1 + dim:].clone(), table[..., 0].clone())


def kepler_period(systems: Systems, G: float) -> torch.Tensor:
    """Period of each system taken as a bound two-body orbit, [B]; nan where it is unbound."""
    if systems.periods is not None:
        return systems.periods
    if systems.pos.shape[-2] != 2:
        raise InputError("--Nperiod needs a two-body system (N = 2)")
    m_total = systems.mass.sum(-1)
    r = (systems.pos[:, 1] - systems.pos[:, 0]).norm(dim=-1)
    v2 = ((systems.vel[:, 1] - systems.vel[:, 0]) ** 2).sum(-1)
    inverse_a = 2 / r - v2 / (G * m_total)  # vis-viva
    a = torch.where(inverse_a > 0, 1 / inverse_a, torch.full_like(inverse_a, float("nan")))
    return 2 * math.pi * torch.sqrt(a**3 / (G * m_total))


def make_systems(cfg, generator: torch.Generator) -> Systems:
    """The B = num_orbits systems a config asks for (a file may hold its own B), checked, on cfg's device."""
    if cfg.ic_path:
        systems = load_systems(cfg.ic_path, cfg.dim)
        if systems.pos.shape[-2] != cfg.num_particles:
            raise InputError(f"{cfg.ic_path} holds N = {systems.pos.shape[-2]} bodies but num_particles = "
                             f"{cfg.num_particles}")
    else:
        kind = cfg.ic if cfg.ic != "auto" else ("kepler" if cfg.num_particles == 2 else "random")
        if kind == "kepler":
            if cfg.num_particles != 2:
                raise InputError(f"Kepler initial conditions need num_particles = 2, got {cfg.num_particles}")
            if len(set(cfg.mass)) != 1:
                raise InputError(f"Kepler initial conditions use two equal masses, got {cfg.mass}")
            systems = kepler_orbits(cfg.num_orbits, cfg.dim, cfg.mass[0], (cfg.e_min, cfg.e_max),
                                    (cfg.a_min, cfg.a_max), cfg.G, generator)
        else:
            masses = cfg.mass * cfg.num_particles if len(cfg.mass) == 1 else cfg.mass
            systems = random_systems(cfg.num_orbits, cfg.num_particles, cfg.dim, masses, cfg.pos_scale,
                                     cfg.vel_scale, generator)
    systems = systems.to(cfg.device, getattr(torch, cfg.dtype))
    check_energy(systems, cfg)
    return systems


def check_energy(systems: Systems, cfg) -> torch.Tensor:
    """Total energy per system [B]; an error when one is (numerically) zero, since every energy
    residual divides by it. The ops also reject non-finite values and coincident bodies here."""
    kwargs = cfg.physics_kwargs()
    energy = ops.total_energy(systems.pos, systems.vel, systems.mass, **kwargs)
    scale = ops.kinetic_energy(systems.vel, systems.mass) + ops.potential_energy(
        systems.pos, systems.mass, **{**kwargs, "field": None}).abs()
    bad = (energy.abs() <= 1e-12 * scale) | ~torch.isfinite(energy)
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise InputError(
            f"system {index} has total energy E0 = {energy[index].item():.3e}, too close to 0: the "
            "relative energy error |E - E0| / |E0| is undefined; choose other initial conditions")
    return energy
