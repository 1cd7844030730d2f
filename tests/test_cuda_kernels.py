"""The CUDA kernels of aitimestepper._core called directly, over every regime of csrc/cuda.

`_core.cuda_*` take torch CUDA tensors' data_ptr() and torch's current stream. The cases reach
each regime of docs/cuda-kernels.md: one thread per system (N <= 8), one thread per body
(N <= 256), the tiled kernels with and without a split j range, and the generic per-substep step
(N > 256); D = 2 and 3, float32 and float64, with and without softening and tidal field. Every
output is held to the float64 reference (ops/reference.py, on the GPU; step_backward against
autograd through reference.step) under the suite's one tolerance policy
(conftest.assert_matches_reference). At N = 131072 the oracle is the same formula evaluated in
row chunks, on sampled rows; test_chunked_oracle_matches_the_reference checks that oracle on
any machine.

Also checked: trajectory bookkeeping (boundaries 0 and S are the inputs and outputs bit for bit,
the same step without a trajectory gives the same result, every slot is written), bitwise
repeats, a non-default stream, and that a bad integrator index raises.
"""
from __future__ import annotations

from typing import Optional

import pytest
import torch

from aitimestepper.ops import reference as ref
from aitimestepper.physics import TidalField, integrator_index
from conftest import assert_matches_reference, require_backend

F64 = torch.float64
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
DIMS = pytest.mark.parametrize("D", [2, 3], ids=["D2", "D3"])
PHYSICS = {
    "plain": dict(G=1.0, eps=0.0, field=None),
    "soft+tidal": dict(G=0.7, eps=0.05, field=(2.5, (3.0, -1.0, 2.0))),
}


def _core():
    require_backend("cuda")
    from aitimestepper import _core as core

    return core


def _physics(name: str, D: int) -> tuple[float, float, Optional[TidalField]]:
    p = PHYSICS[name]
    field = None if p["field"] is None else TidalField(mass=p["field"][0], position=p["field"][1][:D])
    return p["G"], p["eps"], field


def _physics_tuple(G: float, eps: float, field: Optional[TidalField], D: int) -> tuple:
    return (G, eps, 0.0, 0.0, 0.0, 0.0) if field is None else (G, eps, *field.as_physics_tail(D))


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def _system(B: int, N: int, D: int, seed: int, device="cuda"):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(B, N, D, generator=gen, dtype=F64)
    vel = 0.3 * torch.randn(B, N, D, generator=gen, dtype=F64)
    mass = (0.5 + torch.rand(B, N, generator=gen, dtype=F64)) / N
    grad = torch.randn(B, N, D, generator=gen, dtype=F64)
    return (t.to(device) for t in (pos, vel, mass, grad))


# ---------------------------------------------------------------------------------------------
# the raw kernels

def k_acceleration(core, pos, mass, phys):
    B, N, D = pos.shape
    out = torch.empty_like(pos)
    core.cuda_acceleration(pos.data_ptr(), mass.data_ptr(), out.data_ptr(), B, N, D, phys, pos.dtype == F64,
                           _stream())
    return out


def k_potential(core, pos, mass, phys):
    B, N, D = pos.shape
    out = torch.empty(B, dtype=pos.dtype, device=pos.device)
    core.cuda_potential_energy(pos.data_ptr(), mass.data_ptr(), out.data_ptr(), B, N, D, phys,
                               pos.dtype == F64, _stream())
    return out


def k_vjp(core, pos, mass, g, phys):
    B, N, D = pos.shape
    out = torch.empty_like(pos)
    core.cuda_acceleration_vjp(pos.data_ptr(), mass.data_ptr(), g.data_ptr(), out.data_ptr(), B, N, D, phys,
                               pos.dtype == F64, _stream())
    return out


def _substeps(integrator: str) -> int:
    return 3 if integrator == "yoshida4" else 1


