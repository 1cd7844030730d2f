"""The compiled ops as torch.library custom ops, with fake (meta) kernels and autograd.

Each forward op runs the kernels of one backend (the `backend` string argument picks `cpu`,
`cuda` or `triton`) on validated, flattened inputs. Each backward is an op of its own whose
kernel recomputes pair terms (acceleration_vjp, step_backward): nothing N x N is saved, and a
multi-step `step` saves its trajectory only when a gradient is wanted. Registering them this
way makes autograd, torch.compile and torch.library.opcheck work on them.

Shapes inside: pos/vel [B, N, D], mass [B, N], dt [B], energies [B]; physics is the list
(G, softening, field_mass, Rx, Ry, Rz) from validate.physics_tuple.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..physics.integrators import INTEGRATORS
from .backends import kernels

_SUBSTEPS = {index: len(weights) for index, weights in INTEGRATORS.values()}


def trajectory_shape(pos: Tensor, steps: int, integrator: int) -> tuple[int, ...]:
    """[S + 1, 3, B, N, D]: positions, velocities, accelerations at every substep boundary."""
    return (steps * _SUBSTEPS[integrator] + 1, 3, *pos.shape)


# ---------------------------------------------------------------------------------------------
# acceleration


@torch.library.custom_op("aitimestepper::acceleration", mutates_args=())
def acceleration(pos: Tensor, mass: Tensor, physics: list[float], backend: str) -> Tensor:
    out = torch.empty_like(pos)
    if pos.numel():
        kernels(backend).acceleration(pos, mass, out, physics)
    return out


@acceleration.register_fake
def _(pos, mass, physics, backend):
    return torch.empty_like(pos)


@torch.library.custom_op("aitimestepper::acceleration_vjp", mutates_args=())
def acceleration_vjp(pos: Tensor, mass: Tensor, grad_acc: Tensor, physics: list[float], backend: str) -> Tensor:
    out = torch.empty_like(pos)
    if pos.numel():
        kernels(backend).acceleration_vjp(pos, mass, grad_acc.contiguous(), out, physics)
    return out


@acceleration_vjp.register_fake
def _(pos, mass, grad_acc, physics, backend):
    return torch.empty_like(pos)


def _acceleration_setup(ctx, inputs, output):
    pos, mass, physics, backend = inputs
    ctx.save_for_backward(pos, mass)
    ctx.physics, ctx.backend = physics, backend


def _acceleration_backward(ctx, grad_acc):
    pos, mass = ctx.saved_tensors
    return acceleration_vjp(pos, mass, grad_acc, ctx.physics, ctx.backend), None, None, None


acceleration.register_autograd(_acceleration_backward, setup_context=_acceleration_setup)


# ---------------------------------------------------------------------------------------------
# energies: dU/dx_i = -m_i a_i and dT/dv_i = m_i v_i, so their backward is the acceleration op.


@torch.library.custom_op("aitimestepper::potential_energy", mutates_args=())
def potential_energy(pos: Tensor, mass: Tensor, physics: list[float], backend: str) -> Tensor:
    out = pos.new_empty(pos.shape[0])
    if pos.numel():
        kernels(backend).potential_energy(pos, mass, out, physics)
    return out


@potential_energy.register_fake
def _(pos, mass, physics, backend):
    return pos.new_empty(pos.shape[0])


def _potential_setup(ctx, inputs, output):
    pos, mass, physics, backend = inputs
    ctx.save_for_backward(pos, mass)
    ctx.physics, ctx.backend = physics, backend


def _potential_gradient(pos: Tensor, mass: Tensor, grad_energy: Tensor, physics, backend) -> Tensor:
    acc = acceleration(pos, mass, physics, backend)
    return -(grad_energy[:, None, None] * mass[..., None]) * acc


def _potential_backward(ctx, grad_energy):
    pos, mass = ctx.saved_tensors
    return _potential_gradient(pos, mass, grad_energy, ctx.physics, ctx.backend), None, None, None


potential_energy.register_autograd(_potential_backward, setup_context=_potential_setup)


@torch.library.custom_op("aitimestepper::total_energy", mutates_args=())
def total_energy(pos: Tensor, vel: Tensor, mass: Tensor, physics: list[float], backend: str) -> Tensor:
    kinetic = 0.5 * (mass * (vel * vel).sum(-1)).sum(-1)
    return kinetic + potential_energy(pos, mass, physics, backend)


@total_energy.register_fake
def _(pos, vel, mass, physics, backend):
    return pos.new_empty(pos.shape[0])


def _total_setup(ctx, inputs, output):
    pos, vel, mass, physics, backend = inputs
    ctx.save_for_backward(pos, vel, mass)
    ctx.physics, ctx.backend = physics, backend


def _total_backward(ctx, grad_energy):
    pos, vel, mass = ctx.saved_tensors
    grad_pos = _potential_gradient(pos, mass, grad_energy, ctx.physics, ctx.backend)
    grad_vel = (grad_energy[:, None, None] * mass[..., None]) * vel
    return grad_pos, grad_vel, None, None, None


total_energy.register_autograd(_total_backward, setup_context=_total_setup)


# ---------------------------------------------------------------------------------------------
# step: K fused steps; the trajectory is written only when save_trajectory (a gradient is wanted).


@torch.library.custom_op("aitimestepper::step", mutates_args=())
def step(
    pos: Tensor,
    vel: Tensor,
    mass: Tensor,
    dt: Tensor,
    steps: int,
    integrator: int,
    physics: list[float],
    backend: str,
    save_trajectory: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    out_pos, out_vel = torch.empty_like(pos), torch.empty_like(vel)
    trajectory = pos.new_empty(trajectory_shape(pos, steps, integrator) if save_trajectory else (0,))
    if pos.numel():
        kernels(backend).step(pos, vel, mass, dt, out_pos, out_vel,
                              trajectory if save_trajectory else None, steps, integrator, physics)
    return out_pos, out_vel, trajectory


@step.register_fake
def _(pos, vel, mass, dt, steps, integrator, physics, backend, save_trajectory):
    trajectory = pos.new_empty(trajectory_shape(pos, steps, integrator) if save_trajectory else (0,))
    return torch.empty_like(pos), torch.empty_like(vel), trajectory


@torch.library.custom_op("aitimestepper::step_backward", mutates_args=())
def step_backward(
    trajectory: Tensor,
    mass: Tensor,
    dt: Tensor,
    grad_pos: Tensor,
    grad_vel: Tensor,
    steps: int,
    integrator: int,
    physics: list[float],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    out_pos, out_vel, out_dt = torch.empty_like(grad_pos), torch.empty_like(grad_vel), torch.empty_like(dt)
    if grad_pos.numel():
        kernels(backend).step_backward(trajectory, mass, dt, grad_pos.contiguous(), grad_vel.contiguous(),
                                       out_pos, out_vel, out_dt, steps, integrator, physics)
    else:
        out_dt.zero_()
    return out_pos, out_vel, out_dt


@step_backward.register_fake
def _(trajectory, mass, dt, grad_pos, grad_vel, steps, integrator, physics, backend):
    return torch.empty_like(grad_pos), torch.empty_like(grad_vel), torch.empty_like(dt)


def _step_setup(ctx, inputs, output):
    pos, vel, mass, dt, steps, integrator, physics, backend, save_trajectory = inputs
    ctx.save_for_backward(output[2], mass, dt)
    ctx.saved_trajectory = save_trajectory
    ctx.steps, ctx.integrator, ctx.physics, ctx.backend = steps, integrator, physics, backend
    ctx.set_materialize_grads(True)


def _step_backward(ctx, grad_pos, grad_vel, _grad_trajectory):
    if not ctx.saved_trajectory:
        raise RuntimeError(
            "aitimestepper::step was called with save_trajectory=False, so it cannot be differentiated; "
            "call aitimestepper.ops.step with inputs that require grad"
        )
    trajectory, mass, dt = ctx.saved_tensors
    gpos, gvel, gdt = step_backward(trajectory, mass, dt, grad_pos, grad_vel, ctx.steps, ctx.integrator,
                                    ctx.physics, ctx.backend)
    return gpos, gvel, None, gdt, None, None, None, None, None


step.register_autograd(_step_backward, setup_context=_step_setup)
