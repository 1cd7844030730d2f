"""The Triton kernels (aitimestepper.ops.triton) against the float64 PyTorch reference.

Each of the five contract functions is called directly, on preallocated outputs, and compared
with ops/reference.py run in float64 (autograd through it for the VJP and the step adjoint),
under the suite's tolerance policy (conftest.assert_matches_reference: float64 to 1e-12
norm-wise, float32 within twice the reference's own float32 error plus one ulp).

Where there is no CUDA GPU this module switches on Triton's interpreter itself rather than
relying on conftest: TRITON_INTERPRET=1 has to be in the environment before triton *defines* the
kernels, which happens when the kernel modules load on the first call into
aitimestepper.ops.triton, so setting it at import of this module is early enough whatever
imported triton before. Interpreted kernels cost milliseconds per program and tile, hence the
small sizes (N <= 70, B <= 3).
"""
from __future__ import annotations

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from aitimestepper.ops import reference  # noqa: E402
from aitimestepper.ops import triton as tk  # noqa: E402
from aitimestepper.physics import TidalField, integrator_index, substep_weights  # noqa: E402

from conftest import assert_matches_reference  # noqa: E402

DEVICE = "cuda" if tk.mode() == "gpu" else "cpu"


def _skip_reason() -> str | None:
    ok, reason = tk.available()
    if not ok:
        return reason
    if DEVICE == "cpu":
        from aitimestepper.ops.triton import _launch

        if not _launch.INTERPRET:
            return "the Triton kernels were defined before TRITON_INTERPRET=1 was set and there is no GPU"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def _cases(sizes, extra_axes):
    """Every (N, D, dtype), with each remaining axis drawn by a fixed pseudo-random rotation, so
    all of their values are covered (checked) without the full product (the interpreter is slow)."""
    cases, seen = [], [set() for _ in extra_axes]
    for N in sizes:
        for D in (2, 3):
            for dtype in (torch.float64, torch.float32):
                pick = random.Random(1000 * N + 10 * D + (dtype == torch.float32))
                rest = [values[pick.randrange(len(values))] for values in extra_axes]
                for axis, value in zip(seen, rest):
                    axis.add(value)
                name = f"N{N}-D{D}-{str(dtype)[6:]}-" + "-".join(map(str, rest))
                cases.append(pytest.param(N, D, dtype, *rest, id=name))
    assert all(len(axis) == len(values) for axis, values in zip(seen, extra_axes)), "a value is never tested"
    return cases


def _system(B, N, D, seed=0):
    """A well-separated random system in float64 (masses ~1/N keep forces O(1))."""
    gen = torch.Generator().manual_seed(seed + 97 * N + D)
    pos = torch.randn(B, N, D, generator=gen, dtype=torch.float64)
    vel = 0.3 * torch.randn(B, N, D, generator=gen, dtype=torch.float64)
    mass = (0.5 + torch.rand(B, N, generator=gen, dtype=torch.float64)) / N
    dt = torch.tensor([0.01, 0.02, 0.005][:B], dtype=torch.float64)
    return pos, vel, mass, dt


def _field(with_field, D):
    return TidalField(mass=3.0, position=(4.0, -1.0, 2.0)[:D]) if with_field else None


def _physics(G, softening, field, D):
    tail = field.as_physics_tail(D) if field is not None else (0.0, 0.0, 0.0, 0.0)
    return (G, softening, *tail)


def _check(what, value, exact64, reference32=None):
    """The suite's tolerance policy; reference32 (the reference run in float32 on the same
    inputs) sets a float32 case's bound."""
    assert_matches_reference(value, exact64, reference32, what=what)


def _on(dtype, *tensors):
    return [t.to(device=DEVICE, dtype=dtype).contiguous() for t in tensors]


# ------------------------------------------------------------------------------------------
# Pairwise kernels: N = 17, 64, 70 cross the 32-wide interpreter tiles (diagonal, full, tail).

PAIR_CASES = _cases((2, 3, 5, 17, 64, 70), [(1, 3), (0.0, 0.1), (False, True)])


