"""The contract's step and step_backward for the Triton backend: fused kernels for small systems,
one all-pairs launch per force evaluation for larger ones.

Up to fused.FUSED_MAX_N bodies (16 to 64, by dtype and direction) a whole call is one launch
(fused.py). Above that a system's
pair work (N^2) dwarfs its O(N) state update, so the integrator runs here as a loop of
pairwise.acceleration / pairwise.acceleration_vjp launches, in exactly the substep order of the
fused kernels and of docs/kernel-contract.md: kick (h/2, reused a), drift (h), force evaluation,
kick (h/2). The forward's kicks and drifts are torch elementwise ops; the adjoint's O(N) work per
boundary is one small kernel (_boundary_adjoint_kernel) beside each VJP launch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch, fused, pairwise

# The adjoint loop's O(N) work per boundary (the substep's drift/kick adjoint, the VJP's weight,
# the two d/d(dt) sums) as one launch of _boundary_adjoint_kernel, with the VJP launch adding
# straight into the running gradient (True), or as the ~14 torch elementwise ops they replace
# (False). At N = 64, B = 16384 those ops moved ~13 MB each and cost
# about as much as the VJP launches themselves. Read per call, so a benchmark can time both.
FUSED_BOUNDARY = True


def _per_system(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1)  # [B] -> [B, 1, 1] against [B, N, D]


@triton.jit
def _boundary_adjoint_kernel(gx_ptr, gv_ptr, v_ptr, a_ptr, dt_ptr, w_ptr, gdt_ptr, B,
                             c_in: tl.float64, k_in: tl.float64,
                             K: tl.constexpr, CHUNK: tl.constexpr, SUBSTEP: tl.constexpr,
                             BLOCK_B: tl.constexpr):
    """Boundary b of the adjoint loop for BLOCK_B systems of K = N*D values each, CHUNK at a time.

    SUBSTEP (every boundary but the last, S): first the adjoint of substep b (weight c):
    v_half = v_b + (h/2) a_b with h = c dt, gdt += c <gx, v_half>, gv += h gx. Then the VJP
    weight of boundary b (k = (c_{b-1} + c_b)/2): w = k dt gv, and gdt += k <gv, a_b>. The caller
    launches the VJP of w at x_b and adds it to gx. Each program owns its systems' gdt (no
    atomics) and sums in a fixed order.
    """
    DTYPE = gx_ptr.dtype.element_ty
    c = tl.full([], c_in, DTYPE)
    k = tl.full([], k_in, DTYPE)
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    smask = offs_b < B
    rows = offs_b.to(tl.int64)[:, None] * K
    dt = tl.load(dt_ptr + offs_b, mask=smask, other=0.0)
    h = (c * dt)[:, None]
    kdt = (k * dt)[:, None]
    gx_v = tl.zeros([BLOCK_B], DTYPE)
    gv_a = tl.zeros([BLOCK_B], DTYPE)
    for first in range(0, K, CHUNK):
        cols = first + tl.arange(0, CHUNK)
        mask = smask[:, None] & (cols < K)[None, :]
        idx = rows + cols[None, :]
        gv = tl.load(gv_ptr + idx, mask=mask, other=0.0)
        a = tl.load(a_ptr + idx, mask=mask, other=0.0)
        if SUBSTEP:
            gx = tl.load(gx_ptr + idx, mask=mask, other=0.0)
            v = tl.load(v_ptr + idx, mask=mask, other=0.0)
            gx_v += tl.sum(gx * (v + (0.5 * h) * a), axis=1)
            gv = gv + h * gx
            tl.store(gv_ptr + idx, gv, mask=mask)
        tl.store(w_ptr + idx, kdt * gv, mask=mask)
        gv_a += tl.sum(gv * a, axis=1)
    gdt = tl.load(gdt_ptr + offs_b, mask=smask, other=0.0)
    if SUBSTEP:
        gdt = gdt + c * gx_v
    tl.store(gdt_ptr + offs_b, gdt + k * gv_a, mask=smask)


def _boundary_adjoint(gx, gv, v, a, dt, w, gdt, c: float, k: float, substep: bool) -> None:
    """_boundary_adjoint_kernel over all systems (v is not read without the substep)."""
    B, N, D = gx.shape
    chunk = min(triton.next_power_of_2(N * D), 64 if _launch.INTERPRET else 1024)
    block_b = max(1, (256 if _launch.INTERPRET else 4096) // chunk)
    _boundary_adjoint_kernel[(triton.cdiv(B, block_b),)](
        gx, gv, v, a, dt, w, gdt, B, float(c), float(k),
        K=N * D, CHUNK=chunk, SUBSTEP=substep, BLOCK_B=block_b, num_warps=4)


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
    nsub = len(weights)
    S = steps * nsub
    if FUSED_BOUNDARY:
        w = torch.empty_like(gx)
        for b in range(S, -1, -1):  # boundary S, then substep b-1's adjoint with boundary b-1...
            c = weights[b % nsub] if b < S else 0.0
            c_prev = weights[(b - 1) % nsub] if b > 0 else 0.0
            _boundary_adjoint(gx, gv, trajectory[b, 1], trajectory[b, 2], dt, w, gdt, c,
                              0.5 * (c_prev + c), substep=b < S)
            pairwise.acceleration_vjp(trajectory[b, 0], mass, w, gx, physics, accumulate=True)
        return

    vjp = torch.empty_like(gx)

    def boundary_adjoint(b: int, k: float) -> None:
        # The kicks on both sides of boundary b share a_b: one VJP with weight k = (c_{b-1}+c_b)/2.
        pairwise.acceleration_vjp(trajectory[b, 0], mass, _per_system(k * dt) * gv, vjp, physics)
        gx.add_(vjp)
        gdt.add_(k * (gv * trajectory[b, 2]).sum((1, 2)))

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
