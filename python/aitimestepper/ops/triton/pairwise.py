"""All-pairs kernels for systems of any size: acceleration, potential energy and the acceleration
VJP, each with its launch wrapper.

One program owns BLOCK_I target bodies of one system and sweeps the sources j in tiles of BLOCK_J.
Each tile is an outer product: a [BLOCK_I, BLOCK_J] block of pair terms, with the targets' data
held in registers for the whole sweep and one load per source coordinate per tile, accumulated
into [BLOCK_I, BLOCK_J] registers so that the reduction over j (lane shuffles) happens once per
program rather than once per tile. Only tiles that touch the diagonal (i == j) or run past N need
masks; the sweep is split into four ranges so that all other tiles run mask-free, which matters
because a select per pair is ~15% of a 12-instruction interaction.

The potential is reduced deterministically: each program writes one partial sum into a
[B, n_slots] buffer and torch.sum adds them, so the same input always gives bitwise the same
energy (atomics would not; the training gate compares energies).
"""
from __future__ import annotations

import os

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
    tidal_potential,
)

# Interpreter tiles: small enough to exercise every sweep range at N <= 100.
_INTERPRET_BLOCK_I = 32
_INTERPRET_BLOCK_J = 32


@triton.jit
def _load_coords(ptr, offs, mask, D: tl.constexpr, MASKED: tl.constexpr):
    """D-tuple of the coordinates of bodies `offs` (AoS rows of D values)."""
    out = ()
    for d in tl.static_range(D):
        if MASKED:
            out = out + (tl.load(ptr + offs * D + d, mask=mask, other=0.0),)
        else:
            out = out + (tl.load(ptr + offs * D + d),)
    return out


@triton.jit
def _load_sources(pos_b, mass_b, j0, N, D: tl.constexpr, BLOCK_J: tl.constexpr, MASKED: tl.constexpr):
    offs_j = j0 + tl.arange(0, BLOCK_J)
    jmask = offs_j < N
    xj = _load_coords(pos_b, offs_j, jmask, D, MASKED)
    if MASKED:
        mj = tl.load(mass_b + offs_j, mask=jmask, other=0.0)
    else:
        mj = tl.load(mass_b + offs_j)
    return offs_j, jmask, xj, mj


@triton.jit
def _tile_inverse_distance(xi, offs_i, offs_j, jmask, xj, eps2, D: tl.constexpr, MASKED: tl.constexpr):
    """r = x_j - x_i as [BLOCK_I, BLOCK_J] tiles and 1/s, zeroed on the diagonal and past N
    (eps = 0 makes 1/s infinite on the diagonal, so the zero is chosen, never multiplied)."""
    r = ()
    for d in tl.static_range(D):
        r = r + (xj[d][None, :] - xi[d],)
    inv = inverse_distance(r, eps2, D)
    if MASKED:
        inv = tl.where(jmask[None, :] & (offs_j[None, :] != offs_i[:, None]), inv, 0.0)
    return r, inv


@triton.jit
def _acceleration_tile(acc, xi, offs_i, pos_b, mass_b, j0, N, eps2,
                       D: tl.constexpr, BLOCK_J: tl.constexpr, MASKED: tl.constexpr):
    # physics.h pair_acceleration: acc += m_j r / s^3 (G is applied once per body at the end).
    offs_j, jmask, xj, mj = _load_sources(pos_b, mass_b, j0, N, D, BLOCK_J, MASKED)
    r, inv = _tile_inverse_distance(xi, offs_i, offs_j, jmask, xj, eps2, D, MASKED)
    w = mj[None, :] * inv * inv * inv
    out = ()
    for d in tl.static_range(D):
        out = out + (acc[d] + w * r[d],)
    return out


@triton.jit
def _potential_tile(acc, xi, offs_i, pos_b, mass_b, j0, N, eps2,
                    D: tl.constexpr, BLOCK_J: tl.constexpr, MASKED: tl.constexpr):
    # physics.h pair_inverse_distance, weighted by m_j here and by m_i after the sweep.
    offs_j, jmask, xj, mj = _load_sources(pos_b, mass_b, j0, N, D, BLOCK_J, MASKED)
    r, inv = _tile_inverse_distance(xi, offs_i, offs_j, jmask, xj, eps2, D, MASKED)
    return acc + mj[None, :] * inv