@pytest.mark.parametrize("N, D, dtype, B, softening, with_field", PAIR_CASES)
def test_acceleration_and_potential(N, D, dtype, B, softening, with_field):
    if N >= 64:
        B = 1  # the interpreter's cost grows with B * N^2
    pos, _, mass, _ = _system(B, N, D)
    field = _field(with_field, D)
    kw = dict(G=1.3, softening=softening, field=field)
    physics = _physics(1.3, softening, field, D)
    x, m = _on(dtype, pos, mass)

    acc = torch.empty_like(x)
    tk.acceleration(x, m, acc, physics)
    _check("acceleration", acc, reference.acceleration(pos, mass, **kw), reference.acceleration(x.cpu(), m.cpu(), **kw))

    energy = torch.empty(B, dtype=dtype, device=DEVICE)
    tk.potential_energy(x, m, energy, physics)
    _check("potential", energy, reference.potential_energy(pos, mass, **kw),
           reference.potential_energy(x.cpu(), m.cpu(), **kw))
    again = torch.empty_like(energy)
    tk.potential_energy(x, m, again, physics)
    assert torch.equal(energy, again), "the potential reduction must be deterministic"


def _reference_vjp(pos, mass, grad, kw):
    p = pos.clone().requires_grad_(True)
    (reference.acceleration(p, mass, **kw) * grad).sum().backward()
    return p.grad


@pytest.mark.parametrize("N, D, dtype, B, softening, with_field", PAIR_CASES)
def test_acceleration_vjp(N, D, dtype, B, softening, with_field):
    if N >= 64:
        B = 1
    pos, vel, mass, _ = _system(B, N, D)
    grad = vel / 0.3  # any O(1) cotangent
    field = _field(with_field, D)
    kw = dict(G=0.7, softening=softening, field=field)
    x, m, g = _on(dtype, pos, mass, grad)
    out = torch.empty_like(x)
    tk.acceleration_vjp(x, m, g, out, _physics(0.7, softening, field, D))
    _check("acceleration_vjp", out, _reference_vjp(pos, mass, grad, kw),
           _reference_vjp(x.cpu(), m.cpu(), g.cpu(), kw))


@pytest.mark.parametrize("N", [45, 70], ids=["small-system-kernel", "all-pairs-kernel"])
def test_acceleration_vjp_accumulates(N):
    """accumulate=True adds the VJP into out with one rounding, as out + vjp would, in both VJP
    kernels (N <= pairwise.SMALL_VJP_MAX_N and above). With the autotuner on (the default outside
    bench/gpu_check.sh's tests) N = 70 is its first call at that size; test_autotuned_launches
    checks that path on purpose."""
    from aitimestepper.ops.triton import pairwise

    assert (N <= pairwise.SMALL_VJP_MAX_N) == (N == 45)
    pos, vel, mass, _ = _system(2, N, 3, seed=11)
    x, m, g, start = _on(torch.float32, pos, mass, vel, pos.flip(-1))
    physics = _physics(1.0, 0.05, None, 3)
    out = start.clone()
    pairwise.acceleration_vjp(x, m, g, out, physics, accumulate=True)
    vjp = torch.empty_like(x)
    pairwise.acceleration_vjp(x, m, g, vjp, physics)
    assert torch.equal(out, start + vjp)


# On a GPU the pairwise kernels run on one of pairwise._GPU_CONFIGS, picked by the autotuner per
# (N, D, dtype), or on pairwise._DEFAULT_TILE with AITS_TRITON_AUTOTUNE=0 (how bench/gpu_check.sh
# runs the tests: no tuning runs in each of its workers). These two tests cover the rest: every
# tile the autotuner may pick, and the autotuned launch itself. N = 300 is a multiple of no tile
# (a partial last block everywhere) and is used by no other test, so the autotuner's first call
# at that size happens here.
GPU_TILE_N = 300


