"""Forward values of every op on every backend against the float64 reference (conftest's policy).

Three grids, so that the matrix stays affordable on two cores while every axis is covered:
shapes (N = 2, 3, 127, 1025; unbatched, [3, ...], [2, 2, ...]) with default physics; physics and
layout variants (shared or broadcast masses, softening, tidal field, G != 1, non-contiguous
views) at one moderate size; and the step-specific axes (dt as float / per-system / 0-d tensor,
steps 1 and 5, leapfrog and yoshida4). The backend-free O(N) ops (momenta, kinetic energy) are
checked against NumPy.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable, Optional

import numpy as np
import pytest
import torch

import aitimestepper.ops as ops
from conftest import (
    System,
    assert_matches_reference,
    device_for,
    make_system,
    require_backend,
    skip_float32_in_interpreter,
    skip_if_too_large_for_interpreter,
    tidal_field,
)

OPS = ("acceleration", "potential_energy", "total_energy", "step")
OUTPUT_NAMES = {
    "acceleration": ("acc",),
    "potential_energy": ("U",),
    "total_energy": ("E",),
    "step": ("pos", "vel"),
}

# A step size small against the closest pair's orbital time in make_system's systems (>= 0.04 at
# N = 1025, D = 2) yet large enough that the kicks change velocities by percents: a wrong force
# in a step kernel shows far above float32 round-off.
DT = 0.004


def per_system_dt(batch_shape, dtype) -> torch.Tensor:
    """Distinct dt per system, [*batch]: a kernel that reads the wrong system's dt is caught."""
    count = int(np.prod(batch_shape)) if batch_shape else 1
    values = DT * (1.0 + 0.25 * torch.arange(count, dtype=torch.float64))
    return values.reshape(batch_shape).to(dtype)


def call(op: str, s: System, backend: str, *, G: float = 1.0, softening: float = 0.0, field=None,
         dt=DT, steps: int = 1, integrator: str = "leapfrog") -> tuple[torch.Tensor, ...]:
    physics = dict(G=G, softening=softening, field=field, backend=backend)
    if op == "acceleration":
        return (ops.acceleration(s.pos, s.mass, **physics),)
    if op == "potential_energy":
        return (ops.potential_energy(s.pos, s.mass, **physics),)
    if op == "total_energy":
        return (ops.total_energy(s.pos, s.vel, s.mass, **physics),)
    if op == "step":
        return ops.step(s.pos, s.vel, s.mass, dt, steps=steps, integrator=integrator, **physics)
    raise ValueError(op)


def check_op(op: str, backend: str, system: System, *, what: str,
             view: Optional[Callable[[System], System]] = None, **options) -> None:
    """Run `op` on `backend` and compare every output with the reference under the policy.

    `system` holds the inputs in the tested dtype; the oracle runs the reference on the same
    values in float64 and, for float32, the reference in float32 sets the tolerance. `view`
    turns the backend's inputs into another layout (non-contiguous views) with equal values.
    """
    dtype = system.pos.dtype
    device = device_for(backend)
    inputs = system.to(device=device)
    if view is not None:
        inputs = view(inputs)
    dt = options.pop("dt", DT)
    on_device = dt.to(device) if isinstance(dt, torch.Tensor) else dt
    in_float64 = dt.double() if isinstance(dt, torch.Tensor) else dt

    outputs = call(op, inputs, backend, dt=on_device, **options)
    oracle = call(op, system.double(), "reference", dt=in_float64, **options)
    reference32 = call(op, system, "reference", dt=dt, **options) if dtype == torch.float32 else (None,) * len(oracle)
    for name, out, expected, ref32 in zip(OUTPUT_NAMES[op], outputs, oracle, reference32):
        assert out.dtype == dtype, f"{what} {name}: dtype {out.dtype}, expected {dtype}"
        assert out.device.type == device.type, f"{what} {name}: on {out.device}, expected {device}"
        assert_matches_reference(out, expected, ref32, what=f"{what} {name}")


# ---------------------------------------------------------------------------------------------
# shapes

SHAPES = [
    (2, ()), (2, (3,)), (2, (2, 2)),
    (3, ()), (3, (3,)), (3, (2, 2)),
    (127, ()), (127, (3,)), (127, (2, 2)),
    (1025, ()), (1025, (2,)),
]


def _shape_id(shape) -> str:
    N, batch = shape
    return f"N{N}-" + ("x".join(map(str, batch)) if batch else "unbatched")