@triton.jit
def _vjp_tile(acc, xi, mi, gi, offs_i, pos_b, mass_b, grad_b, j0, N, eps2,
              D: tl.constexpr, BLOCK_J: tl.constexpr, MASKED: tl.constexpr):
    # physics.h pair_acceleration_vjp with k = i: w = m_i g_j - m_j g_i, acc += J(r) w.
    offs_j, jmask, xj, mj = _load_sources(pos_b, mass_b, j0, N, D, BLOCK_J, MASKED)
    gj = _load_coords(grad_b, offs_j, jmask, D, MASKED)
    r, inv = _tile_inverse_distance(xi, offs_i, offs_j, jmask, xj, eps2, D, MASKED)
    w = ()
    for d in tl.static_range(D):
        w = w + (mi * gj[d][None, :] - mj[None, :] * gi[d],)
    return _add_vjp_terms(acc, r, w, inv, D)


@triton.jit
def _add_vjp_terms(acc, r, w, inv, D: tl.constexpr):
    """acc + J(r) w, the term formed and then added. Summing it with two FMAs per coordinate
    instead saves three instructions per pair but was not faster (bench/NOTES.md)."""
    term = pair_vjp_term(r, w, inv, D)
    out = ()
    for d in tl.static_range(D):
        out = out + (acc[d] + term[d],)
    return out


