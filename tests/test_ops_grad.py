"""Gradients of the ops: finite differences, autograd through the reference, opcheck, memory.

Twice: `torch.autograd.gradcheck` in float64 on tiny systems (the backward
kernels against finite differences of the forward kernels), and the compiled backward kernels
against autograd through ops/reference.py at a realistic size (N = 64, B = 8, 10 steps) under
the tolerance policy. Then the path the training takes (dr/ddt for r = |E1 - E0| / |E0|), what
a step keeps for its backward (the trajectory only when a gradient is wanted, never N x N), and
`torch.library.opcheck` on every custom op.
"""
from __future__ import annotations

import pytest
import torch

import aitimestepper.ops as ops
from aitimestepper.ops import custom
from conftest import (
    System,
    assert_matches_reference,
    device_for,
    is_interpreted,
    kepler_period,
    kepler_system,
    make_system,
    tidal_field,
)

PHYSICS_VARIANTS = {
    "plain": lambda D: dict(),
    "softened_tidal_G": lambda D: dict(softening=0.05, field=tidal_field(D), G=1.3),
}


def _skip_in_interpreter_unless(backend: str, wanted: bool) -> None:
    # The Triton interpreter needs seconds per call, and gradcheck makes dozens of calls: there
    # one representative case per test runs (the full-physics variant, which takes every code
    # path the plain one does plus the field); the backward kernels are also compared with
    # autograd through the reference below. Every case runs on a GPU.
    if is_interpreted(backend) and not wanted:
        pytest.skip("triton interpreter on CPU: gradcheck runs one representative case here; all on a GPU")


def _gradcheck(function, inputs, backend):
    # Tolerances: central differences at eps = 1e-6 in float64 are good to ~1e-9 here, so a
    # backward that is off by 1e-5 relative fails. fast_mode checks one random projection
    # instead of the full Jacobian: enough to catch a wrong backward and affordable in the
    # Triton interpreter.
    return torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-7, rtol=1e-6,
                                    fast_mode=is_interpreted(backend))


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


# ---------------------------------------------------------------------------------------------
# gradcheck, float64, tiny systems


@pytest.mark.parametrize("variant", list(PHYSICS_VARIANTS))
@pytest.mark.parametrize("D", [2, 3], ids=["D2", "D3"])
def test_gradcheck_acceleration_and_energies(any_backend, D, variant):
    _skip_in_interpreter_unless(any_backend, variant != "plain" and D == 3)
    physics = PHYSICS_VARIANTS[variant](D)
    s = make_system(4, D, (2,), seed=21, vel_scale=0.5).to(device=device_for(any_backend))
    pos, vel = _leaf(s.pos), _leaf(s.vel)
    kw = dict(backend=any_backend, **physics)
    assert _gradcheck(lambda p: ops.acceleration(p, s.mass, **kw), (pos,), any_backend)
    assert _gradcheck(lambda p: ops.potential_energy(p, s.mass, **kw), (pos,), any_backend)
    assert _gradcheck(lambda p, v: ops.total_energy(p, v, s.mass, **kw), (pos, vel), any_backend)


@pytest.mark.parametrize("variant", list(PHYSICS_VARIANTS))
@pytest.mark.parametrize("integrator", ["leapfrog", "yoshida4"])
@pytest.mark.parametrize("D", [2, 3], ids=["D2", "D3"])
def test_gradcheck_multi_step(any_backend, D, integrator, variant):
    _skip_in_interpreter_unless(any_backend, variant != "plain" and D == 2 and integrator == "leapfrog")
    physics = PHYSICS_VARIANTS[variant](D)
    s = make_system(3, D, (2,), seed=22, vel_scale=0.5).to(device=device_for(any_backend))
    pos, vel = _leaf(s.pos), _leaf(s.vel)
    dt = torch.tensor([0.02, 0.035], dtype=torch.float64, device=pos.device, requires_grad=True)

    def advance(p, v, d):
        return ops.step(p, v, s.mass, d, steps=3, integrator=integrator, backend=any_backend, **physics)

    assert _gradcheck(advance, (pos, vel, dt), any_backend)


def test_gradcheck_mass_on_the_reference():
    # Only the reference differentiates masses (the compiled backends refuse; test_validation).
    s = make_system(3, 3, (2,), seed=23, vel_scale=0.5)
    mass = _leaf(s.mass)
    assert torch.autograd.gradcheck(lambda m: ops.total_energy(s.pos, s.vel, m, backend="reference"), (mass,))
    assert torch.autograd.gradcheck(
        lambda m: ops.step(s.pos, s.vel, m, 0.02, steps=2, backend="reference"), (mass,))


# ---------------------------------------------------------------------------------------------
# the compiled backward kernels against autograd through the reference, N = 64, B = 8