@pytest.mark.parametrize("shape", SHAPES, ids=[_shape_id(s) for s in SHAPES])
@pytest.mark.parametrize("D", [2, 3], ids=["D2", "D3"])
@pytest.mark.parametrize("op", OPS)
def test_matches_reference_across_shapes(op, backend, dtype, D, shape):
    N, batch = shape
    skip_if_too_large_for_interpreter(backend, N, batch)
    system = make_system(N, D, batch, dtype=dtype, seed=N + D)
    # Batched steps get a different dt per system; two fused steps exercise the reuse of the
    # end-of-step acceleration.
    options = dict(dt=per_system_dt(batch, dtype) if batch else DT, steps=2) if op == "step" else {}
    check_op(op, backend, system, what=f"{op} {backend} D={D} N={N} batch={batch}", **options)


# ---------------------------------------------------------------------------------------------
# physics and layout variants, at one size: B = 3 systems of N = 21 bodies (odd, more than one
# SIMD width or tile edge, small enough for the Triton interpreter)


def _first_system_mass(s: System) -> System:
    return System(s.pos, s.vel, s.mass[0].clone())  # [N], shared by every system


def _broadcast_mass(s: System) -> System:
    return System(s.pos, s.vel, s.mass[:1].clone())  # [1, N]


def _transposed(s: System) -> System:
    """pos/vel as transposes of [.., D, N] storage, mass as a stride-2 slice: equal values, no copy."""
    def t(x):
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    mass = torch.stack([s.mass, torch.full_like(s.mass, -1.0)], -1)[..., 0]
    out = System(t(s.pos), t(s.vel), mass)
    assert not (out.pos.is_contiguous() or out.vel.is_contiguous() or out.mass.is_contiguous())
    return out


def _every_other(x: torch.Tensor, body_dim: int) -> torch.Tensor:
    """x as every other system and every other body of a NaN-filled buffer twice as large."""
    shape = list(x.shape)
    shape[0] *= 2
    shape[body_dim] *= 2
    index = [slice(None)] * x.dim()
    index[0] = index[body_dim] = slice(None, None, 2)
    big = torch.full(shape, float("nan"), dtype=x.dtype, device=x.device)
    big[tuple(index)] = x
    return big[tuple(index)]


def _sliced(s: System) -> System:
    """Strided slices of larger buffers (batched systems only): the kernels must not see the gaps."""
    out = System(_every_other(s.pos, -2), _every_other(s.vel, -2), _every_other(s.mass, -1))
    assert not (out.pos.is_contiguous() or out.vel.is_contiguous() or out.mass.is_contiguous())
    return out


def _expanded_mass(s: System) -> System:
    """One mass row expanded (stride 0) over the batch."""
    return System(s.pos, s.vel, s.mass[0].clone().expand_as(s.mass))


