"""Fused integration of many small systems: K steps (and their adjoint) in one launch.

One program advances BLOCK_B systems through every substep without leaving registers: positions,
velocities and the reused end-of-substep acceleration stay on chip, and global memory sees only
the initial state, the final state and, when asked for, the trajectory. Two layouts of the same
state, chosen by the constexpr UNROLL:

* UNROLL (N <= UNROLL_MAX_N = 4): every body coordinate is its own [BLOCK_B] vector, so one thread
  owns whole systems and the N(N-1)/2 pairs are unrolled at compile time. Each pair is evaluated
  once and applied to both bodies (Newton's third law: one rsqrt per pair instead of two), and
  there are no reductions across lanes; the only layout conversions are the transposes that load
  and store whole rows coalesced (see "State access" below).
* tile (UNROLL_MAX_N < N <= FUSED_MAX_N, 16 to 64 by dtype and direction): each coordinate is
  a [BLOCK_B, N_PAD] tile and the pair terms a [BLOCK_B, N_PAD(j), N_PAD(i)] block; bodies i sit
  on the fastest axis, so the sum over sources j runs inside threads (and across warps) rather
  than through lane shuffles.

Both layouts hold the state as a flat tuple of tensors (N*D vectors, or D tiles), so the
integrator below (kicks, drifts, trajectory writes, the adjoint loop) is written once. The
substep sequence and the adjoint are those of docs/kernel-contract.md; integrate.py runs the same
sequence with one launch per force evaluation for larger N.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch
from ._formulas import (
    inverse_distance,
    launch_constants,
    pair_vjp_term,
    add_scaled,
    tidal_acceleration_terms,
    tidal_acceleration_vjp_terms,
)

# Pairs are unrolled at compile time, and Triton's coalesce pass costs (memory ops) x (IR size),
# so compile time grows like N^3 (seconds at N = 4, tens of seconds for an unrolled N = 8
# adjoint); the tile layout compiles in seconds at every size.
UNROLL_MAX_N = 4

# Largest N whose [N_PAD, N_PAD] pair block still fits in registers without spilling (ptxas,
# compute capability 9.0); float64 and the adjoint (more live terms per pair) need about twice the registers.
# Above these integrate.py loops over pairwise launches instead.
FUSED_MAX_N = {
    (torch.float32, False): 64,
    (torch.float64, False): 32,
    (torch.float32, True): 32,
    (torch.float64, True): 16,
}


def can_fuse(N: int, dtype: torch.dtype, adjoint: bool) -> bool:
    return N <= FUSED_MAX_N[(dtype, adjoint)]


# The tile-layout adjoint loads boundary b-1's trajectory before it computes boundary b's VJP:
# such a program holds one or a few systems and its registers allow one or two programs per SM,
# so no other work covers the loads' latency; the prefetched tiles cost a register or two per
# thread. The unrolled layout would pay 3 N D registers and has many programs per SM, so it
# loads each boundary when it needs it.


# ---------------------------------------------------------------------------------------------
# State access: a flat tuple of N*D [BLOCK_B] vectors (UNROLL, entry i*D + d) or D [BLOCK_B, NP]
# tiles. `sys` is the int64 index of each system (trajectories pass 2^31 elements at large B).
#
# UNROLL keeps one system per thread, whose N*D values are a row of global memory. Loaded
# value by value, a warp's lanes would sit N*D elements apart and touch a sector per value.
# Instead each state moves as one [BLOCK_B, next_pow2(N*D)] tile of whole consecutive rows
# (columns >= N*D masked): a warp instruction covers whole rows, the fewest memory transactions
# a state allows, with full-sector stores. The columns are split into the per-system vectors by
# reshape/split chains (_columns; stores: join chains, _tile), which Triton lowers with layout
# conversions through shared memory, as the CUDA kernels stage their slab. Measurements against
# per-value and per-row-vector accesses are in bench/NOTES.md.


@triton.jit
def _columns(tile, K: tl.constexpr, BLOCK_B: tl.constexpr, W: tl.constexpr):
    """The first K columns of a [BLOCK_B, W] tile (W a power of two), as K [BLOCK_B] vectors.

    Each level splits every part by the lowest bit of its remaining column index (reshape to
    [BLOCK_B, w/2, 2], split) and puts the even halves before the odd ones, so after log2(W)
    levels part q holds column q (the lowest bit decided first gives the lowest bit of q)."""
    parts = (tile,)
    for level in tl.static_range(16):  # W <= 2^16
        if (W >> level) > 1:
            lo = ()
            hi = ()
            for p in tl.static_range(1 << level):
                even, odd = tl.split(tl.reshape(parts[p], [BLOCK_B, (W >> level) // 2, 2]))
                lo = lo + (even,)
                hi = hi + (odd,)
            parts = lo + hi
    out = ()
    for k in tl.static_range(K):
        out = out + (tl.reshape(parts[k], [BLOCK_B]),)
    return out


@triton.jit
def _tile(vals, K: tl.constexpr, BLOCK_B: tl.constexpr, W: tl.constexpr):
    """Inverse of _columns: K [BLOCK_B] vectors as the first K columns of a [BLOCK_B, W] tile
    (columns K.. are zero and never stored). Undoes the levels of _columns from the last."""
    parts = ()
    for q in tl.static_range(W):
        if q < K:
            parts = parts + (tl.reshape(vals[q], [BLOCK_B, 1]),)
        else:
            parts = parts + (tl.zeros([BLOCK_B, 1], vals[0].dtype),)
    for level in tl.static_range(16):  # W <= 2^16
        if (W >> level) > 1:
            joined = ()  # (W >> level) parts in, half as many out
            for p in tl.static_range((W >> level) // 2):
                pair = tl.join(parts[p], parts[p + (W >> level) // 2])
                joined = joined + (tl.reshape(pair, [BLOCK_B, 2 << level]),)
            parts = joined
    return parts[0]


@triton.constexpr_function
def _row_width(K: int) -> int:
    """Columns of a row tile: the K values of a row padded to a power of two."""
    return triton.next_power_of_2(K)


@triton.jit
def _row_tile(ptr, sys, smask, K: tl.constexpr, first: tl.constexpr, W: tl.constexpr):
    """Pointers and mask of columns [first, first + W) of the systems' K-value rows (the columns
    past K masked): a [BLOCK_B, W] tile."""
    cols = first + tl.arange(0, W)
    return ptr + sys[:, None] * K + cols[None, :], smask[:, None] & (cols < K)[None, :]


@triton.jit
def _load_bodies(ptr, sys, smask, N: tl.constexpr, D: tl.constexpr, NP: tl.constexpr,
                 UNROLL: tl.constexpr):
    row = ptr + sys * (N * D)
    out = ()
    if UNROLL:
        W: tl.constexpr = _row_width(N * D)
        ptrs, mask = _row_tile(ptr, sys, smask, N * D, 0, W)
        out = _columns(tl.load(ptrs, mask=mask, other=0.0), N * D, sys.shape[0], W)
    else:
        n = tl.arange(0, NP)
        mask = smask[:, None] & (n < N)[None, :]
        for d in tl.static_range(D):
            out = out + (tl.load(row[:, None] + n[None, :] * D + d, mask=mask, other=0.0),)
    return out


@triton.jit
def _store_bodies(ptr, sys, smask, vals, N: tl.constexpr, D: tl.constexpr, NP: tl.constexpr,
                  UNROLL: tl.constexpr):
    row = ptr + sys * (N * D)
    if UNROLL:
        W: tl.constexpr = _row_width(N * D)
        ptrs, mask = _row_tile(ptr, sys, smask, N * D, 0, W)
        tl.store(ptrs, _tile(vals, N * D, sys.shape[0], W), mask=mask)
    else:
        n = tl.arange(0, NP)
        mask = smask[:, None] & (n < N)[None, :]
        for d in tl.static_range(D):
            tl.store(row[:, None] + n[None, :] * D + d, vals[d], mask=mask)


@triton.jit
def _trajectory_slot(traj_ptr, boundary, slot: tl.constexpr, B, N: tl.constexpr, D: tl.constexpr):
    """Base pointer of trajectory[boundary, slot] ([S+1, 3, B, N, D]); int64 offsets."""
    return traj_ptr + (tl.full([], boundary, tl.int64) * 3 + slot) * B * (N * D)


@triton.jit
def _store_boundary(traj_ptr, boundary, B, sys, smask, x, v, a, N: tl.constexpr, D: tl.constexpr,
                    NP: tl.constexpr, UNROLL: tl.constexpr):
    """trajectory[boundary] = (x, v, a)."""
    _store_bodies(_trajectory_slot(traj_ptr, boundary, 0, B, N, D), sys, smask, x, N, D, NP, UNROLL)
    _store_bodies(_trajectory_slot(traj_ptr, boundary, 1, B, N, D), sys, smask, v, N, D, NP, UNROLL)
    _store_bodies(_trajectory_slot(traj_ptr, boundary, 2, B, N, D), sys, smask, a, N, D, NP, UNROLL)


@triton.jit
def _load_boundary(traj_ptr, boundary, B, sys, smask, N: tl.constexpr, D: tl.constexpr,
                   NP: tl.constexpr, UNROLL: tl.constexpr):
    """(x, v, a) = trajectory[boundary]."""
    x = _load_bodies(_trajectory_slot(traj_ptr, boundary, 0, B, N, D), sys, smask, N, D, NP, UNROLL)
    v = _load_bodies(_trajectory_slot(traj_ptr, boundary, 1, B, N, D), sys, smask, N, D, NP, UNROLL)
    a = _load_bodies(_trajectory_slot(traj_ptr, boundary, 2, B, N, D), sys, smask, N, D, NP, UNROLL)
    return x, v, a


@triton.jit
def _axpy(y, alpha, x, K: tl.constexpr):
    """y + alpha * x entrywise over a state tuple of K tensors (alpha per system).

    An explicit FMA, not a multiply-add left to the compiler: whether LLVM contracts a*x + y
    can change with the values' other uses (a trajectory store is one), and a kernel variant
    that writes the trajectory must produce bitwise the same state as one that does not (the
    adjoint also recomputes the drift velocity and must match the forward's)."""
    out = ()
    for k in tl.static_range(K):
        out = out + (tl.fma(alpha, x[k], y[k]),)
    return out


@triton.jit
def _per_system_dot(a, b, K: tl.constexpr, UNROLL: tl.constexpr):
    """<a, b> over all bodies and coordinates of each system: [BLOCK_B]."""
    s = a[0] * b[0]
    for k in tl.static_range(1, K):
        s = s + a[k] * b[k]
    if not UNROLL:
        s = tl.sum(s, axis=1)
    return s


@triton.jit
def _substep_weight(s, c0, c1, c2):
    """c_s for substep index s in [0, 3) (a runtime scalar): two selects, once per substep."""
    return tl.where(s == 0, c0, tl.where(s == 1, c1, c2))


# ---------------------------------------------------------------------------------------------
# Forces and their VJP in both layouts. The masses arrive multiplied by G (once per launch, in
# _system_setup): a_i = sum_j (G m_j) r / s^3 saves the per-body multiply of every substep.


@triton.jit
def _accelerations_unrolled(x, m, eps2, gm, R, N: tl.constexpr, D: tl.constexpr,
                            HAS_FIELD: tl.constexpr):
    acc = ()
    for k in tl.static_range(N * D):
        acc = acc + (tl.zeros_like(x[k]),)
    for i in tl.static_range(N):
        for j in tl.static_range(i + 1, N):
            r = ()
            for d in tl.static_range(D):
                r = r + (x[j * D + d] - x[i * D + d],)
            inv = inverse_distance(r, eps2, D)
            inv3 = inv * inv * inv
            w_i = m[j] * inv3  # pull on i toward j
            w_j = m[i] * inv3  # and the reaction on j
            new = ()
            for k in tl.static_range(N * D):
                if k // D == i:
                    new = new + (acc[k] + w_i * r[k % D],)
                elif k // D == j:
                    new = new + (acc[k] - w_j * r[k % D],)
                else:
                    new = new + (acc[k],)
            acc = new
    out = ()
    for i in tl.static_range(N):
        if HAS_FIELD:
            xi = ()
            for d in tl.static_range(D):
                xi = xi + (x[i * D + d],)
            ai = ()
            for d in tl.static_range(D):
                ai = ai + (acc[i * D + d],)
            out = out + add_scaled(ai, gm, tidal_acceleration_terms(xi, R, D), D)
        else:
            for d in tl.static_range(D):
                out = out + (acc[i * D + d],)
    return out


@triton.jit
def _acceleration_vjp_unrolled(x, m, g, eps2, gm, R, N: tl.constexpr, D: tl.constexpr,
                               HAS_FIELD: tl.constexpr):
    # J(r) is even in r and w flips sign with the pair's orientation, so the term at j is minus
    # the term at i: one evaluation per pair, as in the forward.
    grad = ()
    for k in tl.static_range(N * D):
        grad = grad + (tl.zeros_like(x[k]),)
    for i in tl.static_range(N):
        for j in tl.static_range(i + 1, N):
            r = ()
            w = ()
            for d in tl.static_range(D):
                r = r + (x[j * D + d] - x[i * D + d],)
                w = w + (m[i] * g[j * D + d] - m[j] * g[i * D + d],)
            inv = inverse_distance(r, eps2, D)
            t = pair_vjp_term(r, w, inv, D)
            new = ()
            for k in tl.static_range(N * D):
                if k // D == i:
                    new = new + (grad[k] + t[k % D],)
                elif k // D == j:
                    new = new + (grad[k] - t[k % D],)
                else:
                    new = new + (grad[k],)
            grad = new
    out = ()
    for i in tl.static_range(N):
        if HAS_FIELD:
            xi = ()
            gi = ()
            for d in tl.static_range(D):
                xi = xi + (x[i * D + d],)
                gi = gi + (g[i * D + d],)
            grad_i = ()
            for d in tl.static_range(D):
                grad_i = grad_i + (grad[i * D + d],)
            out = out + add_scaled(grad_i, gm, tidal_acceleration_vjp_terms(xi, gi, R, D), D)
        else:
            for d in tl.static_range(D):
                out = out + (grad[i * D + d],)
    return out


@triton.jit
def _tile_pairs(x, eps2, N: tl.constexpr, D: tl.constexpr, NP: tl.constexpr):
    """r[b, j, i] = x_j - x_i and 1/s, with 1/s = 0 for i == j and for padded bodies (so padded
    bodies neither pull nor get pulled and stay at rest)."""
    n = tl.arange(0, NP)
    valid = (n[:, None] != n[None, :]) & (n[:, None] < N) & (n[None, :] < N)
    r = ()
    for d in tl.static_range(D):
        r = r + (x[d][:, :, None] - x[d][:, None, :],)
    inv = tl.where(valid[None, :, :], inverse_distance(r, eps2, D), 0.0)
    return r, inv


@triton.jit
def _with_field_tile(vals, gm, terms, N: tl.constexpr, D: tl.constexpr, NP: tl.constexpr):
    """vals + G M terms on the real bodies of the tiles (padded ones stay at rest)."""
    real = (tl.arange(0, NP) < N)[None, :]
    masked = ()
    for d in tl.static_range(D):
        masked = masked + (tl.where(real, terms[d], 0.0),)
    return add_scaled(vals, gm, masked, D)


@triton.jit
def _accelerations_tile(x, m, eps2, gm, R, N: tl.constexpr, D: tl.constexpr,
                        NP: tl.constexpr, HAS_FIELD: tl.constexpr):
    r, inv = _tile_pairs(x, eps2, N, D, NP)
    w = m[0][:, :, None] * inv * inv * inv
    out = ()
    for d in tl.static_range(D):
        out = out + (tl.sum(w * r[d], axis=1),)
    if HAS_FIELD:
        out = _with_field_tile(out, gm, tidal_acceleration_terms(x, R, D), N, D, NP)
    return out


@triton.jit
def _acceleration_vjp_tile(x, m, g, eps2, gm, R, N: tl.constexpr, D: tl.constexpr,
                           NP: tl.constexpr, HAS_FIELD: tl.constexpr):
    r, inv = _tile_pairs(x, eps2, N, D, NP)
    mj = m[0][:, :, None]
    mi = m[0][:, None, :]
    w = ()
    for d in tl.static_range(D):
        w = w + (mi * g[d][:, :, None] - mj * g[d][:, None, :],)
    t = pair_vjp_term(r, w, inv, D)
    out = ()
    for d in tl.static_range(D):
        out = out + (tl.sum(t[d], axis=1),)
    if HAS_FIELD:
        out = _with_field_tile(out, gm, tidal_acceleration_vjp_terms(x, g, R, D), N, D, NP)
    return out


@triton.jit
def _accelerations(x, m, eps2, gm, R, N: tl.constexpr, D: tl.constexpr, NP: tl.constexpr,
                   UNROLL: tl.constexpr, HAS_FIELD: tl.constexpr):
    if UNROLL:
        return _accelerations_unrolled(x, m, eps2, gm, R, N, D, HAS_FIELD)
    else:
        return _accelerations_tile(x, m, eps2, gm, R, N, D, NP, HAS_FIELD)


@triton.jit
def _acceleration_vjp(x, m, g, eps2, gm, R, N: tl.constexpr, D: tl.constexpr,
                      NP: tl.constexpr, UNROLL: tl.constexpr, HAS_FIELD: tl.constexpr):
    if UNROLL:
        return _acceleration_vjp_unrolled(x, m, g, eps2, gm, R, N, D, HAS_FIELD)
    else:
        return _acceleration_vjp_tile(x, m, g, eps2, gm, R, N, D, NP, HAS_FIELD)


# ---------------------------------------------------------------------------------------------
# The integrator and its adjoint.


@triton.jit
def _system_setup(mass_ptr, dt_ptr, G, B, N: tl.constexpr, NP: tl.constexpr, UNROLL: tl.constexpr,
                  BLOCK_B: tl.constexpr):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    smask = offs_b < B
    sys = offs_b.to(tl.int64)
    m_raw = _load_bodies(mass_ptr, sys, smask, N, 1, NP, UNROLL)
    m = ()
    for k in tl.static_range(N if UNROLL else 1):
        m = m + (G * m_raw[k],)
    dt = tl.load(dt_ptr + offs_b, mask=smask, other=0.0)
    if UNROLL:
        dt_b = dt
    else:
        dt_b = dt[:, None]  # per system, broadcast over the body axis of the tiles
    return offs_b, smask, sys, m, dt, dt_b


# B and steps vary from call to call: specializing on them (== 1, multiple of 16) would only
# multiply compilations of a kernel whose compile takes seconds.
@triton.jit(do_not_specialize=["B", "steps"])
def _step_kernel(pos_ptr, vel_ptr, mass_ptr, dt_ptr, out_pos_ptr, out_vel_ptr, traj_ptr,
                 B, steps,
                 G_in: tl.float64, eps2_in: tl.float64, gm_in: tl.float64,
                 rx: tl.float64, ry: tl.float64, rz: tl.float64,
                 c0_in: tl.float64, c1_in: tl.float64, c2_in: tl.float64,
                 N: tl.constexpr, D: tl.constexpr, NP: tl.constexpr, NSUB: tl.constexpr,
                 UNROLL: tl.constexpr, HAS_FIELD: tl.constexpr, WRITE_TRAJECTORY: tl.constexpr,
                 BLOCK_B: tl.constexpr):
    DTYPE = pos_ptr.dtype.element_ty
    G, eps2, gm, R = launch_constants(G_in, eps2_in, gm_in, rx, ry, rz, DTYPE)
    c0 = tl.full([], c0_in, DTYPE)
    c1 = tl.full([], c1_in, DTYPE)
    c2 = tl.full([], c2_in, DTYPE)
    K: tl.constexpr = N * D if UNROLL else D
    offs_b, smask, sys, m, dt, dt_b = _system_setup(mass_ptr, dt_ptr, G, B, N, NP, UNROLL, BLOCK_B)
    x = _load_bodies(pos_ptr, sys, smask, N, D, NP, UNROLL)
    v = _load_bodies(vel_ptr, sys, smask, N, D, NP, UNROLL)
    a = _accelerations(x, m, eps2, gm, R, N, D, NP, UNROLL, HAS_FIELD)
    if WRITE_TRAJECTORY:
        _store_boundary(traj_ptr, 0, B, sys, smask, x, v, a, N, D, NP, UNROLL)
    # One runtime loop over all substeps (the weight picked by a scalar select) rather than a
    # static unroll over NSUB: the pair code then appears once in the IR, which keeps Triton's
    # compile time (dominated by passes linear in IR size per memory op) down.
    for sub in range(steps * NSUB):
        h = _substep_weight(sub % NSUB, c0, c1, c2) * dt_b
        half = 0.5 * h
        v = _axpy(v, half, a, K)  # opening kick with the reused acceleration
        x = _axpy(x, h, v, K)  # drift
        a = _accelerations(x, m, eps2, gm, R, N, D, NP, UNROLL, HAS_FIELD)
        v = _axpy(v, half, a, K)  # closing kick
        if WRITE_TRAJECTORY:
            _store_boundary(traj_ptr, sub + 1, B, sys, smask, x, v, a, N, D, NP, UNROLL)
    _store_bodies(out_pos_ptr, sys, smask, x, N, D, NP, UNROLL)
    _store_bodies(out_vel_ptr, sys, smask, v, N, D, NP, UNROLL)


@triton.jit
def _boundary_adjoint(gx, gv, gdt, x, a, m, k, dt_b, eps2, gm, R, N: tl.constexpr,
                      D: tl.constexpr, NP: tl.constexpr, K: tl.constexpr, UNROLL: tl.constexpr,
                      HAS_FIELD: tl.constexpr):
    """The kicks on both sides of a boundary share a_b: gx += J^T (k dt gv), gdt += k <gv, a_b>
    with k = (c_{b-1} + c_b) / 2 (one VJP per boundary)."""
    scaled = ()
    for q in tl.static_range(K):
        scaled = scaled + ((k * dt_b) * gv[q],)
    vjp = _acceleration_vjp(x, m, scaled, eps2, gm, R, N, D, NP, UNROLL, HAS_FIELD)
    summed = ()
    for q in tl.static_range(K):
        summed = summed + (gx[q] + vjp[q],)
    gx = summed
    gdt = gdt + k * _per_system_dot(gv, a, K, UNROLL)
    return gx, gdt


@triton.jit(do_not_specialize=["B", "steps"])
def _step_backward_kernel(traj_ptr, mass_ptr, dt_ptr, grad_pos_ptr, grad_vel_ptr,
                          out_grad_pos_ptr, out_grad_vel_ptr, out_grad_dt_ptr,
                          B, steps,
                          G_in: tl.float64, eps2_in: tl.float64, gm_in: tl.float64,
                          rx: tl.float64, ry: tl.float64, rz: tl.float64,
                          c0_in: tl.float64, c1_in: tl.float64, c2_in: tl.float64,
                          N: tl.constexpr, D: tl.constexpr, NP: tl.constexpr, NSUB: tl.constexpr,
                          UNROLL: tl.constexpr, HAS_FIELD: tl.constexpr, BLOCK_B: tl.constexpr):
    DTYPE = traj_ptr.dtype.element_ty
    G, eps2, gm, R = launch_constants(G_in, eps2_in, gm_in, rx, ry, rz, DTYPE)
    c0 = tl.full([], c0_in, DTYPE)
    c1 = tl.full([], c1_in, DTYPE)
    c2 = tl.full([], c2_in, DTYPE)
    c_last = _substep_weight(NSUB - 1, c0, c1, c2)
    K: tl.constexpr = N * D if UNROLL else D
    offs_b, smask, sys, m, dt, dt_b = _system_setup(mass_ptr, dt_ptr, G, B, N, NP, UNROLL, BLOCK_B)
    gx = _load_bodies(grad_pos_ptr, sys, smask, N, D, NP, UNROLL)
    gv = _load_bodies(grad_vel_ptr, sys, smask, N, D, NP, UNROLL)
    gdt = dt * 0.0

    # Boundary S: only the closing kick of the last substep uses a_S (c_S = 0).
    S = steps * NSUB
    x = _load_bodies(_trajectory_slot(traj_ptr, S, 0, B, N, D), sys, smask, N, D, NP, UNROLL)
    a = _load_bodies(_trajectory_slot(traj_ptr, S, 2, B, N, D), sys, smask, N, D, NP, UNROLL)
    # The tile layout loads boundary b-1's x, v, a before boundary b's VJP, so their memory
    # latency hides behind it (see the note above the state access).
    if not UNROLL:
        xn, vn, an = _load_boundary(traj_ptr, tl.maximum(S - 1, 0), B, sys, smask, N, D, NP, UNROLL)
    gx, gdt = _boundary_adjoint(gx, gv, gdt, x, a, m, 0.5 * c_last, dt_b, eps2, gm, R,
                                N, D, NP, K, UNROLL, HAS_FIELD)
    # Then, for each substep b = S-1 .. 0: its drift and kicks, then the boundary b it starts from
    # (each boundary's data is loaded once).
    for it in range(S):
        b = S - 1 - it
        c_b = _substep_weight(b % NSUB, c0, c1, c2)
        if not UNROLL:
            x, v, a = xn, vn, an
            xn, vn, an = _load_boundary(traj_ptr, tl.maximum(b - 1, 0), B, sys, smask, N, D, NP, UNROLL)
        else:
            x, v, a = _load_boundary(traj_ptr, b, B, sys, smask, N, D, NP, UNROLL)
        h = c_b * dt_b
        v_half = _axpy(v, 0.5 * h, a, K)  # the drift velocity, exactly as the forward made it
        gdt = gdt + c_b * _per_system_dot(gx, v_half, K, UNROLL)
        gv = _axpy(gv, h, gx, K)
        # c_{b-1}: the previous substep's weight, and 0 before the very first substep.
        c_prev = tl.where(b > 0, _substep_weight((b + NSUB - 1) % NSUB, c0, c1, c2), 0.0)
        gx, gdt = _boundary_adjoint(gx, gv, gdt, x, a, m, 0.5 * (c_prev + c_b), dt_b, eps2,
                                    gm, R, N, D, NP, K, UNROLL, HAS_FIELD)
    _store_bodies(out_grad_pos_ptr, sys, smask, gx, N, D, NP, UNROLL)
    _store_bodies(out_grad_vel_ptr, sys, smask, gv, N, D, NP, UNROLL)
    tl.store(out_grad_dt_ptr + offs_b, gdt, mask=smask)


# ---------------------------------------------------------------------------------------------
# Launch wrappers.


def _layout(N: int, dtype: torch.dtype, adjoint: bool):
    """(UNROLL, N_PAD, BLOCK_B, num_warps) for a fused launch over systems of N bodies."""
    if N <= UNROLL_MAX_N:
        return (True, 1, 16, 1) if _launch.INTERPRET else (True, 1, 128, 4)  # a system per thread
    NP = triton.next_power_of_2(N)
    if _launch.INTERPRET:
        return False, NP, max(1, min(4, 4096 // (NP * NP))), 1
    # Fill a warp's lanes with (system, body i) pairs so the sums over j stay inside threads
    # (splitting j across warps instead was 3x slower at N = 64: bench/NOTES.md); float64 and
    # the adjoint spread j over twice the warps to halve the registers.
    block_b = max(1, 32 // NP)
    warps = max(1, block_b * NP // 32) * (2 if dtype == torch.float64 else 1) * (2 if adjoint else 1)
    return False, NP, block_b, warps


def _weights3(integrator_index: int):
    weights = _launch.integrator_weights(integrator_index)
    if not 1 <= len(weights) <= 3:
        raise ValueError(f"the fused Triton kernels take 1 to 3 substeps per step, got {len(weights)}")
    return len(weights), tuple(weights) + (0.0,) * (3 - len(weights))


def step(pos, vel, mass, dt, out_pos, out_vel, trajectory, steps: int, integrator_index: int, physics) -> None:
    B, N, D = pos.shape
    nsub, c = _weights3(integrator_index)
    phys = _launch.unpack_physics(physics)
    unroll, NP, block_b, warps = _layout(N, pos.dtype, adjoint=False)
    grid = (triton.cdiv(B, block_b),)
    _step_kernel[grid](
        pos, vel, mass, dt, out_pos, out_vel, trajectory if trajectory is not None else pos,
        B, int(steps), *phys.scalars(), *c,
        N=N, D=D, NP=NP, NSUB=nsub, UNROLL=unroll, HAS_FIELD=phys.has_field,
        WRITE_TRAJECTORY=trajectory is not None, BLOCK_B=block_b,
        num_warps=warps,
    )


def step_backward(trajectory, mass, dt, grad_pos, grad_vel, out_grad_pos, out_grad_vel, out_grad_dt,
                  steps: int, integrator_index: int, physics) -> None:
    B, N, D = grad_pos.shape
    nsub, c = _weights3(integrator_index)
    phys = _launch.unpack_physics(physics)
    unroll, NP, block_b, warps = _layout(N, grad_pos.dtype, adjoint=True)
    grid = (triton.cdiv(B, block_b),)
    _step_backward_kernel[grid](
        trajectory, mass, dt, grad_pos, grad_vel, out_grad_pos, out_grad_vel, out_grad_dt,
        B, int(steps), *phys.scalars(), *c,
        N=N, D=D, NP=NP, NSUB=nsub, UNROLL=unroll, HAS_FIELD=phys.has_field, BLOCK_B=block_b,
        num_warps=warps,
    )
