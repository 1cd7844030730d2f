"""The compiled ops as torch.library custom ops, with fake (meta) kernels and autograd.

Each forward op runs the kernels of one backend (the `backend` string argument picks `cpu`,
`cuda` or `triton`) on validated, flattened inputs. Each backward is an op of its own whose
kernel recomputes pair terms (acceleration_vjp, step_backward): nothing N x N is saved, and a
multi-step `step` saves its trajectory only when a gradient is wanted. Registering them with
torch.library makes autograd, torch.compile and torch.library.opcheck work on them; the
registered op is `<function>.op` (e.g. `custom.step.op`, also `torch.ops.aitimestepper.step`).

Calling a torch.library op costs 25-75 us of dispatch in eager mode, several times the kernel
for a small system, and the training loop calls these ops thousands of times per second. So
each function here takes a fast path in plain eager mode: the kernel itself when no gradient is
wanted, or an equivalent torch.autograd.Function (same setup and backward code) when one is.
Under torch.compile, tracing or a dispatch mode, it calls the registered op.

Shapes inside: pos/vel [B, N, D], mass [B, N], dt [B], energies [B]; physics is the list
(G, softening, field_mass, Rx, Ry, Rz) from validate.physics_tuple.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ..physics.integrators import INTEGRATORS
from .backends import kernels

_SUBSTEPS = {index: len(weights) for index, weights in INTEGRATORS.values()}
_PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)


def trajectory_shape(pos: Tensor, steps: int, integrator: int) -> tuple[int, ...]:
    """[S + 1, 3, B, N, D]: positions, velocities, accelerations at every substep boundary."""
    return (steps * _SUBSTEPS[integrator] + 1, 3, *pos.shape)


def _is_plain_eager(tensors: list[Tensor]) -> bool:
    """True outside torch.compile/tracing/dispatch modes, on ordinary (not fake) tensors."""
    return (
        not torch.compiler.is_compiling()
        and _get_current_dispatch_mode() is None
        and all(type(t) in _PLAIN_TENSOR_TYPES for t in tensors)
    )


def _define(name: str, kernel: Callable, fake: Callable, setup: Optional[Callable] = None,
            backward: Optional[Callable] = None) -> Callable:
    """Register `kernel` as aitimestepper::<name> and return the function the ops layer calls."""
    op = torch.library.custom_op(f"aitimestepper::{name}", mutates_args=())(kernel)
    op.register_fake(fake)
    function_class = None
    if backward is not None:
        op.register_autograd(backward, setup_context=setup)

        class _Function(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *args):
                output = kernel(*args)
                setup(ctx, args, output)
                return output

        _Function.backward = staticmethod(backward)
        _Function.__name__ = f"{name}_function"
        function_class = _Function

    def call(*args):
        tensors = [a for a in args if isinstance(a, Tensor)]
        if not _is_plain_eager(tensors):
            return op(*args)
        if function_class is not None and torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return function_class.apply(*args)
        return kernel(*args)

    call.op = op
    call.__name__ = name
    call.__doc__ = kernel.__doc__
    return call


# ---------------------------------------------------------------------------------------------
# acceleration


def _acceleration_kernel(pos: Tensor, mass: Tensor, physics: list[float], backend: str) -> Tensor:
    """Gravity (+ tidal field) of every body, [B, N, D]."""
    out = torch.empty_like(pos)
    if pos.numel():
        kernels(backend).acceleration(pos, mass, out, physics)
    return out


def _acceleration_vjp_kernel(pos: Tensor, mass: Tensor, grad_acc: Tensor, physics: list[float],
                             backend: str) -> Tensor:
    """(d acceleration / d pos)^T grad_acc, [B, N, D]."""
    out = torch.empty_like(pos)
    if pos.numel():
        kernels(backend).acceleration_vjp(pos, mass, grad_acc.contiguous(), out, physics)
    return out


def _like_pos(pos, *rest):
    return torch.empty_like(pos)


def _acceleration_setup(ctx, inputs, output):
    pos, mass, physics, backend = inputs
    ctx.save_for_backward(pos, mass)
    ctx.physics, ctx.backend = physics, backend


def _acceleration_backward(ctx, grad_acc):
    pos, mass = ctx.saved_tensors
    return acceleration_vjp(pos, mass, grad_acc, ctx.physics, ctx.backend), None, None, None


acceleration_vjp = _define("acceleration_vjp", _acceleration_vjp_kernel, _like_pos)
acceleration = _define("acceleration", _acceleration_kernel, _like_pos, _acceleration_setup,
                       _acceleration_backward)


# ---------------------------------------------------------------------------------------------
# energies: dU/dx_i = -m_i a_i and dT/dv_i = m_i v_i, so their backward is the acceleration op.


def _potential_energy_kernel(pos: Tensor, mass: Tensor, physics: list[float], backend: str) -> Tensor:
    """U per system, [B]."""
    out = pos.new_empty(pos.shape[0])
    if pos.numel():
        kernels(backend).potential_energy(pos, mass, out, physics)
    return out


def _total_energy_kernel(pos: Tensor, vel: Tensor, mass: Tensor, physics: list[float], backend: str) -> Tensor:
    """T + U per system, [B]."""
    kinetic = 0.5 * (mass * (vel * vel).sum(-1)).sum(-1)
    return kinetic + _potential_energy_kernel(pos, mass, physics, backend)


def _per_system(pos, *rest):
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


def _total_setup(ctx, inputs, output):
    pos, vel, mass, physics, backend = inputs
    ctx.save_for_backward(pos, vel, mass)
    ctx.physics, ctx.backend = physics, backend


def _total_backward(ctx, grad_energy):
    pos, vel, mass = ctx.saved_tensors
    grad_pos = _potential_gradient(pos, mass, grad_energy, ctx.physics, ctx.backend)
    grad_vel = (grad_energy[:, None, None] * mass[..., None]) * vel
    return grad_pos, grad_vel, None, None, None


potential_energy = _define("potential_energy", _potential_energy_kernel, _per_system, _potential_setup,
                           _potential_backward)
total_energy = _define("total_energy", _total_energy_kernel, _per_system, _total_setup, _total_backward)


# ---------------------------------------------------------------------------------------------
# step: K fused steps; the trajectory is written only when save_trajectory (a gradient is wanted).


def _step_kernel(
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
    """(pos, vel) after `steps` steps, and the trajectory [S+1, 3, B, N, D] (or an empty tensor)."""
    out_pos, out_vel = torch.empty_like(pos), torch.empty_like(vel)
    trajectory = pos.new_empty(trajectory_shape(pos, steps, integrator) if save_trajectory else (0,))
    if pos.numel():
        kernels(backend).step(pos, vel, mass, dt, out_pos, out_vel,
                              trajectory if save_trajectory else None, steps, integrator, physics)
    return out_pos, out_vel, trajectory


def _step_fake(pos, vel, mass, dt, steps, integrator, physics, backend, save_trajectory):
    trajectory = pos.new_empty(trajectory_shape(pos, steps, integrator) if save_trajectory else (0,))
    return torch.empty_like(pos), torch.empty_like(vel), trajectory


def _step_backward_kernel(
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
    """Adjoints of (pos, vel, dt) at the start of the steps, from those of their results."""
    out_pos, out_vel, out_dt = torch.empty_like(grad_pos), torch.empty_like(grad_vel), torch.empty_like(dt)
    if grad_pos.numel():
        kernels(backend).step_backward(trajectory, mass, dt, grad_pos.contiguous(), grad_vel.contiguous(),
                                       out_pos, out_vel, out_dt, steps, integrator, physics)
    else:
        out_dt.zero_()
    return out_pos, out_vel, out_dt


def _step_backward_fake(trajectory, mass, dt, grad_pos, grad_vel, steps, integrator, physics, backend):
    return torch.empty_like(grad_pos), torch.empty_like(grad_vel), torch.empty_like(dt)


def _step_setup(ctx, inputs, output):
    pos, vel, mass, dt, steps, integrator, physics, backend, save_trajectory = inputs
    ctx.save_for_backward(output[2], mass, dt)
    ctx.saved_trajectory = save_trajectory
    ctx.steps, ctx.integrator, ctx.physics, ctx.backend = steps, integrator, physics, backend
    # Not materialized: a zero gradient for the trajectory output would be as large as the
    # trajectory itself. A missing pos/vel gradient becomes zeros of the state's size below.
    ctx.set_materialize_grads(False)


def _step_backward(ctx, grad_pos, grad_vel, _grad_trajectory):
    if not ctx.saved_trajectory:
        raise RuntimeError(
            "aitimestepper::step was called with save_trajectory=False, so it cannot be differentiated; "
            "call aitimestepper.ops.step with inputs that require grad"
        )
    trajectory, mass, dt = ctx.saved_tensors
    if grad_pos is None and grad_vel is None:
        return None, None, None, None, None, None, None, None, None
    state = trajectory[0, 0]
    grad_pos = torch.zeros_like(state) if grad_pos is None else grad_pos
    grad_vel = torch.zeros_like(state) if grad_vel is None else grad_vel
    gpos, gvel, gdt = step_backward(trajectory, mass, dt, grad_pos, grad_vel, ctx.steps, ctx.integrator,
                                    ctx.physics, ctx.backend)
    return gpos, gvel, None, gdt, None, None, None, None, None


step_backward = _define("step_backward", _step_backward_kernel, _step_backward_fake)
step = _define("step", _step_kernel, _step_fake, _step_setup, _step_backward)