VARIANTS = {
    "shared_mass": dict(transform=_first_system_mass),
    "broadcast_mass": dict(transform=_broadcast_mass),
    "expanded_mass": dict(transform=_expanded_mass),
    "softening": dict(softening=0.05),
    "tidal_field": dict(field=True),
    "G": dict(G=0.7),
    "everything": dict(transform=_first_system_mass, softening=0.05, field=True, G=2.5),
    "transposed_view": dict(view=_transposed),
    "sliced_view": dict(view=_sliced),
    "sliced_view_tidal_softened": dict(view=_sliced, field=True, softening=0.02),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("D", [2, 3], ids=["D2", "D3"])
@pytest.mark.parametrize("op", OPS)
def test_matches_reference_with_physics_and_layout(op, backend, dtype, D, variant):
    skip_float32_in_interpreter(backend, dtype)
    options = dict(VARIANTS[variant])
    system = make_system(21, D, (3,), dtype=dtype, seed=7 + D)
    transform = options.pop("transform", None)
    if transform is not None:
        system = transform(system)
    if options.pop("field", False):
        options["field"] = tidal_field(D)
    if op == "step":
        # yoshida4 with several steps exercises the tidal field and G in every substep.
        options.update(dt=per_system_dt((3,), dtype), steps=3, integrator="yoshida4")
    check_op(op, backend, system, what=f"{op} {backend} D={D} {variant}", **options)


# ---------------------------------------------------------------------------------------------
# step: dt forms, steps, integrators

DT_FORMS = ("float", "per_system", "scalar_tensor")


@pytest.mark.parametrize("dt_form", DT_FORMS)
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("integrator", ["leapfrog", "yoshida4"])
@pytest.mark.parametrize("D", [2, 3], ids=["D2", "D3"])
def test_step_matches_reference(backend, dtype, D, integrator, steps, dt_form):
    skip_float32_in_interpreter(backend, dtype)
    batch = (2, 2)
    system = make_system(9, D, batch, dtype=dtype, seed=steps + D)
    dt = {"float": DT, "per_system": per_system_dt(batch, dtype),
          "scalar_tensor": torch.tensor(DT, dtype=dtype)}[dt_form]
    check_op("step", backend, system, dt=dt, steps=steps, integrator=integrator,
             what=f"step {backend} D={D} {integrator} steps={steps} dt={dt_form}")


@pytest.mark.parametrize("integrator", ["leapfrog", "yoshida4"])
def test_step_with_zero_dt_returns_the_input(backend, dtype, integrator):
    # dt = 0 is allowed (dt >= 0): every substep is then the identity, exactly.
    system = make_system(5, 3, (3,), dtype=dtype, seed=1).to(device=device_for(backend))
    dt = torch.tensor([0.0, DT, 0.0], dtype=dtype, device=system.pos.device)
    pos, vel = ops.step(system.pos, system.vel, system.mass, dt, steps=3, integrator=integrator, backend=backend)
    for k in (0, 2):
        assert torch.equal(pos[k], system.pos[k]) and torch.equal(vel[k], system.vel[k]), f"system {k} moved with dt = 0"
    assert not torch.equal(pos[1], system.pos[1]), "system 1 (dt > 0) did not move"


def test_fused_steps_equal_repeated_single_steps(backend):
    # steps=K fuses K steps into one kernel call; it must be the same map as K calls of one step
    # (up to the float64 policy: the end-of-step acceleration is reused, not recomputed).
    system = make_system(11, 3, (2,), seed=3).to(device=device_for(backend))
    for integrator in ("leapfrog", "yoshida4"):
        fused = ops.step(system.pos, system.vel, system.mass, DT, steps=4, integrator=integrator, backend=backend)
        pos, vel = system.pos, system.vel
        for _ in range(4):
            pos, vel = ops.step(pos, vel, system.mass, DT, integrator=integrator, backend=backend)
        assert_matches_reference(fused[0], pos, what=f"{integrator} fused pos")
        assert_matches_reference(fused[1], vel, what=f"{integrator} fused vel")


# The CUDA backend has two large-N acceleration kernels (docs/design.md): the plain tiled one and
# the symmetric one (each pair once, Newton's third law), which it takes only where its tasks
# fill the GPU (N of tens of thousands). AITS_CUDA_PAIRS=symmetric, read once per process, forces
# the symmetric one wherever it can run: test_cuda_symmetric_kernel_when_forced reruns the two
# tests below in a process with it set, which covers every block layout of the symmetric kernel
# (one block, several, a partial last block, a last block of one body, batched systems).
FORCED_SYMMETRIC = os.environ.get("AITS_CUDA_PAIRS") == "symmetric"
PAIR_KERNEL = "symmetric" if FORCED_SYMMETRIC else "plain"


@pytest.mark.parametrize("shape", [(65, ()), (300, (3,)), (1025, ()), (2100, (2,))], ids=_shape_id)
@pytest.mark.parametrize("D", [2, 3], ids=["D2", "D3"])
def test_cuda_pair_kernels_match_reference(shape, D, dtype):
    require_backend("cuda")
    N, batch = shape
    system = make_system(N, D, batch, dtype=dtype)
    check_op("acceleration", "cuda", system, what=f"{PAIR_KERNEL} kernel")
    check_op("acceleration", "cuda", system, what=f"{PAIR_KERNEL} kernel, softening and tidal field",
             softening=0.05, field=tidal_field(D), G=0.7)


def test_cuda_pair_kernel_is_deterministic():
    require_backend("cuda")
    system = make_system(2100, 3, (2,), dtype=torch.float32).to(device="cuda")
    first = ops.acceleration(system.pos, system.mass, backend="cuda")
    again = ops.acceleration(system.pos, system.mass, backend="cuda")
    assert torch.equal(first, again), f"repeated calls of the {PAIR_KERNEL} kernel must agree bitwise"


def _run_with_pairs_switch(value: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, AITS_CUDA_PAIRS=value)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=os.path.dirname(os.path.abspath(__file__)))


def test_cuda_symmetric_kernel_when_forced():
    require_backend("cuda")
    if FORCED_SYMMETRIC:
        pytest.skip("this process is the forced run")
    result = _run_with_pairs_switch(
        "symmetric", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
        os.path.abspath(__file__), "-k", "pair_kernels_match_reference or pair_kernel_is_deterministic")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout, result.stdout[-2000:]