def _cotangents(like: System, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(like.pos.shape, generator=g, dtype=torch.float64).to(like.pos.dtype),
            torch.randn(like.pos.shape, generator=g, dtype=torch.float64).to(like.pos.dtype))


def _realistic_size(backend: str) -> tuple[int, int, int]:
    """(N, B, steps): a training-sized batch; the Triton interpreter gets a small one (same code paths)."""
    return (12, 2, 3) if is_interpreted(backend) else (64, 8, 10)


def _check_gradients(name, backend, system, dt, gradients_of):
    """gradients_of(system_on_device, dt_on_device, backend) -> tuple of gradients; compare them
    with autograd through the reference in float64 (oracle) and in float32 (tolerance)."""
    device = device_for(backend)
    dtype = system.pos.dtype
    got = gradients_of(system.to(device=device), dt.to(device), backend)
    oracle = gradients_of(system.double(), dt.double(), "reference")
    reference32 = gradients_of(system, dt, "reference") if dtype == torch.float32 else (None,) * len(oracle)
    for index, (g, o, r) in enumerate(zip(got, oracle, reference32)):
        assert g.dtype == dtype
        assert_matches_reference(g, o, r, what=f"{name} {backend} gradient #{index}")


@pytest.mark.parametrize("variant", list(PHYSICS_VARIANTS))
@pytest.mark.parametrize("integrator", ["leapfrog", "yoshida4"])
def test_step_gradients_match_reference_autograd(backend, dtype, integrator, variant):
    D, (N, B, steps) = 3, _realistic_size(backend)
    physics = PHYSICS_VARIANTS[variant](D)
    system = make_system(N, D, (B,), dtype=dtype, seed=31)
    cot_pos, cot_vel = _cotangents(system, seed=32)
    dt = (0.004 * (1.0 + 0.1 * torch.arange(B, dtype=torch.float64))).to(dtype)

    def gradients_of(s, d, name):
        pos, vel, d = _leaf(s.pos), _leaf(s.vel), _leaf(d)
        p1, v1 = ops.step(pos, vel, s.mass, d, steps=steps, integrator=integrator, backend=name, **physics)
        loss = (p1 * cot_pos.to(p1.device, p1.dtype)).sum() + (v1 * cot_vel.to(v1.device, v1.dtype)).sum()
        return torch.autograd.grad(loss, (pos, vel, d))

    _check_gradients(f"step {integrator} {variant}", backend, system, dt, gradients_of)


@pytest.mark.parametrize("variant", list(PHYSICS_VARIANTS))
@pytest.mark.parametrize("D", [2, 3], ids=["D2", "D3"])
def test_force_and_energy_gradients_match_reference_autograd(backend, dtype, D, variant):
    N, B, _ = _realistic_size(backend)
    physics = PHYSICS_VARIANTS[variant](D)
    system = make_system(N, D, (B,), dtype=dtype, seed=33, vel_scale=0.5)
    cot_acc, _ = _cotangents(system, seed=34)
    weights = torch.linspace(0.5, 1.5, B, dtype=torch.float64).to(dtype)

    def gradients_of(s, w, name):
        pos, vel = _leaf(s.pos), _leaf(s.vel)
        acc = ops.acceleration(pos, s.mass, backend=name, **physics)
        (g_acc,) = torch.autograd.grad((acc * cot_acc.to(acc.device, acc.dtype)).sum(), (pos,))
        U = ops.potential_energy(pos, s.mass, backend=name, **physics)
        (g_U,) = torch.autograd.grad((U * w).sum(), (pos,))
        E = ops.total_energy(pos, vel, s.mass, backend=name, **physics)
        g_E_pos, g_E_vel = torch.autograd.grad((E * w).sum(), (pos, vel))
        return g_acc, g_U, g_E_pos, g_E_vel

    _check_gradients(f"forces/energies D={D} {variant}", backend, system, weights, gradients_of)


def test_multi_step_gradient_equals_chained_single_steps(backend):
    # The fused backward over K steps must be the chain rule over K single-step calls.
    s = make_system(10, 3, (3,), seed=35).to(device=device_for(backend))
    cot_pos, cot_vel = (c.to(s.pos.device) for c in _cotangents(s, seed=36))
    for integrator in ("leapfrog", "yoshida4"):
        results = []
        for chained in (False, True):
            pos, vel = _leaf(s.pos), _leaf(s.vel)
            dt = torch.full((3,), 0.01, dtype=torch.float64, device=pos.device, requires_grad=True)
            if chained:
                p, v = pos, vel
                for _ in range(5):
                    p, v = ops.step(p, v, s.mass, dt, integrator=integrator, backend=backend)
            else:
                p, v = ops.step(pos, vel, s.mass, dt, steps=5, integrator=integrator, backend=backend)
            results.append(torch.autograd.grad((p * cot_pos).sum() + (v * cot_vel).sum(), (pos, vel, dt)))
        for fused, chain, name in zip(*results, ("pos", "vel", "dt")):
            assert_matches_reference(fused, chain, what=f"{integrator} d/d{name}")