def _gpu_tiles() -> list[tuple[int, int, int]]:
    """(BLOCK_I, BLOCK_J, num_warps) of every autotune configuration (none where triton is missing)."""
    try:
        from aitimestepper.ops.triton import pairwise
    except ImportError:
        return []
    return [(c.kwargs["BLOCK_I"], c.kwargs["BLOCK_J"], c.num_warps) for c in pairwise._GPU_CONFIGS]


# One test per tile and dtype: each compiles its own kernels (seconds to tens of seconds apiece),
# so parallel workers can share them out.
@pytest.mark.compiles
@pytest.mark.parametrize("tile", _gpu_tiles(), ids=lambda tile: "{}x{}-{}w".format(*tile))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_every_gpu_tile_matches_reference(monkeypatch, dtype, tile):
    from aitimestepper.ops.triton import pairwise

    if DEVICE == "cpu":
        pytest.skip("the GPU tiles exist only for compiled kernels (the interpreter has one fixed tile)")
    monkeypatch.setattr(pairwise, "_AUTOTUNE", False)
    monkeypatch.setitem(pairwise._DEFAULT_TILE, dtype, tile)
    pos, vel, mass, _ = _system(2, GPU_TILE_N, 3, seed=13)
    field = _field(True, 3)
    kw = dict(G=0.9, softening=0.02, field=field)
    physics = _physics(0.9, 0.02, field, 3)
    x, m, g = _on(dtype, pos, mass, vel)
    exact = (reference.acceleration(pos, mass, **kw), reference.potential_energy(pos, mass, **kw),
             _reference_vjp(pos, mass, vel, kw))
    ref32 = (reference.acceleration(x.cpu(), m.cpu(), **kw), reference.potential_energy(x.cpu(), m.cpu(), **kw),
             _reference_vjp(x.cpu(), m.cpu(), g.cpu(), kw)) if dtype == torch.float32 else (None,) * 3
    acc, vjp = torch.empty_like(x), torch.empty_like(x)
    energy = torch.empty(2, dtype=dtype, device=DEVICE)
    pairwise.acceleration(x, m, acc, physics)
    pairwise.potential_energy(x, m, energy, physics)
    pairwise.acceleration_vjp(x, m, g, vjp, physics)
    for name, value, e, r in zip(("acceleration", "potential", "acceleration_vjp"), (acc, energy, vjp), exact, ref32):
        _check(f"{name} on tile (BLOCK_I, BLOCK_J, warps) = {tile}", value, e, r)


@pytest.mark.compiles
def test_autotuned_launches(monkeypatch):
    """The autotuner times every tile on the real buffers: its trial launches must leave no trace
    (the potential's partial sums reset to zero, the accumulating VJP's out restored), and the
    tile it keeps must give the same bits on the next call."""
    from aitimestepper.ops.triton import pairwise

    if DEVICE == "cpu":
        pytest.skip("the autotuner runs only compiled kernels")
    monkeypatch.setattr(pairwise, "_AUTOTUNE", True)
    pos, vel, mass, _ = _system(2, GPU_TILE_N, 3, seed=14)
    kw = dict(G=1.0, softening=0.05, field=None)
    physics = _physics(1.0, 0.05, None, 3)
    x, m, g, start = _on(torch.float32, pos, mass, vel, pos.flip(-1))

    acc = torch.empty_like(x)
    pairwise.acceleration(x, m, acc, physics)
    _check("autotuned acceleration", acc, reference.acceleration(pos, mass, **kw),
           reference.acceleration(x.cpu(), m.cpu(), **kw))
    energy, again = torch.empty(2, dtype=x.dtype, device=DEVICE), torch.empty(2, dtype=x.dtype, device=DEVICE)
    pairwise.potential_energy(x, m, energy, physics)
    pairwise.potential_energy(x, m, again, physics)
    _check("autotuned potential", energy, reference.potential_energy(pos, mass, **kw),
           reference.potential_energy(x.cpu(), m.cpu(), **kw))
    assert torch.equal(energy, again), "the tuned potential must not depend on the tuning runs"
    out = start.clone()
    pairwise.acceleration_vjp(x, m, g, out, physics, accumulate=True)
    vjp = torch.empty_like(x)
    pairwise.acceleration_vjp(x, m, g, vjp, physics)
    _check("autotuned acceleration_vjp", vjp, _reference_vjp(pos, mass, vel, kw),
           _reference_vjp(x.cpu(), m.cpu(), g.cpu(), kw))
    assert torch.equal(out, start + vjp), "the tuning runs of the accumulating VJP changed out"