def test_cuda_pair_kernel_switch_rejects_unknown_values():
    require_backend("cuda")
    code = ("import torch, aitimestepper.ops as ops\n"
            "x = torch.rand(1, 300, 3, device='cuda')\n"
            "ops.acceleration(x, torch.ones(1, 300, device='cuda'), backend='cuda')\n")
    result = _run_with_pairs_switch("fastest", "-c", code)
    assert result.returncode != 0 and "AITS_CUDA_PAIRS" in result.stderr, result.stderr[-2000:]


# The one-thread-per-system CUDA kernels (N <= 8 in float32, 6 in float64) move their data with
# 16-byte vector accesses where every tensor is 16-byte aligned and the last block holds a whole
# vector of each slab; otherwise with one access per element. The same positions once aligned
# and once one element off a 16-byte boundary take the two paths, which differ only in memory
# instructions. The batch sizes cover full blocks of 128 systems only, a partial last block, and
# a last block of one system (too small for a vector of masses at N < 4 in float32: scalar).
def _small_kernel_outputs(pos, vel, mass, dt, integrator):
    """acceleration, potential energy, a 3-step step, and gradients through step and acceleration."""
    out = [ops.acceleration(pos, mass, backend="cuda"), ops.potential_energy(pos, mass, backend="cuda")]
    out += ops.step(pos, vel, mass, dt, steps=3, integrator=integrator, backend="cuda")
    # detach() keeps the storage (and so the alignment) of the inputs.
    x, v, h = (t.detach().requires_grad_(True) for t in (pos, vel, dt))
    p1, v1 = ops.step(x, v, mass, h, steps=3, integrator=integrator, backend="cuda")
    acc = ops.acceleration(x, mass, backend="cuda")
    gen = torch.Generator().manual_seed(1)
    w = [torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device) for t in (p1, v1, acc)]
    out += [p1.detach(), v1.detach(), acc.detach()]
    out += torch.autograd.grad((p1 * w[0]).sum() + (v1 * w[1]).sum(), (x, v, h))
    out += torch.autograd.grad((acc * w[2]).sum(), (x,))
    return out