# ---------------------------------------------------------------------------------------------
# the training path: r = |E(step(x, v, dt)) - E0| / |E0|, differentiated with respect to dt


def _relative_energy_error(s: System, dt: torch.Tensor, backend: str, steps: int = 10) -> torch.Tensor:
    E0 = ops.total_energy(s.pos, s.vel, s.mass, backend=backend)
    pos, vel = ops.step(s.pos, s.vel, s.mass, dt, steps=steps, backend=backend)
    E1 = ops.total_energy(pos, vel, s.mass, backend=backend)
    return (E1 - E0).abs() / E0.abs()


def test_training_path_value_and_dt_gradient_match_reference(backend):
    # Kepler orbits (what the training integrates) with dt = 1/50 .. 1/70 of a period over 10
    # steps, so that r >= 1e-3: r is a difference of energies, and at much smaller r the float64
    # round-off of E itself (~1e-16 |E|) would dominate the comparison.
    s = kepler_system([0.1, 0.3, 0.5, 0.6])
    dt = kepler_period() / torch.tensor([50.0, 55.0, 60.0, 70.0], dtype=torch.float64)
    values = {}
    for name in ("reference", backend):
        system = s.to(device=device_for(name))
        d = _leaf(dt.to(system.pos.device))
        r = _relative_energy_error(system, d, name)
        (grad,) = torch.autograd.grad(r.sum(), (d,))
        values[name] = (r.detach(), grad)
    assert bool((values["reference"][0] > 1e-3).all()), f"r = {values['reference'][0]}: too small to compare"
    assert_matches_reference(values[backend][0], values["reference"][0], what="r")
    assert_matches_reference(values[backend][1], values["reference"][1], what="dr/ddt")


def test_gradcheck_training_path(any_backend):
    s = kepler_system([0.2, 0.5]).to(device=device_for(any_backend))
    dt = torch.tensor([0.1, 0.12], dtype=torch.float64, device=s.pos.device, requires_grad=True)
    assert _gradcheck(lambda d: _relative_energy_error(s, d, any_backend, steps=4), (dt,), any_backend)


# ---------------------------------------------------------------------------------------------
# what a step keeps: the trajectory only when a gradient is wanted, never N x N