def k_step(core, pos, vel, mass, dt, steps, integrator, phys, with_traj=True):
    B, N, D = pos.shape
    out_pos, out_vel = torch.empty_like(pos), torch.empty_like(vel)
    traj = None
    if with_traj:  # NaN-filled: a slot the kernel does not write shows
        S = steps * _substeps(integrator)
        traj = torch.full((S + 1, 3, B, N, D), float("nan"), dtype=pos.dtype, device=pos.device)
    core.cuda_step(pos.data_ptr(), vel.data_ptr(), mass.data_ptr(), dt.data_ptr(), out_pos.data_ptr(),
                   out_vel.data_ptr(), 0 if traj is None else traj.data_ptr(), B, N, D, steps,
                   integrator_index(integrator), phys, pos.dtype == F64, _stream())
    return out_pos, out_vel, traj


def k_step_backward(core, traj, mass, dt, gpos, gvel, steps, integrator, phys):
    B, N, D = gpos.shape
    ogp, ogv = torch.empty_like(gpos), torch.empty_like(gvel)
    ogdt = torch.empty(B, dtype=gpos.dtype, device=gpos.device)
    core.cuda_step_backward(traj.data_ptr(), mass.data_ptr(), dt.data_ptr(), gpos.data_ptr(), gvel.data_ptr(),
                            ogp.data_ptr(), ogv.data_ptr(), ogdt.data_ptr(), B, N, D, steps,
                            integrator_index(integrator), phys, gpos.dtype == F64, _stream())
    return ogp, ogv, ogdt


# ---------------------------------------------------------------------------------------------
# oracles

def _reference_forces(pos, mass, g, G, eps, field):
    kw = dict(G=G, softening=eps, field=field)
    x = pos.detach().clone().requires_grad_(True)
    acc = ref.acceleration(x, mass, **kw)
    (vjp,) = torch.autograd.grad(acc, x, grad_outputs=g)
    return acc.detach(), ref.potential_energy(pos, mass, **kw), vjp


def _reference_step(pos, vel, mass, dt, steps, integrator, G, eps, field, gpos, gvel):
    p, v, d = (t.detach().clone().requires_grad_(True) for t in (pos, vel, dt))
    out_pos, out_vel = ref.step(p, v, mass, d, steps=steps, integrator=integrator, G=G, softening=eps, field=field)
    gp, gv, gdt = torch.autograd.grad((out_pos, out_vel), (p, v, d), grad_outputs=(gpos, gvel))
    return out_pos.detach(), out_vel.detach(), gp, gv, gdt


def _chunk_terms(pos, rows, eps):
    r = pos[None, :, :] - pos[rows][:, None, :]  # x_j - x_i
    s2 = (r * r).sum(-1) + eps * eps
    self_term = rows[:, None] == torch.arange(pos.shape[0], device=pos.device)[None, :]
    s2 = torch.where(self_term, torch.ones_like(s2), s2)
    return r, s2.rsqrt(), self_term


def chunked_acceleration(pos, mass, rows, G, eps, field, chunk=256):
    """a_i for the bodies `rows` of one system pos [N, D], in pos's dtype (the reference's formula)."""
    out = []
    for r_idx in rows.split(chunk):
        r, inv, self_term = _chunk_terms(pos, r_idx, eps)
        w = torch.where(self_term, torch.zeros_like(inv), mass[None, :] * inv ** 3)
        a = G * (w[..., None] * r).sum(1)
        if field is not None:
            a = a + ref.tidal_acceleration(pos[r_idx], field, G)
        out.append(a)
    return torch.cat(out)


def chunked_vjp(pos, mass, g, rows, G, eps, field, chunk=256):
    """(d a / d x)^T g for the bodies `rows`: G sum_j J(x_j - x_k)(m_k g_j - m_j g_k) (+ tidal)."""
    out = []
    for k_idx in rows.split(chunk):
        r, inv, self_term = _chunk_terms(pos, k_idx, eps)
        w = mass[k_idx][:, None, None] * g[None, :, :] - mass[None, :, None] * g[k_idx][:, None, :]
        rw = (r * w).sum(-1, keepdim=True)
        term = inv[..., None] ** 3 * w - 3.0 * rw * inv[..., None] ** 5 * r
        grad = G * torch.where(self_term[..., None], torch.zeros_like(term), term).sum(1)
        if field is not None:
            xk = pos[k_idx].clone().requires_grad_(True)
            (tidal,) = torch.autograd.grad(ref.tidal_acceleration(xk, field, G), xk, grad_outputs=g[k_idx])
            grad = grad + tidal
        out.append(grad)
    return torch.cat(out)