@triton.jit
def _sweep_bounds(pid_i, N, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """Split [0, N) for the target block [lo, lo + BLOCK_I) into
    [0, lo) full tiles | [lo, min(hi, N)) diagonal | [hi, n_full) full | [max(hi, n_full), N) tail.
    BLOCK_I is a multiple of BLOCK_J, so lo, hi and n_full all fall on tile boundaries."""
    lo = pid_i * BLOCK_I
    hi = lo + BLOCK_I
    n_full = (N // BLOCK_J) * BLOCK_J
    return lo, hi, tl.minimum(hi, N), n_full, tl.maximum(hi, n_full)


@triton.jit
def _acceleration_kernel(pos_ptr, mass_ptr, out_ptr, N,
                         G_in: tl.float64, eps2_in: tl.float64, gm_in: tl.float64,
                         rx: tl.float64, ry: tl.float64, rz: tl.float64,
                         D: tl.constexpr, HAS_FIELD: tl.constexpr,
                         BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    DTYPE = pos_ptr.dtype.element_ty
    G, eps2, gm, R = launch_constants(G_in, eps2_in, gm_in, rx, ry, rz, DTYPE)
    base = tl.program_id(0).to(tl.int64) * N  # system b; int64: B * N * D may pass 2^31
    pid_i = tl.program_id(1)
    pos_b = pos_ptr + base * D
    mass_b = mass_ptr + base
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    imask = offs_i < N
    x_own = _load_coords(pos_b, offs_i, imask, D, True)
    xi = ()
    acc = ()
    for d in tl.static_range(D):
        xi = xi + (x_own[d][:, None],)
        acc = acc + (tl.zeros([BLOCK_I, BLOCK_J], DTYPE),)

    lo, hi, diag_end, n_full, tail = _sweep_bounds(pid_i, N, BLOCK_I, BLOCK_J)
    for j0 in range(0, lo, BLOCK_J):
        acc = _acceleration_tile(acc, xi, offs_i, pos_b, mass_b, j0, N, eps2, D, BLOCK_J, False)
    for j0 in range(lo, diag_end, BLOCK_J):
        acc = _acceleration_tile(acc, xi, offs_i, pos_b, mass_b, j0, N, eps2, D, BLOCK_J, True)
    for j0 in range(hi, n_full, BLOCK_J):
        acc = _acceleration_tile(acc, xi, offs_i, pos_b, mass_b, j0, N, eps2, D, BLOCK_J, False)
    for j0 in range(tail, N, BLOCK_J):
        acc = _acceleration_tile(acc, xi, offs_i, pos_b, mass_b, j0, N, eps2, D, BLOCK_J, True)

    a = ()
    for d in tl.static_range(D):
        a = a + (G * tl.sum(acc[d], axis=1),)
    if HAS_FIELD:
        a = add_scaled(a, gm, tidal_acceleration_terms(x_own, R, D), D)
    out_b = out_ptr + base * D
    for d in tl.static_range(D):
        tl.store(out_b + offs_i * D + d, a[d], mask=imask)


@triton.jit
def _potential_kernel(pos_ptr, mass_ptr, partial_ptr, N, n_slots,
                      G_in: tl.float64, eps2_in: tl.float64, gm_in: tl.float64,
                      rx: tl.float64, ry: tl.float64, rz: tl.float64,
                      D: tl.constexpr, HAS_FIELD: tl.constexpr,
                      BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    DTYPE = pos_ptr.dtype.element_ty
    G, eps2, gm, R = launch_constants(G_in, eps2_in, gm_in, rx, ry, rz, DTYPE)
    b = tl.program_id(0).to(tl.int64)
    base = b * N
    pid_i = tl.program_id(1)
    pos_b = pos_ptr + base * D
    mass_b = mass_ptr + base
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    imask = offs_i < N
    x_own = _load_coords(pos_b, offs_i, imask, D, True)
    mi = tl.load(mass_b + offs_i, mask=imask, other=0.0)
    xi = ()
    for d in tl.static_range(D):
        xi = xi + (x_own[d][:, None],)
    acc = tl.zeros([BLOCK_I, BLOCK_J], DTYPE)

    lo, hi, diag_end, n_full, tail = _sweep_bounds(pid_i, N, BLOCK_I, BLOCK_J)
    for j0 in range(0, lo, BLOCK_J):
        acc = _potential_tile(acc, xi, offs_i, pos_b, mass_b, j0, N, eps2, D, BLOCK_J, False)
    for j0 in range(lo, diag_end, BLOCK_J):
        acc = _potential_tile(acc, xi, offs_i, pos_b, mass_b, j0, N, eps2, D, BLOCK_J, True)
    for j0 in range(hi, n_full, BLOCK_J):
        acc = _potential_tile(acc, xi, offs_i, pos_b, mass_b, j0, N, eps2, D, BLOCK_J, False)
    for j0 in range(tail, N, BLOCK_J):
        acc = _potential_tile(acc, xi, offs_i, pos_b, mass_b, j0, N, eps2, D, BLOCK_J, True)

    # Rows past N hold garbage (possibly inf at eps = 0): select them away, never multiply.
    per_body = tl.where(imask, mi * tl.sum(acc, axis=1), 0.0)
    energy = -0.5 * G * tl.sum(per_body, axis=0)
    if HAS_FIELD:
        phi = tidal_potential(x_own, gm, R, D)
        energy = energy + tl.sum(tl.where(imask, mi * phi, 0.0), axis=0)
    tl.store(partial_ptr + b * n_slots + pid_i, energy)


@triton.jit
def _acceleration_vjp_kernel(pos_ptr, mass_ptr, grad_ptr, out_ptr, N,
                             G_in: tl.float64, eps2_in: tl.float64, gm_in: tl.float64,
                             rx: tl.float64, ry: tl.float64, rz: tl.float64,
                             D: tl.constexpr, HAS_FIELD: tl.constexpr, ACCUMULATE: tl.constexpr,
                             BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    DTYPE = pos_ptr.dtype.element_ty
    G, eps2, gm, R = launch_constants(G_in, eps2_in, gm_in, rx, ry, rz, DTYPE)
    base = tl.program_id(0).to(tl.int64) * N
    pid_i = tl.program_id(1)
    pos_b = pos_ptr + base * D
    mass_b = mass_ptr + base
    grad_b = grad_ptr + base * D
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    imask = offs_i < N
    x_own = _load_coords(pos_b, offs_i, imask, D, True)
    g_own = _load_coords(grad_b, offs_i, imask, D, True)
    mi = tl.load(mass_b + offs_i, mask=imask, other=0.0)[:, None]
    xi = ()
    gi = ()
    acc = ()
    for d in tl.static_range(D):
        xi = xi + (x_own[d][:, None],)
        gi = gi + (g_own[d][:, None],)
        acc = acc + (tl.zeros([BLOCK_I, BLOCK_J], DTYPE),)

    lo, hi, diag_end, n_full, tail = _sweep_bounds(pid_i, N, BLOCK_I, BLOCK_J)
    for j0 in range(0, lo, BLOCK_J):
        acc = _vjp_tile(acc, xi, mi, gi, offs_i, pos_b, mass_b, grad_b, j0, N, eps2, D, BLOCK_J, False)
    for j0 in range(lo, diag_end, BLOCK_J):
        acc = _vjp_tile(acc, xi, mi, gi, offs_i, pos_b, mass_b, grad_b, j0, N, eps2, D, BLOCK_J, True)
    for j0 in range(hi, n_full, BLOCK_J):
        acc = _vjp_tile(acc, xi, mi, gi, offs_i, pos_b, mass_b, grad_b, j0, N, eps2, D, BLOCK_J, False)
    for j0 in range(tail, N, BLOCK_J):
        acc = _vjp_tile(acc, xi, mi, gi, offs_i, pos_b, mass_b, grad_b, j0, N, eps2, D, BLOCK_J, True)

    grad = ()
    for d in tl.static_range(D):
        grad = grad + (G * tl.sum(acc[d], axis=1),)
    if HAS_FIELD:
        grad = add_scaled(grad, gm, tidal_acceleration_vjp_terms(x_own, g_own, R, D), D)
    out_b = out_ptr + base * D
    for d in tl.static_range(D):
        value = grad[d]
        if ACCUMULATE:  # out += VJP: one rounding, as out.add_(vjp) would give
            value = tl.load(out_b + offs_i * D + d, mask=imask, other=0.0) + value
        tl.store(out_b + offs_i * D + d, value, mask=imask)


@triton.jit
def _small_vjp_sweep(pos_b, mass_b, g_b, N, x_own, g_own, mi, offs_i, eps2,
                     D: tl.constexpr, NP: tl.constexpr, JC: tl.constexpr):
    """sum_j J(x_j - x_i)(m_i g_j - m_j g_i) for the NP targets of one system (without G), the
    sources j in chunks of JC: [JC (j), NP (i)] tiles with the targets on the lanes. g_own holds
    the targets' g as loaded from g_b.

    Only the i == j pair and padded sources are selected away. Padded targets (i >= N, loaded
    as zeros) compute terms too, possibly inf or NaN, but each target's sum is its own column
    and no store writes theirs: one select per pair fewer (at N = 64, float32: 350 -> 342
    instructions per 4-source chunk)."""
    DTYPE = pos_b.dtype.element_ty
    xi = ()
    gi = ()
    acc = ()
    for d in tl.static_range(D):
        xi = xi + (x_own[d][None, :],)
        gi = gi + (g_own[d][None, :],)
        acc = acc + (tl.zeros([JC, NP], DTYPE),)
    for j0 in range(0, N, JC):  # a run-time loop: one chunk's terms live at a time
        offs_j = j0 + tl.arange(0, JC)
        jmask = offs_j < N
        xj = _load_coords(pos_b, offs_j, jmask, D, True)
        gj = _load_coords(g_b, offs_j, jmask, D, True)
        mj = tl.load(mass_b + offs_j, mask=jmask, other=0.0)[:, None]
        r = ()
        w = ()
        for d in tl.static_range(D):
            r = r + (xj[d][:, None] - xi[d],)
            w = w + (mi * gj[d][:, None] - mj * gi[d],)
        valid = jmask[:, None] & (offs_j[:, None] != offs_i[None, :])
        inv = tl.where(valid, inverse_distance(r, eps2, D), 0.0)  # chosen, never multiplied
        acc = _add_vjp_terms(acc, r, w, inv, D)
    out = ()
    for d in tl.static_range(D):
        out = out + (tl.sum(acc[d], axis=0),)
    return out


@triton.jit
def _acceleration_vjp_small_kernel(pos_ptr, mass_ptr, grad_ptr, out_ptr, N,
                                   G_in: tl.float64, eps2_in: tl.float64, gm_in: tl.float64,
                                   rx: tl.float64, ry: tl.float64, rz: tl.float64,
                                   D: tl.constexpr, HAS_FIELD: tl.constexpr, ACCUMULATE: tl.constexpr,
                                   NP: tl.constexpr, JC: tl.constexpr):
    """The VJP of one whole system (N <= NP) per program, sources j in chunks of JC.

    Pair terms are [JC (j), NP (i)] tiles with i on the fastest axis, so the lanes of a warp hold
    targets and each thread sums its sources in registers; the sum across the chunk's rows (and
    warps) happens once per program, after the sweep. The all-pairs kernel above puts lanes on j
    instead, and for a system of a few dozen bodies its lane-shuffle reduction over j, once per
    program of only one or two tiles, costs about as much as the pair terms."""
    DTYPE = pos_ptr.dtype.element_ty
    G, eps2, gm, R = launch_constants(G_in, eps2_in, gm_in, rx, ry, rz, DTYPE)
    base = tl.program_id(0).to(tl.int64) * N
    pos_b = pos_ptr + base * D
    mass_b = mass_ptr + base
    grad_b = grad_ptr + base * D
    offs_i = tl.arange(0, NP)
    imask = offs_i < N
    x_own = _load_coords(pos_b, offs_i, imask, D, True)
    g_own = _load_coords(grad_b, offs_i, imask, D, True)
    mi = tl.load(mass_b + offs_i, mask=imask, other=0.0)[None, :]
    sums = _small_vjp_sweep(pos_b, mass_b, grad_b, N, x_own, g_own, mi, offs_i, eps2, D, NP, JC)
    grad = ()
    for d in tl.static_range(D):
        grad = grad + (G * sums[d],)
    if HAS_FIELD:
        grad = add_scaled(grad, gm, tidal_acceleration_vjp_terms(x_own, g_own, R, D), D)
    out_b = out_ptr + base * D
    for d in tl.static_range(D):
        value = grad[d]
        if ACCUMULATE:
            value = tl.load(out_b + offs_i * D + d, mask=imask, other=0.0) + value
        tl.store(out_b + offs_i * D + d, value, mask=imask)


# Systems up to this many bodies take _acceleration_vjp_small_kernel, larger ones the all-pairs
# kernel (whose lane-shuffle reduction over j costs as much as the pair terms for a system of a
# few dozen bodies). A dispatch limit, not a variant: tests lower it to reach the all-pairs
# kernel at interpreter sizes.
SMALL_VJP_MAX_N = 64


def _small_vjp_layout(N: int) -> tuple[int, int, int]:
    """(NP, JC, num_warps): one warp per system, a [JC, NP] pair tile of 256 slots, 8 per thread.

    Small programs win: a whole system per program leaves few tiles to overlap within one, so
    many resident programs per SM must hide the loads' latency instead. But not the smallest:
    2-source chunks halve the registers and still ran slower than 4 (the sweep of (JC, warps)
    is in bench/NOTES.md)."""
    NP = max(16, triton.next_power_of_2(N))
    return NP, max(1, 256 // NP), 1


# GPU tile configurations (BLOCK_I a multiple of BLOCK_J). Lanes run along j and warps along i, so
# a thread holds BLOCK_I / num_warps targets and reuses each loaded source for all of them. These
# all measured within 10% of each other at large N; 128 x 32 on 8 warps (16 targets a thread)
# measured 30% slower and is left out (bench/NOTES.md); the VJP spills at 128 x 32 on 4 warps,
# which the autotuner sees as slow.
_GPU_CONFIGS = [
    triton.Config({"BLOCK_I": 32, "BLOCK_J": 32}, num_warps=4),
    triton.Config({"BLOCK_I": 64, "BLOCK_J": 32}, num_warps=4),
    triton.Config({"BLOCK_I": 64, "BLOCK_J": 32}, num_warps=8),
    triton.Config({"BLOCK_I": 128, "BLOCK_J": 32}, num_warps=4),
    triton.Config({"BLOCK_I": 256, "BLOCK_J": 32}, num_warps=8),
]
# Without autotuning (AITS_TRITON_AUTOTUNE=0: no timing runs on the first call of each N, and the
# same tile on every run) every kernel takes the tile that measured fastest: 8 targets a thread.
_AUTOTUNE = os.environ.get("AITS_TRITON_AUTOTUNE", "1") != "0"
_DEFAULT_TILE = {torch.float32: (32, 32, 4), torch.float64: (32, 32, 4)}
# Fewest targets any launch path puts in a block: sizes the potential's partial-sum buffer.
_MIN_BLOCK_I = min([c.kwargs["BLOCK_I"] for c in _GPU_CONFIGS] + [_INTERPRET_BLOCK_I]
                   + [block_j for _, block_j, _ in _DEFAULT_TILE.values()])


def _useful_configs(configs, named_args, **kwargs):
    """Skip target blocks far larger than the system: they only add masked rows."""
    limit = max(32, triton.next_power_of_2(named_args["N"]))
    return [c for c in configs if c.kwargs["BLOCK_I"] <= limit] or configs[:1]


# Autotuned variants exist only for compiled kernels (tuning interpreted kernels would run every
# configuration through numpy). Keyed on N and D; dtypes join the key automatically.
if not _launch.INTERPRET:
    _tune = dict(key=["N", "D"], prune_configs_by={"early_config_prune": _useful_configs})
    _acceleration_tuned = triton.autotune(_GPU_CONFIGS, **_tune)(_acceleration_kernel)
    _potential_tuned = triton.autotune(_GPU_CONFIGS, reset_to_zero=["partial_ptr"], **_tune)(_potential_kernel)
    # With ACCUMULATE the kernel adds into out, so tuning trials must each start from its value.
    _vjp_tuned = triton.autotune(_GPU_CONFIGS, restore_value=["out_ptr"], **_tune)(_acceleration_vjp_kernel)


def _launch_pairwise(kernel, tuned, tensors, B: int, N: int, D: int, phys: _launch.Physics, extra=(),
                     **constexprs):
    args = (*tensors, N, *extra, *phys.scalars())
    constexprs.update(D=D, HAS_FIELD=phys.has_field)
    if _launch.INTERPRET:
        with _launch.quiet_interpreter():
            kernel[(B, triton.cdiv(N, _INTERPRET_BLOCK_I))](
                *args, **constexprs, BLOCK_I=_INTERPRET_BLOCK_I, BLOCK_J=_INTERPRET_BLOCK_J)
    elif not _AUTOTUNE:
        block_i, block_j, warps = _DEFAULT_TILE[tensors[0].dtype]
        fit = max(block_j, triton.next_power_of_2(N))
        if fit < block_i:  # small systems: shrink the target block and its warps together
            warps = max(1, warps * fit // block_i)
            block_i = fit
        kernel[(B, triton.cdiv(N, block_i))](
            *args, **constexprs, BLOCK_I=block_i, BLOCK_J=block_j, num_warps=warps)
    else:
        tuned[lambda meta: (B, triton.cdiv(N, meta["BLOCK_I"]))](*args, **constexprs)


def acceleration(pos: torch.Tensor, mass: torch.Tensor, out: torch.Tensor, physics) -> None:
    """out[B, N, D] = softened gravity (+ tidal field) at pos[B, N, D] with masses mass[B, N]."""
    B, N, D = pos.shape
    if B == 0 or N == 0:
        return
    _launch.check_device(pos, mass, out)
    tuned = None if _launch.INTERPRET else _acceleration_tuned
    _launch_pairwise(_acceleration_kernel, tuned, (pos, mass, out), B, N, D, _launch.unpack_physics(physics))


def potential_energy(pos: torch.Tensor, mass: torch.Tensor, out: torch.Tensor, physics) -> None:
    """out[B] = -G sum_{i<j} m_i m_j / s_ij (+ sum_i m_i Phi(x_i))."""
    B, N, D = pos.shape
    if B == 0:
        return
    if N == 0:
        out.zero_()
        return
    _launch.check_device(pos, mass, out)
    # One slot per target block of the smallest tile any path may pick; unused slots stay zero.
    n_slots = triton.cdiv(N, _MIN_BLOCK_I)
    partial = torch.zeros((B, n_slots), dtype=pos.dtype, device=pos.device)
    tuned = None if _launch.INTERPRET else _potential_tuned
    _launch_pairwise(_potential_kernel, tuned, (pos, mass, partial), B, N, D,
                     _launch.unpack_physics(physics), extra=(n_slots,))
    torch.sum(partial, dim=1, out=out)


def acceleration_vjp(pos: torch.Tensor, mass: torch.Tensor, grad_acc: torch.Tensor, out: torch.Tensor, physics,
                     accumulate: bool = False) -> None:
    """out[B, N, D] = (d acceleration / d pos)^T grad_acc, pair terms and tidal field (out += ...
    with accumulate: the adjoint loop adds each boundary's VJP into its running gradient)."""
    B, N, D = pos.shape
    if B == 0 or N == 0:
        return
    _launch.check_device(pos, mass, grad_acc, out)
    phys = _launch.unpack_physics(physics)
    if N <= SMALL_VJP_MAX_N:
        NP, JC, warps = _small_vjp_layout(N)
        with _launch.quiet_interpreter():
            _acceleration_vjp_small_kernel[(B,)](
                pos, mass, grad_acc, out, N, *phys.scalars(), D=D, HAS_FIELD=phys.has_field,
                ACCUMULATE=accumulate, NP=NP, JC=JC, num_warps=warps)
        return
    tuned = None if _launch.INTERPRET else _vjp_tuned
    _launch_pairwise(_acceleration_vjp_kernel, tuned, (pos, mass, grad_acc, out), B, N, D, phys,
                     ACCUMULATE=accumulate)
