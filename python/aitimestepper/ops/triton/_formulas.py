"""The physics formulas as Triton device functions, shared by every Triton kernel in this package.

They restate csrc/include/aitimestepper/physics.h term by term (same operation order, same FLOP
structure) so the Triton backend computes what the C++/CUDA kernels compute. Coordinates travel
as D-tuples of equally shaped tensors (D = 2 or 3 is a constexpr, so every loop over d unrolls),
and each function works elementwise on whatever shape the caller holds: a [BLOCK_I, BLOCK_J]
pair tile, a [BLOCK_B, N_PAD, N_PAD] batch of small systems, or one [BLOCK_B] vector per body.
Conventions as in physics.h: r = x_j - x_i is the offset from body i to body j and
s2 = |r|^2 + eps^2.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def launch_constants(G, eps2, gm, rx, ry, rz, DTYPE: tl.constexpr):
    """(G, eps^2, G*M, R) in the kernel's dtype.

    The launch wrappers pass the physics as fp64 scalars so that float64 kernels lose nothing;
    float32 kernels round them once here instead of promoting every pair term to fp64.
    """
    R = (tl.full([], rx, DTYPE), tl.full([], ry, DTYPE), tl.full([], rz, DTYPE))
    return tl.full([], G, DTYPE), tl.full([], eps2, DTYPE), tl.full([], gm, DTYPE), R


@triton.jit
def inverse_distance(r, eps2, D: tl.constexpr):
    """1/s = (|r|^2 + eps^2)^{-1/2}: 3 FMA-class ops and one MUFU.RSQ in float32 (D = 3)."""
    s2 = eps2 + r[0] * r[0]
    for d in tl.static_range(1, D):
        s2 = s2 + r[d] * r[d]
    return tl.math.rsqrt(s2)


@triton.jit
def _vjp_coefficients(r, w, inv, D: tl.constexpr):
    """(s^-3, 3 s^-5 <r, w>): J(r) w = s^-3 w - 3 s^-5 <r, w> r."""
    inv2 = inv * inv
    inv3 = inv2 * inv
    rw = r[0] * w[0]
    for d in tl.static_range(1, D):
        rw = rw + r[d] * w[d]
    return inv3, (3.0 * rw) * (inv3 * inv2)


@triton.jit
def pair_vjp_term(r, w, inv, D: tl.constexpr):
    """J(r) w with J(r) = s^-3 I - 3 s^-5 r r^T, the Jacobian of r / s^3 (physics.h
    pair_acceleration_vjp). With w = m_k g_j - m_j g_k this is body j's contribution to the
    gradient at body k; a masked pair passes inv = 0 and gets exactly 0."""
    inv3, coef = _vjp_coefficients(r, w, inv, D)
    out = ()
    for d in tl.static_range(D):
        out = out + (inv3 * w[d] - coef * r[d],)
    return out


# The tidal functions spell every multiply-add as tl.fma. Left to LLVM, `a * b + c` here was
# contracted differently depending on the code around the call (the same state gave different
# last bits when the loads around it changed); explicit FMAs round the same way wherever the
# formula is inlined.


@triton.jit
def _field_offsets(x, R, D: tl.constexpr):
    """u = R - x, |u|^2, |R|^-1: the shared start of the three tidal functions."""
    u = ()
    for d in tl.static_range(D):
        u = u + (R[d] - x[d],)
    u2 = u[0] * u[0]
    R2 = R[0] * R[0]
    for d in tl.static_range(1, D):
        u2 = tl.fma(u[d], u[d], u2)
        R2 = tl.fma(R[d], R[d], R2)
    return u, u2, tl.math.rsqrt(R2)


@triton.jit
def tidal_acceleration_terms(x, R, D: tl.constexpr):
    """(R - x)/|R - x|^3 - R/|R|^3 per coordinate: the tidal acceleration over G M
    (docs/kernel-contract.md). Callers add G M times it to an acceleration with add_scaled (one FMA)."""
    u, u2, iR = _field_offsets(x, R, D)
    iu = tl.math.rsqrt(u2)
    iu3 = iu * iu * iu
    iR3 = iR * iR * iR
    out = ()
    for d in tl.static_range(D):
        out = out + (tl.fma(u[d], iu3, -(R[d] * iR3)),)
    return out


@triton.jit
def add_scaled(acc, scale, terms, D: tl.constexpr):
    """acc + scale * terms per coordinate, as explicit FMAs (see the note above)."""
    out = ()
    for d in tl.static_range(D):
        out = out + (tl.fma(scale, terms[d], acc[d]),)
    return out


@triton.jit
def tidal_potential(x, gm, R, D: tl.constexpr):
    """Phi(x) = -G M [ 1/|R - x| - 1/|R| - x.R/|R|^3 ]."""
    u, u2, iR = _field_offsets(x, R, D)
    xR = x[0] * R[0]
    for d in tl.static_range(1, D):
        xR = tl.fma(x[d], R[d], xR)
    return -gm * tl.fma(-(xR * iR * iR), iR, tl.math.rsqrt(u2) - iR)


@triton.jit
def tidal_acceleration_vjp_terms(x, g, R, D: tl.constexpr):
    """(d a_tidal / d x)^T g over G M: -(|u|^-3 g - 3 (u.g) |u|^-5 u), u = R - x. Callers add G M
    times it with add_scaled."""
    u, u2, iR = _field_offsets(x, R, D)
    ug = u[0] * g[0]
    for d in tl.static_range(1, D):
        ug = tl.fma(u[d], g[d], ug)
    iu = tl.math.rsqrt(u2)
    iu3 = iu * iu * iu
    coef = 3.0 * ug * iu3 * iu * iu
    out = ()
    for d in tl.static_range(D):
        out = out + (-tl.fma(g[d], iu3, -(coef * u[d])),)
    return out