def chunked_potential(pos, mass, G, eps, field, chunk=256):
    total = torch.zeros((), dtype=pos.dtype, device=pos.device)
    for r_idx in torch.arange(pos.shape[0], device=pos.device).split(chunk):
        _, inv, self_term = _chunk_terms(pos, r_idx, eps)
        inv = torch.where(self_term, torch.zeros_like(inv), inv)
        total = total + (mass[r_idx][:, None] * mass[None, :] * inv).sum()
    energy = -0.5 * G * total
    if field is not None:
        energy = energy + (mass * ref.tidal_potential(pos, field, G)).sum()
    return energy


def test_chunked_oracle_matches_the_reference():
    """The large-N oracle is the reference's formula: equal to reference.py where both fit (CPU)."""
    for name in PHYSICS:
        G, eps, field = _physics(name, 3)
        pos, _, mass, g = _system(1, 300, 3, seed=7, device="cpu")
        rows = torch.arange(300)
        acc, pot, vjp = _reference_forces(pos, mass, g, G, eps, field)
        torch.testing.assert_close(chunked_acceleration(pos[0], mass[0], rows, G, eps, field), acc[0],
                                   rtol=1e-12, atol=0.0)
        torch.testing.assert_close(chunked_vjp(pos[0], mass[0], g[0], rows, G, eps, field), vjp[0],
                                   rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(chunked_potential(pos[0], mass[0], G, eps, field), pot[0], rtol=1e-12, atol=0.0)


# ---------------------------------------------------------------------------------------------
# forces

FORCE_CASES = [  # (N, B)
    (2, 1), (3, 257), (4, 1000), (5, 130), (7, 64), (8, 300),  # a thread per system (7, 8: float64 grouped)
    (17, 333), (64, 1), (64, 300), (100, 300),  # a thread per body
    (100, 1), (257, 3), (1025, 1), (1025, 3), (4096, 1),  # tiled, j range split
]


def _check_forces(core, B, N, D, dtype, physics, seed, sample=None):
    G, eps, field = _physics(physics, D)
    phys = _physics_tuple(G, eps, field, D)
    pos64, _, mass64, g64 = _system(B, N, D, seed)
    pos, mass, g = pos64.to(dtype), mass64.to(dtype), g64.to(dtype)
    got = (k_acceleration(core, pos, mass, phys), k_potential(core, pos, mass, phys), k_vjp(core, pos, mass, g, phys))
    sel = slice(None) if sample is None else sample
    # The oracle sees exactly the kernel's (possibly rounded) inputs.
    exact = _reference_forces(pos[sel].to(F64), mass[sel].to(F64), g[sel].to(F64), G, eps, field)
    ref32 = _reference_forces(pos[sel], mass[sel], g[sel], G, eps, field) if dtype != F64 else (None,) * 3
    for name, value, e, r in zip(("acceleration", "potential_energy", "acceleration_vjp"), got, exact, ref32):
        assert_matches_reference(value[sel], e, r, what=f"{name} N={N} B={B} D={D} {physics}")


@pytest.mark.gpu
@DTYPES
@DIMS
@pytest.mark.parametrize("physics", list(PHYSICS))
@pytest.mark.parametrize("N, B", FORCE_CASES, ids=[f"N{n}-B{b}" for n, b in FORCE_CASES])
def test_forces_match_reference(N, B, D, dtype, physics):
    _check_forces(_core(), B, N, D, dtype, physics, seed=100 + N + B)


@pytest.mark.gpu
@DTYPES
def test_forces_of_many_systems(dtype):
    """5000 systems of 1000 bodies (tiled, no j split): sampled systems against the reference."""
    core = _core()
    sample = torch.tensor([0, 1, 1777, 4998, 4999], device="cuda")
    _check_forces(core, 5000, 1000, 3, dtype, "soft+tidal", seed=11, sample=sample)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("dtype, D, physics", [(torch.float32, 3, "plain"), (F64, 3, "soft+tidal"),
                                               (torch.float32, 2, "soft+tidal")])
def test_forces_at_large_n(dtype, D, physics, n_rows=1024):
    """N = 131072, one system (the symmetric kernel where 'auto' takes it): sampled rows of the
    chunked oracle, float32 reference by the same formula in float32."""
    core = _core()
    N = 131072
    G, eps, field = _physics(physics, D)
    phys = _physics_tuple(G, eps, field, D)
    pos64, _, mass64, g64 = _system(1, N, D, seed=21)
    pos, mass, g = pos64.to(dtype), mass64.to(dtype), g64.to(dtype)
    acc, pot, vjp = k_acceleration(core, pos, mass, phys), k_potential(core, pos, mass, phys), k_vjp(core, pos, mass, g, phys)
    rows = torch.randperm(N, device="cuda")[:n_rows].sort().values
    x, m, gg = pos[0], mass[0], g[0]
    ref32 = dtype != F64
    for name, value, oracle in (
        ("acceleration", acc[0][rows], lambda t: chunked_acceleration(x.to(t), m.to(t), rows, G, eps, field)),
        ("potential_energy", pot[0], lambda t: chunked_potential(x.to(t), m.to(t), G, eps, field)),
        ("acceleration_vjp", vjp[0][rows], lambda t: chunked_vjp(x.to(t), m.to(t), gg.to(t), rows, G, eps, field)),
    ):
        assert_matches_reference(value, oracle(F64), oracle(dtype) if ref32 else None,
                                 what=f"{name} N={N} D={D} {physics}")


# ---------------------------------------------------------------------------------------------
# step and step_backward

STEP_CASES = [  # (N, B, steps, integrator)
    (2, 1, 7, "leapfrog"), (2, 300, 1, "leapfrog"), (2, 300, 7, "yoshida4"), (3, 257, 7, "yoshida4"),
    (4, 1, 7, "leapfrog"), (4, 300, 1, "leapfrog"), (4, 300, 7, "yoshida4"), (7, 130, 7, "leapfrog"),
    (8, 300, 1, "yoshida4"), (8, 300, 7, "leapfrog"), (17, 40, 1, "leapfrog"), (17, 40, 7, "yoshida4"),
    (64, 1, 7, "yoshida4"), (64, 20, 7, "leapfrog"), (64, 20, 1, "yoshida4"), (100, 3, 7, "yoshida4"),
    (257, 2, 1, "leapfrog"), (257, 2, 7, "yoshida4"),  # the generic path
    (1025, 1, 7, "leapfrog"),
]


@pytest.mark.gpu
@DTYPES
@DIMS
@pytest.mark.parametrize("N, B, steps, integrator", STEP_CASES,
                         ids=[f"N{n}-B{b}-{k}x{i}" for n, b, k, i in STEP_CASES])
def test_step_and_backward_match_reference(N, B, steps, integrator, D, dtype):
    core = _core()
    seed = 1000 + 7 * N + B + steps
    physics = list(PHYSICS)[seed % 2]
    G, eps, field = _physics(physics, D)
    phys = _physics_tuple(G, eps, field, D)
    pos64, vel64, mass64, _ = _system(B, N, D, seed)
    # Seeded like the state: in float32 the adjoint of a close encounter is ill-conditioned, and
    # the float32 reference's own error (which sets the tolerance) depends on these vectors.
    gen = torch.Generator().manual_seed(seed + 1)
    dt64 = (2e-3 * (0.5 + torch.rand(B, generator=gen, dtype=F64))).cuda()
    gp64 = torch.randn(B, N, D, generator=gen, dtype=F64).cuda()
    gv64 = torch.randn(B, N, D, generator=gen, dtype=F64).cuda()
    pos, vel, mass, dt, gp, gv = (t.to(dtype) for t in (pos64, vel64, mass64, dt64, gp64, gv64))

    out_pos, out_vel, traj = k_step(core, pos, vel, mass, dt, steps, integrator, phys)
    plain_pos, plain_vel, _ = k_step(core, pos, vel, mass, dt, steps, integrator, phys, with_traj=False)
    got = (out_pos, out_vel, *k_step_backward(core, traj, mass, dt, gp, gv, steps, integrator, phys))
    args = (steps, integrator, G, eps, field)
    exact = _reference_step(*(t.to(F64) for t in (pos, vel, mass, dt)), *args, gp.to(F64), gv.to(F64))
    ref32 = _reference_step(pos, vel, mass, dt, *args, gp, gv) if dtype != F64 else (None,) * 5
    what = f"N={N} B={B} D={D} {integrator} x{steps} {physics}"
    for name, value, e, r in zip(("pos", "vel", "grad pos", "grad vel", "grad dt"), got, exact, ref32):
        assert_matches_reference(value, e, r, what=f"{name} {what}")

    S = steps * _substeps(integrator)
    assert bool(torch.isfinite(traj).all()), f"a trajectory slot was not written: {what}"
    assert torch.equal(traj[0, 0], pos) and torch.equal(traj[0, 1], vel), what
    assert torch.equal(traj[S, 0], out_pos) and torch.equal(traj[S, 1], out_vel), what
    assert torch.equal(plain_pos, out_pos) and torch.equal(plain_vel, out_vel), f"without trajectory: {what}"
    # The recorded accelerations are those of the recorded positions.
    x_rec, m_rec = traj[:, 0].reshape(-1, N, D), mass.repeat(S + 1, 1)
    kw = dict(G=G, softening=eps, field=field)
    assert_matches_reference(traj[:, 2].reshape(-1, N, D), ref.acceleration(x_rec.to(F64), m_rec.to(F64), **kw),
                             ref.acceleration(x_rec, m_rec, **kw) if dtype != F64 else None,
                             what=f"trajectory accelerations {what}")


# ---------------------------------------------------------------------------------------------
# determinism, streams, errors

@pytest.mark.gpu
@pytest.mark.parametrize("N, B", [(4096, 1), (1025, 3), (64, 300)])
def test_repeated_calls_are_bitwise_equal(N, B):
    core = _core()
    pos, _, mass, _ = _system(B, N, 3, seed=11)
    pos, mass = pos.float(), mass.float()
    phys = _physics_tuple(1.0, 0.0, None, 3)
    assert torch.equal(k_acceleration(core, pos, mass, phys), k_acceleration(core, pos, mass, phys))
    assert torch.equal(k_potential(core, pos, mass, phys), k_potential(core, pos, mass, phys))


@pytest.mark.gpu
def test_a_non_default_stream_gives_the_same_step():
    core = _core()
    pos, vel, mass, _ = _system(300, 4, 3, seed=12)
    dt = torch.full((300,), 1e-3, dtype=F64, device="cuda")
    phys = _physics_tuple(1.0, 0.0, None, 3)
    main_pos, _, _ = k_step(core, pos, vel, mass, dt, 5, "leapfrog", phys, with_traj=False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        side_pos, _, _ = k_step(core, pos, vel, mass, dt, 5, "leapfrog", phys, with_traj=False)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert torch.equal(main_pos, side_pos)


@pytest.mark.gpu
def test_a_bad_integrator_index_raises_instead_of_launching():
    core = _core()
    with pytest.raises((ValueError, RuntimeError)):
        core.cuda_step(1, 1, 1, 1, 1, 1, 0, 1, 2, 3, 1, 7, (1.0, 0.0, 0.0, 0.0, 0.0, 0.0), False, _stream())
