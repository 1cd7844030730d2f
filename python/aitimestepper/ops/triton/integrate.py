"""The contract's step and step_backward for the Triton backend: fused kernels for small systems,
one all-pairs launch per force evaluation for larger ones.

Up to fused.FUSED_MAX_N bodies (16 to 64, by dtype and direction) a whole call is one launch
(fused.py). Above that a system's
pair work (N^2) dwarfs its O(N) state update, so the integrator runs here as a loop of
pairwise.acceleration / pairwise.acceleration_vjp launches, in exactly the substep order of the
fused kernels and of docs/kernel-contract.md: kick (h/2, reused a), drift (h), force evaluation,
kick (h/2). The forward's kicks and drifts are torch elementwise ops; the adjoint's O(N) work per
boundary is folded into the small-system VJP up to pairwise.SMALL_VJP_MAX_N bodies
(_boundary_vjp_small_kernel, one launch per boundary) and is one small kernel
(_boundary_adjoint_kernel) beside each all-pairs VJP launch above that.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch, fused, pairwise
from ._formulas import add_scaled, launch_constants, tidal_acceleration_vjp_terms

# The adjoint loop's O(N) work per boundary (the substep's drift/kick adjoint, the VJP's weight,
# the two d/d(dt) sums) runs as one kernel per boundary rather than as ~14 torch elementwise ops
# that each move the whole [B, N, D] state. Up to pairwise.SMALL_VJP_MAX_N bodies it is folded
# into the small-system VJP (_boundary_vjp_small_kernel: one launch per boundary instead of two,
# and the VJP's cotangent never written and read back); above, _boundary_adjoint_kernel runs
# beside each all-pairs VJP launch. Measurements of the three forms: bench/NOTES.md.


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


@triton.jit
def _boundary_vjp_small_kernel(x_ptr, v_ptr, a_ptr, mass_ptr, dt_ptr, gx_ptr, gv_ptr, gdt_ptr, N,
                               G_in: tl.float64, eps2_in: tl.float64, gm_in: tl.float64,
                               rx: tl.float64, ry: tl.float64, rz: tl.float64,
                               c_in: tl.float64, k_in: tl.float64,
                               D: tl.constexpr, HAS_FIELD: tl.constexpr, SUBSTEP: tl.constexpr,
                               NP: tl.constexpr, JC: tl.constexpr):
    """Boundary b of the adjoint loop for one whole system per program (N <= NP): the work of
    _boundary_adjoint_kernel and the VJP launch after it in one pass, gx and gv updated in place.

    The substep's adjoint comes first and its new gv goes to memory before a barrier. The VJP
    is linear in its cotangent w = k dt gv, so the sweep takes gv itself for sources and targets
    and the sum is scaled by k dt once per body at the end (the boundary kernel path forms w and
    rounds differently, within the tolerance both are held to). No source reads gx, so each
    program adds its VJP to its own bodies' gx at the end, reloading the old gx rather than
    holding it through the sweep: the sweep is the plain small-system VJP's, at about half the
    registers of a sweep that reads the old gx and gv and forms w per source. A program touches
    only its own system, so programs never race."""
    DTYPE = gx_ptr.dtype.element_ty
    G, eps2, gm, R = launch_constants(G_in, eps2_in, gm_in, rx, ry, rz, DTYPE)
    c = tl.full([], c_in, DTYPE)
    k = tl.full([], k_in, DTYPE)
    sys = tl.program_id(0).to(tl.int64)
    base = sys * N
    rows = base * D
    offs = tl.arange(0, NP)
    mask = offs < N
    dt = tl.load(dt_ptr + sys)
    h = c * dt
    x_own = pairwise._load_coords(x_ptr + rows, offs, mask, D, True)
    a_own = pairwise._load_coords(a_ptr + rows, offs, mask, D, True)
    gv_own = pairwise._load_coords(gv_ptr + rows, offs, mask, D, True)
    mi = tl.load(mass_ptr + base + offs, mask=mask, other=0.0)[None, :]
    gdt = tl.load(gdt_ptr + sys)
    if SUBSTEP:  # the adjoint of substep b: gdt += c <gx, v_half>, gv += h gx
        gx_own = pairwise._load_coords(gx_ptr + rows, offs, mask, D, True)
        v_own = pairwise._load_coords(v_ptr + rows, offs, mask, D, True)
        gx_v = gx_own[0] * tl.fma(0.5 * h, a_own[0], v_own[0])
        for d in tl.static_range(1, D):
            gx_v += gx_own[d] * tl.fma(0.5 * h, a_own[d], v_own[d])
        gdt = gdt + c * tl.sum(gx_v, axis=0)
        gv_new = ()
        for d in tl.static_range(D):
            gv_new = gv_new + (tl.fma(h, gx_own[d], gv_own[d]),)
            tl.store(gv_ptr + rows + offs * D + d, gv_new[d], mask=mask)
        gv_own = gv_new
    gv_a = gv_own[0] * a_own[0]
    for d in tl.static_range(1, D):
        gv_a += gv_own[d] * a_own[d]
    gdt = gdt + k * tl.sum(gv_a, axis=0)
    if SUBSTEP:
        tl.debug_barrier()  # every body's new gv is stored before any thread reads it as a source
    sums = pairwise._small_vjp_sweep(x_ptr + rows, mass_ptr + base, gv_ptr + rows, N, x_own, gv_own, mi,
                                     offs, eps2, D, NP, JC)
    vjp = ()
    for d in tl.static_range(D):
        vjp = vjp + (G * sums[d],)
    if HAS_FIELD:
        vjp = add_scaled(vjp, gm, tidal_acceleration_vjp_terms(x_own, gv_own, R, D), D)
    kdt = k * dt
    gx_old = pairwise._load_coords(gx_ptr + rows, offs, mask, D, True)
    for d in tl.static_range(D):
        tl.store(gx_ptr + rows + offs * D + d, tl.fma(kdt, vjp[d], gx_old[d]), mask=mask)
    tl.store(gdt_ptr + sys, gdt)


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
    B, N, D = gx.shape
    if N <= pairwise.SMALL_VJP_MAX_N:
        NP, JC, warps = pairwise._small_vjp_layout(N)
        phys = _launch.unpack_physics(physics)
        for b in range(S, -1, -1):
            c = weights[b % nsub] if b < S else 0.0
            c_prev = weights[(b - 1) % nsub] if b > 0 else 0.0
            _boundary_vjp_small_kernel[(B,)](
                trajectory[b, 0], trajectory[b, 1], trajectory[b, 2], mass, dt, gx, gv, gdt, N,
                *phys.scalars(), float(c), 0.5 * (c_prev + c),
                D=D, HAS_FIELD=phys.has_field, SUBSTEP=b < S, NP=NP, JC=JC, num_warps=warps)
        return
    w = torch.empty_like(gx)
    for b in range(S, -1, -1):  # boundary S, then substep b-1's adjoint with boundary b-1...
        c = weights[b % nsub] if b < S else 0.0
        c_prev = weights[(b - 1) % nsub] if b > 0 else 0.0
        _boundary_adjoint(gx, gv, trajectory[b, 1], trajectory[b, 2], dt, w, gdt, c,
                          0.5 * (c_prev + c), substep=b < S)
        pairwise.acceleration_vjp(trajectory[b, 0], mass, w, gx, physics, accumulate=True)


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