# ------------------------------------------------------------------------------------------
# step and step_backward. N = 2, 3, 5 take the fused per-thread (unrolled) layout, 17 and 64
# the fused tile layout; test_launch_loop_matches forces the one-launch-per-force path.

STEP_CASES = _cases((2, 3, 5, 17, 64), [("leapfrog", "yoshida4"), (1, 3), (0.0, 0.1), (False, True), (1, 3)])


def _reference_trajectory(pos, vel, mass, dt, steps, integrator, kw):
    """x, v, a at every substep boundary, [S+1, 3, B, N, D], by the contract's substep rule."""
    h_all = dt.view(-1, 1, 1)
    acc = reference.acceleration(pos, mass, **kw)
    frames = [torch.stack((pos, vel, acc))]
    for _ in range(steps):
        for c in substep_weights(integrator):
            h = c * h_all
            vel = vel + 0.5 * h * acc
            pos = pos + h * vel
            acc = reference.acceleration(pos, mass, **kw)
            vel = vel + 0.5 * h * acc
            frames.append(torch.stack((pos, vel, acc)))
    return torch.stack(frames)


def _run_step(x, v, m, d, steps, integrator, physics, with_trajectory):
    B, N, D = x.shape
    S = steps * len(substep_weights(integrator))
    out_pos, out_vel = torch.empty_like(x), torch.empty_like(v)
    traj = torch.empty((S + 1, 3, B, N, D), dtype=x.dtype, device=x.device) if with_trajectory else None
    tk.step(x, v, m, d, out_pos, out_vel, traj, steps, integrator_index(integrator), physics)
    return out_pos, out_vel, traj


@pytest.mark.parametrize("N, D, dtype, integrator, steps, softening, with_field, B", STEP_CASES)
def test_step(N, D, dtype, integrator, steps, softening, with_field, B):
    if N >= 64:
        B = 1
    pos, vel, mass, dt = _system(B, N, D, seed=1)
    field = _field(with_field, D)
    kw = dict(G=1.0, softening=softening, field=field)
    physics = _physics(1.0, softening, field, D)
    x, v, m, d = _on(dtype, pos, vel, mass, dt)

    out_pos, out_vel, traj = _run_step(x, v, m, d, steps, integrator, physics, with_trajectory=True)
    exact = _reference_trajectory(pos, vel, mass, dt, steps, integrator, kw)
    ref32 = _reference_trajectory(x.cpu(), v.cpu(), m.cpu(), d.cpu(), steps, integrator, kw)
    _check("trajectory", traj, exact, ref32)
    assert torch.equal(traj[-1, 0], out_pos) and torch.equal(traj[-1, 1], out_vel)
    ref_pos, ref_vel = reference.step(pos, vel, mass, dt, steps=steps, integrator=integrator, **kw)
    _check("pos", out_pos, ref_pos, ref32[-1, 0])
    _check("vel", out_vel, ref_vel, ref32[-1, 1])

    # Without a trajectory the kernel must do the same arithmetic.
    plain_pos, plain_vel, _ = _run_step(x, v, m, d, steps, integrator, physics, with_trajectory=False)
    assert torch.equal(plain_pos, out_pos) and torch.equal(plain_vel, out_vel)


def _reference_gradients(pos, vel, mass, dt, grad_pos, grad_vel, steps, integrator, kw):
    p, v, d = (t.clone().requires_grad_(True) for t in (pos, vel, dt))
    out_pos, out_vel = reference.step(p, v, mass, d, steps=steps, integrator=integrator, **kw)
    ((out_pos * grad_pos).sum() + (out_vel * grad_vel).sum()).backward()
    return p.grad, v.grad, d.grad


