"""Ops bound to their arguments for hot loops: `bind_acceleration` and `bind_carried_step` check
once, when bound, and return a function whose calls skip the checks, reshapes and backend lookup
(tens of microseconds per call at batch 1, beside a kernel of one or two). The simulation's
per-step loop is their user.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..errors import InputError
from ..physics.field import TidalField
from ..physics.integrators import kick_drift_kick, substep_weights
from . import custom, reference
from ._api import _backend_for, acceleration
from .backends import _core, call_cuda
from .validate import _describe, check_integrator, prepare


def bind_acceleration(
    pos: torch.Tensor,
    mass: torch.Tensor,
    *,
    G: float = 1.0,
    softening: float = 0.0,
    field: Optional[TidalField] = None,
    backend: str = "auto",
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`x -> acceleration(x, mass, G=G, ...)` with the arguments checked once, here, for loops
    that evaluate gravity many times on positions they computed themselves.

    Calls with positions of pos's shape, dtype and device go straight to the backend (no
    reshapes, no backend lookup: ~5x cheaper than `acceleration` for a small system); their
    values are not checked, as under `unchecked()`. Any other positions take the full
    `acceleration`, checks included. Differentiable like `acceleration`.
    """
    batch = prepare(pos, mass, G=G, softening=softening, field=field)
    name = _backend_for(backend, batch)
    shape, dtype, device = pos.shape, pos.dtype, pos.device
    flat_shape, flat_mass, physics = batch.pos.shape, batch.mass, batch.physics

    def checked(x: torch.Tensor) -> torch.Tensor:
        return acceleration(x, mass, G=G, softening=softening, field=field, backend=backend)

    if name == "reference":
        def compute(flat: torch.Tensor) -> torch.Tensor:
            return reference.acceleration(flat, flat_mass, G=G, softening=softening, field=field)
    else:
        def compute(flat: torch.Tensor) -> torch.Tensor:
            return custom.acceleration(flat, flat_mass, physics, name)

    def bound(x: torch.Tensor) -> torch.Tensor:
        if type(x) is not torch.Tensor or x.shape != shape or x.dtype != dtype or x.device != device:
            return checked(x)
        if shape == flat_shape:  # already [B, N, D]: no reshape in or out
            return compute(x.contiguous())
        return compute(x.reshape(flat_shape).contiguous()).reshape(shape)

    return bound


def bind_carried_step(
    pos: torch.Tensor,
    vel: torch.Tensor,
    acc: torch.Tensor,
    mass: torch.Tensor,
    *,
    integrator: str = "leapfrog",
    G: float = 1.0,
    softening: float = 0.0,
    field: Optional[TidalField] = None,
    backend: str = "auto",
    with_energy: bool = False,
) -> Callable[[torch.Tensor], None]:
    """`advance(dt)`: one step of size dt (per system, shape [...]) applied in place to the buffers
    pos, vel and acc [..., N, D], carrying the acceleration from step to step. With
    `with_energy`, `advance.energy` [...] holds total_energy of the state after each call (a
    buffer every call overwrites; the `cuda` backend computes it inside the step's kernel).

    acc must hold acceleration(pos) when bound (bind_acceleration gives it) and holds it after
    every call, so a step costs one force evaluation per substep, where `step` opens each call
    with one more: this is for loops whose dt changes every step. The arguments are checked
    once, here (the buffers contiguous, of one shape, dtype and device, none requiring grad:
    this is not differentiable); each call checks dt's shape, dtype and device, not its values.
    The `cpu` and `cuda` backends run one compiled call (csrc/cpu/carried_step.cpp,
    csrc/cuda/loop.cu); the others run physics.integrators.kick_drift_kick and copy the result
    into the buffers.
    """
    integrator_index = check_integrator(integrator)
    batch = prepare(pos, mass, vel=vel, G=G, softening=softening, field=field, need_vel=True)
    name = _backend_for(backend, batch)
    for label, buffer in (("pos", pos), ("vel", vel), ("acc", acc)):
        if not isinstance(buffer, torch.Tensor) or buffer.shape != pos.shape or buffer.dtype != pos.dtype \
                or buffer.device != pos.device:
            raise InputError(f"{label} must be a tensor of pos's shape {tuple(pos.shape)}, dtype {pos.dtype} and "
                             f"device {pos.device}, got {_describe(buffer)}")
        if not buffer.is_contiguous():
            raise InputError(f"{label} must be contiguous: bind_carried_step updates it in place")
        if buffer.requires_grad:
            raise InputError(f"{label} requires grad, but bind_carried_step updates its buffers in place and is not "
                             "differentiable; use step() for gradients")
    if len({pos.data_ptr(), vel.data_ptr(), acc.data_ptr()}) < 3:
        raise InputError("pos, vel and acc must be three different buffers")
    return _CarriedStep(pos, vel, acc, batch, integrator, integrator_index, name, G, softening, field, with_energy)