def _agree_to_rounding(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal but for a few ulps of the tensor's scale (norm-wise)."""
    scale = float(b.abs().max()) if b.numel() else 0.0
    return float((a - b).abs().max()) <= 64 * torch.finfo(b.dtype).eps * max(scale, 1e-30)


# The two paths are separate instantiations, compiled separately, and need not agree bitwise
# (the compiler may contract multiply-adds differently around different loads): they must agree
# to rounding here; accuracy is held to the reference elsewhere.
@pytest.mark.parametrize("N", [2, 3, 4])
@pytest.mark.parametrize("D", [2, 3], ids=["D2", "D3"])
def test_cuda_small_kernels_aligned_and_unaligned_agree(D, N, dtype):
    require_backend("cuda")
    for B in (256, 300, 129):
        system = make_system(N, D, (B,), dtype=dtype, seed=B + N).to(device="cuda")
        unaligned = torch.empty(system.pos.numel() + 1, dtype=dtype, device="cuda")[1:]
        unaligned = unaligned.view(system.pos.shape).copy_(system.pos)
        assert system.pos.data_ptr() % 16 == 0 and unaligned.data_ptr() % 16 != 0
        dt = per_system_dt((B,), dtype).to("cuda")
        for integrator in ("leapfrog", "yoshida4"):
            vector = _small_kernel_outputs(system.pos, system.vel, system.mass, dt, integrator)
            scalar = _small_kernel_outputs(unaligned, system.vel, system.mass, dt, integrator)
            for k, (a, b) in enumerate(zip(vector, scalar)):
                assert _agree_to_rounding(a, b), f"output {k} differs between the paths: B={B} {integrator}"
                assert bool(torch.isfinite(a).all()), f"output {k} not finite: B={B} {integrator}"


def test_auto_backend_on_cpu_tensors_is_the_cpu_kernel():
    require_backend("cpu")
    s = make_system(20, 3, (2,))
    assert torch.equal(ops.acceleration(s.pos, s.mass), ops.acceleration(s.pos, s.mass, backend="cpu"))
    auto = ops.step(s.pos, s.vel, s.mass, DT, steps=3)
    cpu = ops.step(s.pos, s.vel, s.mass, DT, steps=3, backend="cpu")
    assert torch.equal(auto[0], cpu[0]) and torch.equal(auto[1], cpu[1])


def test_requires_grad_inputs_give_the_same_values(any_backend, dtype):
    # A tensor that requires grad must reach the kernel with its values (no lost copy), and the
    # outputs then carry a graph.
    system = make_system(6, 2, (3,), dtype=dtype, seed=5).to(device=device_for(any_backend))
    pos = system.pos.clone().requires_grad_(True)
    vel = system.vel.clone().requires_grad_(True)
    dt = per_system_dt((3,), dtype).to(pos.device).requires_grad_(True)
    kwargs = dict(backend=any_backend)
    plain = ops.step(system.pos, system.vel, system.mass, dt.detach(), steps=2, **kwargs)
    graded = ops.step(pos, vel, system.mass, dt, steps=2, **kwargs)
    assert graded[0].requires_grad and graded[1].requires_grad
    assert torch.equal(graded[0].detach(), plain[0]) and torch.equal(graded[1].detach(), plain[1])
    assert torch.equal(ops.acceleration(pos, system.mass, **kwargs).detach(), ops.acceleration(system.pos, system.mass, **kwargs))
    assert torch.equal(ops.total_energy(pos, vel, system.mass, **kwargs).detach(),
                       ops.total_energy(system.pos, system.vel, system.mass, **kwargs))


# ---------------------------------------------------------------------------------------------
# momenta and kinetic energy (O(N) reductions in plain PyTorch on every device), against NumPy


def _numpy_invariants(pos: np.ndarray, vel: np.ndarray, mass: np.ndarray):
    kinetic = 0.5 * np.einsum("...n,...nd,...nd->...", mass, vel, vel)
    momentum = np.einsum("...n,...nd->...d", mass, vel)
    if pos.shape[-1] == 2:
        angular = np.einsum("...n,...n->...", mass, pos[..., 0] * vel[..., 1] - pos[..., 1] * vel[..., 0])
    else:
        angular = np.einsum("...n,...nd->...d", mass, np.cross(pos, vel))
    return kinetic, momentum, angular


@pytest.mark.parametrize("shape", [(2, ()), (3, (3,)), (127, (2, 2)), (1025, ())], ids=_shape_id)
@pytest.mark.parametrize("D", [2, 3], ids=["D2", "D3"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed_view"])
def test_momenta_and_kinetic_energy_match_numpy(dtype, D, shape, layout):
    N, batch = shape
    system = make_system(N, D, batch, dtype=dtype, seed=11, vel_scale=1.0)
    inputs = _transposed(system) if layout == "transposed_view" else system
    got = (ops.kinetic_energy(inputs.vel, inputs.mass), ops.linear_momentum(inputs.vel, inputs.mass),
           ops.angular_momentum(inputs.pos, inputs.vel, inputs.mass))
    exact = _numpy_invariants(*(t.double().numpy() for t in (system.pos, system.vel, system.mass)))
    in_float32 = _numpy_invariants(*(t.float().numpy() for t in (system.pos, system.vel, system.mass)))
    expected_shapes = (batch, (*batch, D), batch if D == 2 else (*batch, 3))
    for name, out, e, e32, shape_ in zip(("T", "P", "L"), got, exact, in_float32, expected_shapes):
        assert tuple(out.shape) == tuple(shape_), f"{name}: shape {tuple(out.shape)}, expected {shape_}"
        assert out.dtype == dtype
        assert_matches_reference(out, torch.from_numpy(np.asarray(e)),
                                 torch.from_numpy(np.asarray(e32)) if dtype == torch.float32 else None,
                                 what=f"{name} D={D} N={N} {layout}")


def test_angular_momentum_2d_is_the_z_component_in_3d(dtype):
    # The 2-D scalar must be L_z of the same motion embedded in the plane z = 0.
    s = make_system(7, 2, (3,), dtype=dtype, vel_scale=1.0)
    zeros = torch.zeros(*s.pos.shape[:-1], 1, dtype=dtype)
    L2 = ops.angular_momentum(s.pos, s.vel, s.mass)
    L3 = ops.angular_momentum(torch.cat([s.pos, zeros], -1), torch.cat([s.vel, zeros], -1), s.mass)
    assert torch.equal(L3[..., :2], torch.zeros_like(L3[..., :2]))
    torch.testing.assert_close(L2, L3[..., 2], rtol=4 * torch.finfo(dtype).eps, atol=0.0)