def _run_step_backward(x, v, m, d, gp, gv, steps, integrator, physics):
    _, _, traj = _run_step(x, v, m, d, steps, integrator, physics, with_trajectory=True)
    out = (torch.empty_like(x), torch.empty_like(v), torch.empty_like(d))
    tk.step_backward(traj, m, d, gp, gv, *out, steps, integrator_index(integrator), physics)
    return out


@pytest.mark.parametrize("N, D, dtype, integrator, steps, softening, with_field, B", STEP_CASES)
def test_step_backward(N, D, dtype, integrator, steps, softening, with_field, B):
    if N >= 64:
        B = 1
    pos, vel, mass, dt = _system(B, N, D, seed=2)
    gen = torch.Generator().manual_seed(5)
    grad_pos = torch.randn(pos.shape, generator=gen, dtype=torch.float64)
    grad_vel = torch.randn(pos.shape, generator=gen, dtype=torch.float64)
    field = _field(with_field, D)
    kw = dict(G=1.0, softening=softening, field=field)
    tensors = _on(dtype, pos, vel, mass, dt, grad_pos, grad_vel)
    got = _run_step_backward(*tensors, steps, integrator, _physics(1.0, softening, field, D))
    exact = _reference_gradients(pos, vel, mass, dt, grad_pos, grad_vel, steps, integrator, kw)
    ref32 = _reference_gradients(*(t.cpu() for t in tensors), steps, integrator, kw)
    for name, value, e, r in zip(("grad pos", "grad vel", "grad dt"), got, exact, ref32):
        _check(name, value, e, r)


# The unrolled layout (N <= fused.UNROLL_MAX_N) moves each state as one tile of whole rows,
# split into per-system vectors in registers: B crosses BLOCK_B (16 interpreted, 128 on a GPU)
# with a partial last block, so the masked rows of the last tile are exercised. Each (N, D) once,
# the dtype alternating, so every N and every D meets both dtypes.
UNROLLED_CASES = [pytest.param(N, D, dtype, id=f"N{N}-D{D}-{str(dtype)[6:]}")
                  for N in (2, 3, 4) for D in (2, 3)
                  for dtype in [torch.float64 if (N + D) % 2 == 0 else torch.float32]]


@pytest.mark.parametrize("N, D, dtype", UNROLLED_CASES)
def test_unrolled_layout_with_a_partial_last_block(N, D, dtype):
    from aitimestepper.ops.triton import fused

    assert N <= fused.UNROLL_MAX_N, "these cases are meant for the unrolled layout"
    B = 21 if DEVICE == "cpu" else 300
    steps, integrator, softening = 2, "leapfrog", 0.1
    pos, vel, mass, _ = _system(B, N, D, seed=4)
    dt = torch.linspace(0.005, 0.02, B, dtype=torch.float64)
    gen = torch.Generator().manual_seed(6)
    grad_pos = torch.randn(pos.shape, generator=gen, dtype=torch.float64)
    grad_vel = torch.randn(pos.shape, generator=gen, dtype=torch.float64)
    field = _field(D == 3, D)
    kw = dict(G=1.0, softening=softening, field=field)
    physics = _physics(1.0, softening, field, D)
    x, v, m, d, gp, gv = _on(dtype, pos, vel, mass, dt, grad_pos, grad_vel)

    out_pos, out_vel, traj = _run_step(x, v, m, d, steps, integrator, physics, with_trajectory=True)
    plain_pos, plain_vel, _ = _run_step(x, v, m, d, steps, integrator, physics, with_trajectory=False)
    assert torch.equal(plain_pos, out_pos) and torch.equal(plain_vel, out_vel)
    ref32 = _reference_trajectory(x.cpu(), v.cpu(), m.cpu(), d.cpu(), steps, integrator, kw)
    _check("trajectory", traj, _reference_trajectory(pos, vel, mass, dt, steps, integrator, kw), ref32)
    grads = _run_step_backward(x, v, m, d, gp, gv, steps, integrator, physics)
    exact = _reference_gradients(pos, vel, mass, dt, grad_pos, grad_vel, steps, integrator, kw)
    grads32 = _reference_gradients(x.cpu(), v.cpu(), m.cpu(), d.cpu(), gp.cpu(), gv.cpu(), steps, integrator, kw)
    for name, value, e, r in zip(("grad pos", "grad vel", "grad dt"), grads, exact, grads32):
        _check(name, value, e, r)


