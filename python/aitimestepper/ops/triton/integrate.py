"""The contract's step and step_backward for the Triton backend: fused kernels for small systems,
one all-pairs launch per force evaluation for larger ones.

Up to fused.FUSED_MAX_N bodies (16 to 64, by dtype and direction) a whole call is one launch
(fused.py). Above that a system's
pair work (N^2) dwarfs its O(N) state update, so the integrator runs here as a loop of
pairwise.acceleration / pairwise.acceleration_vjp launches with the kicks and drifts as torch
elementwise ops, in exactly the substep order of the fused kernels and of
docs/kernel-contract.md: kick (h/2, reused a), drift (h), force evaluation, kick (h/2).
"""
from __future__ import annotations

import torch

from . import _launch, fused, pairwise


def _per_system(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1)  # [B] -> [B, 1, 1] against [B, N, D]


def _step_launch_loop(pos, vel, mass, dt, out_pos, out_vel, trajectory, steps, weights, physics):
    x = out_pos.copy_(pos)
    v = out_vel.copy_(vel)
    # With a trajectory, each boundary's acceleration is computed straight into it.
    a = trajectory[0, 2] if trajectory is not None else torch.empty_like(pos)
    pairwise.acceleration(x, mass, a, physics)
    if trajectory is not None:
        trajectory[0, 0].copy_(x)
        trajectory[0, 1].copy_(v)
    h_by_substep = [_per_system(c * dt) for c in weights]
    boundary = 0
    for _ in range(steps):
        for h in h_by_substep:
            half = 0.5 * h
            v.addcmul_(half, a)
            x.addcmul_(h, v)
            boundary += 1
            if trajectory is not None:
                a = trajectory[boundary, 2]
            pairwise.acceleration(x, mass, a, physics)
            v.addcmul_(half, a)
            if trajectory is not None:
                trajectory[boundary, 0].copy_(x)
                trajectory[boundary, 1].copy_(v)


def _step_backward_launch_loop(trajectory, mass, dt, grad_pos, grad_vel, out_grad_pos, out_grad_vel,
                               out_grad_dt, steps, weights, physics):
    gx = out_grad_pos.copy_(grad_pos)
    gv = out_grad_vel.copy_(grad_vel)
    gdt = out_grad_dt.zero_()
    vjp = torch.empty_like(gx)

    def boundary_adjoint(b: int, k: float) -> None:
        # The kicks on both sides of boundary b share a_b: one VJP with weight k = (c_{b-1}+c_b)/2.
        pairwise.acceleration_vjp(trajectory[b, 0], mass, _per_system(k * dt) * gv, vjp, physics)
        gx.add_(vjp)
        gdt.add_(k * (gv * trajectory[b, 2]).sum((1, 2)))

    nsub = len(weights)
    S = steps * nsub
    boundary_adjoint(S, 0.5 * weights[-1])
    for b in range(S - 1, -1, -1):  # substep b, then the boundary b it starts from
        c = weights[b % nsub]
        h = _per_system(c * dt)
        v_half = torch.addcmul(trajectory[b, 1], 0.5 * h, trajectory[b, 2])
        gdt.add_(c * (gx * v_half).sum((1, 2)))
        gv.addcmul_(h, gx)
        c_prev = weights[(b - 1) % nsub] if b > 0 else 0.0
        boundary_adjoint(b, 0.5 * (c_prev + c))


def step(pos, vel, mass, dt, out_pos, out_vel, trajectory, steps: int, integrator_index: int, physics) -> None:
    """Advance pos/vel [B, N, D] by `steps` steps of size dt [B] into out_pos/out_vel; when
    `trajectory` [S+1, 3, B, N, D] is given, also record x, v, a at every substep boundary."""
    B, N, D = pos.shape
    if B == 0 or N == 0:
        return
    _launch.check_device(pos, vel, mass, dt, out_pos, out_vel, trajectory)
    weights = _launch.integrator_weights(integrator_index)
    with _launch.quiet_interpreter():
        if fused.can_fuse(N, pos.dtype, adjoint=False):
            fused.step(pos, vel, mass, dt, out_pos, out_vel, trajectory, steps, integrator_index, physics)
        else:
            _step_launch_loop(pos, vel, mass, dt, out_pos, out_vel, trajectory, int(steps), weights, physics)


def step_backward(trajectory, mass, dt, grad_pos, grad_vel, out_grad_pos, out_grad_vel, out_grad_dt,
                  steps: int, integrator_index: int, physics) -> None:
    """Adjoint of `step` from its trajectory: gradients of a loss with adjoints grad_pos/grad_vel
    [B, N, D] of the final state, with respect to the initial pos, vel [B, N, D] and dt [B]."""
    B, N, D = grad_pos.shape
    if B == 0:
        return
    if N == 0:
        out_grad_dt.zero_()
        return
    _launch.check_device(trajectory, mass, dt, grad_pos, grad_vel, out_grad_pos, out_grad_vel, out_grad_dt)
    weights = _launch.integrator_weights(integrator_index)
    with _launch.quiet_interpreter():
        if fused.can_fuse(N, grad_pos.dtype, adjoint=True):
            fused.step_backward(trajectory, mass, dt, grad_pos, grad_vel, out_grad_pos, out_grad_vel,
                                out_grad_dt, steps, integrator_index, physics)
        else:
            _step_backward_launch_loop(trajectory, mass, dt, grad_pos, grad_vel, out_grad_pos, out_grad_vel,
                                       out_grad_dt, int(steps), weights, physics)