class _CarriedStep:
    """The function bind_carried_step returns; it holds the buffers its kernel writes through."""

    def __init__(self, pos, vel, acc, batch, integrator: str, integrator_index: int, backend: str, G: float,
                 softening: float, field: Optional[TidalField], with_energy: bool) -> None:
        self.batch_shape, self.dtype, self.device = batch.batch_shape, pos.dtype, pos.device
        B, N, D = self.flat = batch.pos.shape
        self.buffers = tuple(t.view(self.flat) for t in (pos, vel, acc))
        self.mass = batch.mass
        self.backend, self.physics = backend, batch.physics
        self.physics_kwargs = {"G": G, "softening": softening, "field": field}
        # For dt that is not already a [...] tensor of the buffers' dtype and device: prepare()
        # broadcasts and checks it against the batch as `step` would.
        self.shaped = (pos, batch.mass.view(*self.batch_shape, N), self.physics_kwargs)
        self.energy = pos.new_empty(self.batch_shape) if with_energy else None
        self.kernel = None  # the compiled step: _core.cpu_carried_step or cuda_carried_step
        if backend in ("cpu", "cuda") and hasattr(_core, backend + "_carried_step"):
            self.kernel = getattr(_core, backend + "_carried_step")
            self.pointers = tuple(t.data_ptr() for t in (*self.buffers, self.mass))
            if backend == "cuda":  # the energy comes out of the step's kernel
                self.pointers += (0 if self.energy is None else self.energy.data_ptr(),)
            self.sizes = (B, N, D, integrator_index, tuple(batch.physics), pos.dtype == torch.float64)
        else:
            self.force = bind_acceleration(self.buffers[0], self.mass, G=G, softening=softening, field=field,
                                           backend=backend)
            self.weights = substep_weights(integrator)

    def _dt(self, dt) -> torch.Tensor:
        """dt as a contiguous [B] tensor of the buffers' dtype and device."""
        if type(dt) is torch.Tensor and dt.dtype is self.dtype and dt.shape == self.batch_shape \
                and dt.device == self.device:
            if len(self.batch_shape) != 1:
                dt = dt.reshape(self.flat[0])
            if not dt.is_contiguous():
                dt = dt.contiguous()
        else:
            pos, mass, physics = self.shaped
            dt = prepare(pos, mass, dt=dt, **physics).dt
        if dt.requires_grad and torch.is_grad_enabled():
            raise InputError("dt requires grad, but bind_carried_step is not differentiable; use step() for gradients")
        return dt

    def __call__(self, dt) -> None:
        dt = self._dt(dt)
        if self.backend == "cuda" and self.kernel is not None:
            call_cuda(self.kernel, self.device, *self.pointers[:4], dt.data_ptr(), self.pointers[4], *self.sizes)
            return
        if self.kernel is not None:
            self.kernel(*self.pointers, dt.data_ptr(), *self.sizes)
        else:
            pos, vel, acc = self.buffers
            h_step = dt.view(-1, 1, 1)
            new_pos, new_vel, new_acc = pos, vel, acc
            for c in self.weights:
                h = h_step if c == 1.0 else c * h_step
                new_pos, new_vel, new_acc = kick_drift_kick(new_pos, new_vel, new_acc, h, self.force)
            pos.copy_(new_pos)
            vel.copy_(new_vel)
            acc.copy_(new_acc)
        if self.energy is not None:
            self.energy.view(-1).copy_(self._total_energy())

    def _total_energy(self) -> torch.Tensor:
        """total_energy of the buffers, [B], as the public op computes it for this backend."""
        pos, vel, _ = self.buffers
        if self.backend == "reference":
            return reference.total_energy(pos, vel, self.mass, **self.physics_kwargs)
        return custom.total_energy(pos, vel, self.mass, self.physics, self.backend)