@pytest.mark.parametrize("integrator", ["leapfrog", "yoshida4"])
@pytest.mark.parametrize("boundary", ["in-small-vjp", "boundary-kernel"])
def test_launch_loop_matches(monkeypatch, integrator, boundary):
    """Above fused.FUSED_MAX_N the integrator runs as one pairwise launch per force evaluation
    (test_step covers it too where N = 64 or 17 passes a float64 or adjoint limit); force that
    path at N = 5 and 17 by lowering the dispatch limits, and hold it to the same reference. The
    adjoint's per-boundary work is folded into the small-system VJP up to
    pairwise.SMALL_VJP_MAX_N bodies and a kernel of its own beside the all-pairs VJP above; the
    limit at 0 takes the second path at these sizes."""
    from aitimestepper.ops.triton import fused, pairwise

    monkeypatch.setattr(fused, "FUSED_MAX_N", {key: 4 for key in fused.FUSED_MAX_N})
    if boundary == "boundary-kernel":
        monkeypatch.setattr(pairwise, "SMALL_VJP_MAX_N", 0)
    for N, D, field, dtype in ((5, 3, _field(True, 3), torch.float64), (17, 2, None, torch.float32)):
        pos, vel, mass, dt = _system(3, N, D, seed=3)
        gen = torch.Generator().manual_seed(4)
        grad_pos = torch.randn(pos.shape, generator=gen, dtype=torch.float64)
        grad_vel = torch.randn(pos.shape, generator=gen, dtype=torch.float64)
        tensors = _on(dtype, pos, vel, mass, dt, grad_pos, grad_vel)
        kw = dict(G=1.0, softening=0.05, field=field)
        physics = _physics(1.0, 0.05, field, D)
        in32 = [t.cpu() for t in tensors] if dtype == torch.float32 else None
        out_pos, out_vel, traj = _run_step(*tensors[:4], 2, integrator, physics, with_trajectory=True)
        _check("trajectory", traj, _reference_trajectory(pos, vel, mass, dt, 2, integrator, kw),
               _reference_trajectory(*in32[:4], 2, integrator, kw) if in32 else None)
        got = _run_step_backward(*tensors, 2, integrator, physics)
        exact = _reference_gradients(pos, vel, mass, dt, grad_pos, grad_vel, 2, integrator, kw)
        ref32 = _reference_gradients(*in32, 2, integrator, kw) if in32 else (None,) * 3
        for name, value, e, r in zip(("grad pos", "grad vel", "grad dt"), got, exact, ref32):
            _check(f"{name} {dtype}", value, e, r)


def test_empty_inputs_are_a_no_op():
    pos = torch.empty(0, 4, 3, device=DEVICE)
    mass = torch.empty(0, 4, device=DEVICE)
    dt = torch.empty(0, device=DEVICE)
    physics = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    tk.acceleration(pos, mass, torch.empty_like(pos), physics)
    tk.potential_energy(pos, mass, torch.empty(0, device=DEVICE), physics)
    tk.acceleration_vjp(pos, mass, pos, torch.empty_like(pos), physics)
    tk.step(pos, pos, mass, dt, torch.empty_like(pos), torch.empty_like(pos), None, 3, 0, physics)
    traj = torch.empty(2, 3, 0, 4, 3, device=DEVICE)
    tk.step_backward(traj, mass, dt, pos, pos, torch.empty_like(pos), torch.empty_like(pos), dt.clone(), 1, 0, physics)