class _KernelSpy:
    """Wraps a backend's kernel table and records the trajectory buffer each `step` call gets."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.trajectories: list = []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def step(self, pos, vel, mass, dt, out_pos, out_vel, trajectory, *rest):
        self.trajectories.append(None if trajectory is None else tuple(trajectory.shape))
        return self._inner.step(pos, vel, mass, dt, out_pos, out_vel, trajectory, *rest)


@pytest.fixture
def kernel_spy(monkeypatch, backend):
    spy = _KernelSpy(custom.kernels(backend))
    monkeypatch.setattr(custom, "kernels", lambda name: spy)
    return spy


def test_step_without_grad_keeps_no_trajectory(backend, kernel_spy):
    s = make_system(8, 3, (2,), seed=51).to(device=device_for(backend))
    pos, vel = ops.step(s.pos, s.vel, s.mass, 0.01, steps=7, integrator="yoshida4", backend=backend)
    assert pos.grad_fn is None and vel.grad_fn is None and not pos.requires_grad
    # Inputs that require grad under no_grad(): still nothing to keep.
    with torch.no_grad():
        pos, vel = ops.step(_leaf(s.pos), _leaf(s.vel), s.mass, 0.01, steps=7, backend=backend)
    assert pos.grad_fn is None and vel.grad_fn is None
    assert kernel_spy.trajectories == [None, None]


def test_step_with_grad_keeps_only_the_trajectory(backend, kernel_spy):
    B, N, D, steps = 2, 8, 3, 7
    s = make_system(N, D, (B,), seed=52).to(device=device_for(backend))
    dt = torch.full((B,), 0.01, dtype=torch.float64, device=s.pos.device, requires_grad=True)
    saved: list[torch.Size] = []

    def pack(t):
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pos, vel = ops.step(s.pos, s.vel, s.mass, dt, steps=steps, integrator="yoshida4", backend=backend)
    substeps = steps * 3
    trajectory = (substeps + 1, 3, B, N, D)
    assert kernel_spy.trajectories == [trajectory]
    assert pos.grad_fn is not None
    # Besides the trajectory only O(B N) tensors (masses, dt); no N x N pair storage.
    others = [shape for shape in saved if tuple(shape) != trajectory]
    assert len(others) == len(saved) - 1, f"saved tensors {saved}"
    assert all(torch.Size(shape).numel() <= B * N * D for shape in others), f"saved tensors {saved}"


def test_acceleration_backward_saves_no_pair_tensors(backend):
    B, N, D = 2, 64, 3
    s = make_system(N, D, (B,), seed=53).to(device=device_for(backend))
    saved: list[torch.Size] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        pos = _leaf(s.pos)
        ops.total_energy(pos, _leaf(s.vel), s.mass, backend=backend)
        ops.acceleration(pos, s.mass, backend=backend)
    assert saved and all(torch.Size(shape).numel() <= B * N * D for shape in saved), f"saved tensors {saved}"


# ---------------------------------------------------------------------------------------------
# torch.library.opcheck on every custom op


OPCHECK_CASES = ("acceleration", "acceleration_vjp", "potential_energy", "total_energy",
                 "step_save_trajectory", "step_no_trajectory", "step_backward")


def _opcheck_arguments(case: str, backend: str, integrator: int = 1):
    s = make_system(4, 3, (2,), seed=61, vel_scale=0.5).to(device=device_for(backend))
    pos, vel, mass = (t.contiguous() for t in (s.pos, s.vel, s.mass))
    dt = torch.tensor([0.01, 0.02], dtype=torch.float64, device=pos.device)
    physics = [1.3, 0.05, 3.0, 2.0, -1.5, 1.0]  # G, softening, field mass, R
    grad = torch.randn(pos.shape, generator=torch.Generator().manual_seed(62), dtype=torch.float64).to(pos.device)
    if case == "acceleration":
        return custom.acceleration.op, (_leaf(pos), mass, physics, backend)
    if case == "acceleration_vjp":
        return custom.acceleration_vjp.op, (pos, mass, grad, physics, backend)
    if case == "potential_energy":
        return custom.potential_energy.op, (_leaf(pos), mass, physics, backend)
    if case == "total_energy":
        return custom.total_energy.op, (_leaf(pos), _leaf(vel), mass, physics, backend)
    if case == "step_save_trajectory":
        return custom.step.op, (_leaf(pos), _leaf(vel), mass, _leaf(dt), 2, integrator, physics, backend, True)
    if case == "step_no_trajectory":
        return custom.step.op, (pos, vel, mass, dt, 2, integrator, physics, backend, False)
    if case == "step_backward":
        _, _, trajectory = custom.step(pos, vel, mass, dt, 2, integrator, physics, backend, True)
        return custom.step_backward.op, (trajectory, mass, dt, grad, 0.5 * grad, 2, integrator, physics, backend)
    raise ValueError(case)


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck(backend, case):
    op, args = _opcheck_arguments(case, backend)
    torch.library.opcheck(op, args)


def test_step_op_without_trajectory_returns_an_empty_one(backend):
    op, args = _opcheck_arguments("step_no_trajectory", backend)
    pos, vel, trajectory = op(*args)
    assert trajectory.numel() == 0
    _, _, full = custom.step(*args[:-1], True)
    assert tuple(full.shape) == custom.trajectory_shape(args[0], 2, 1)
    # The saved trajectory starts at the inputs (copied) and ends at the outputs (recomputed
    # values may differ by round-off where a compiler contracts the two stores differently).
    assert torch.equal(full[0, 0], args[0]) and torch.equal(full[0, 1], args[1])
    assert_matches_reference(full[-1, 0], pos, what="trajectory[-1] positions vs the returned ones")
    assert_matches_reference(full[-1, 1], vel, what="trajectory[-1] velocities vs the returned ones")


@pytest.mark.parametrize("case", ["acceleration", "total_energy", "step_save_trajectory"])
def test_registered_op_gradients(backend, case):
    """gradcheck through the torch.library op itself (what torch.compile and tracing call).

    The public ops take an eager fast path (an autograd.Function sharing the same backward), so
    the registered autograd needs its own check.
    """
    if is_interpreted(backend):
        pytest.skip("the registered-op gradcheck is minutes in the Triton interpreter; the eager path's gradcheck covers triton here")
    op, args = _opcheck_arguments(case, backend)
    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def run(*leaves):
        full = list(args)
        for i, leaf in zip(positions, leaves):
            full[i] = leaf
        out = op(*full)
        return out[:2] if isinstance(out, tuple) else out  # the trajectory output has no gradient

    leaves = tuple(args[i].detach().clone().requires_grad_(True) for i in positions)
    assert torch.autograd.gradcheck(run, leaves, atol=1e-7, rtol=1e-6)
