"""Bad input is a test: each input the ops reject has a test that checks the error and its message.

The checks live in ops/validate.py and run before any backend is chosen, so most tests use the
reference backend (they run everywhere); the checks that depend on a backend (mass gradients,
device of a backend) use the compiled ones. Errors users cause are ValueError / TypeError
subclasses (aitimestepper.errors). Also here: inputs that must be accepted (requires-grad,
non-contiguous, coincident bodies in different systems) and `unchecked()`.
"""
from __future__ import annotations

import threading

import pytest
import torch

import aitimestepper
import aitimestepper.ops as ops
from aitimestepper.errors import AITimeStepperError, InputError, InputTypeError
from conftest import assert_matches_reference, device_for, make_system

REF = dict(backend="reference")

# Every public op as f(pos, vel, mass, **kw); the ones without forces ignore what they do not take.
PUBLIC_OPS = {
    "acceleration": lambda pos, vel, mass, **kw: ops.acceleration(pos, mass, **kw),
    "potential_energy": lambda pos, vel, mass, **kw: ops.potential_energy(pos, mass, **kw),
    "total_energy": lambda pos, vel, mass, **kw: ops.total_energy(pos, vel, mass, **kw),
    "step": lambda pos, vel, mass, **kw: ops.step(pos, vel, mass, 0.01, **kw),
    "angular_momentum": lambda pos, vel, mass, **kw: ops.angular_momentum(pos, vel, mass),
}
FORCE_OPS = ("acceleration", "potential_energy", "total_energy", "step")


def _system(N=3, D=3, batch=(2,)):
    return make_system(N, D, batch, seed=81)


def _call(op, pos, vel, mass, **kw):
    kwargs = dict(REF, **kw) if op in FORCE_OPS else {}
    return PUBLIC_OPS[op](pos, vel, mass, **kwargs)


# ---------------------------------------------------------------------------------------------
# types and dtypes


@pytest.mark.parametrize("op", list(PUBLIC_OPS))
def test_rejects_a_non_tensor(op):
    s = _system()
    with pytest.raises(InputTypeError, match=r"pos must be a torch.Tensor, got list"):
        _call(op, s.pos.tolist(), s.vel, s.mass)


@pytest.mark.parametrize("int_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("op", list(PUBLIC_OPS))
def test_rejects_integer_positions(op, int_dtype):
    s = _system()
    with pytest.raises(TypeError, match=rf"pos must be float32 or float64, got {int_dtype}"):
        _call(op, s.pos.to(int_dtype), s.vel, s.mass)


def test_rejects_integer_masses_and_half_precision():
    s = _system()
    with pytest.raises(TypeError, match=r"mass must be float32 or float64, got torch.int64"):
        ops.acceleration(s.pos, torch.ones(2, 3, dtype=torch.int64), **REF)
    with pytest.raises(TypeError, match=r"pos must be float32 or float64, got torch.float16"):
        ops.acceleration(s.pos.half(), s.mass.half(), **REF)


@pytest.mark.parametrize("which", ["mass", "vel"])
def test_rejects_mixed_dtypes(which):
    s = _system()
    args = dict(pos=s.pos, vel=s.vel, mass=s.mass)
    args[which] = args[which].float()
    with pytest.raises(InputTypeError, match=rf"{which} has dtype torch.float32 but pos has torch.float64; pass one dtype"):
        ops.total_energy(args["pos"], args["vel"], args["mass"], **REF)


def test_rejects_a_dt_tensor_of_another_dtype():
    s = _system()
    with pytest.raises(InputTypeError, match=r"dt has dtype torch.float32 but pos has torch.float64"):
        ops.step(s.pos, s.vel, s.mass, torch.full((2,), 0.01, dtype=torch.float32), **REF)


# ---------------------------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize("op", list(PUBLIC_OPS))
def test_rejects_positions_of_rank_one(op):
    with pytest.raises(InputError, match=r"pos must have shape \[\.\.\., N, D\], got shape \(3,\)"):
        _call(op, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("D", [1, 4])
@pytest.mark.parametrize("op", list(PUBLIC_OPS))
def test_rejects_dimensions_other_than_2_and_3(op, D):
    pos = torch.rand(2, 5, D, dtype=torch.float64)
    with pytest.raises(InputError, match=rf"D = 2 or 3 .* got D = {D}"):
        _call(op, pos, torch.zeros_like(pos), torch.ones(2, 5, dtype=torch.float64))


@pytest.mark.parametrize("op", list(PUBLIC_OPS))
def test_rejects_a_single_body(op):
    s = _system(N=2)
    with pytest.raises(InputError, match=r"a system needs N >= 2 bodies, got N = 1"):
        _call(op, s.pos[:, :1], s.vel[:, :1], s.mass[:, :1])


@pytest.mark.parametrize("op", ["total_energy", "step", "angular_momentum"])
def test_rejects_velocities_of_another_shape(op):
    s = _system()
    with pytest.raises(InputError, match=r"vel must have the shape of pos \(2, 3, 3\), got shape \(2, 4, 3\)"):
        _call(op, s.pos, torch.zeros(2, 4, 3, dtype=torch.float64), s.mass)


@pytest.mark.parametrize("mass_shape", [(4,), (2, 4), ()], ids=["N+1", "batch_N+1", "scalar"])
@pytest.mark.parametrize("op", list(PUBLIC_OPS))
def test_rejects_masses_with_the_wrong_N(op, mass_shape):
    s = _system()
    with pytest.raises(InputError, match=r"mass must have shape \[\.\.\., N\] with N = 3 \(from pos\)"):
        _call(op, s.pos, s.vel, torch.ones(mass_shape, dtype=torch.float64))


@pytest.mark.parametrize("op", list(PUBLIC_OPS))
def test_rejects_masses_that_do_not_broadcast_to_the_batch(op):
    s = _system()  # batch (2,)
    with pytest.raises(InputError, match=r"mass of shape \(5, 3\) does not broadcast to the batch shape \(2,\)"):
        _call(op, s.pos, s.vel, torch.ones(5, 3, dtype=torch.float64))


def test_rejects_a_dt_tensor_that_does_not_broadcast():
    s = _system()
    with pytest.raises(InputError, match=r"dt must be a float or a tensor broadcastable to the batch shape \(2,\)"):
        ops.step(s.pos, s.vel, s.mass, torch.full((3,), 0.01, dtype=torch.float64), **REF)


# ---------------------------------------------------------------------------------------------
# devices


def test_rejects_mixed_devices_meta():
    # The meta device stands in for a second device on a machine without a GPU.
    s = _system()
    with pytest.raises(InputError, match=r"mass is on meta but pos is on cpu; pass one device"):
        ops.acceleration(s.pos, s.mass.to("meta"), **REF)
    with pytest.raises(InputError, match=r"vel is on meta but pos is on cpu"):
        ops.step(s.pos, s.vel.to("meta"), s.mass, 0.01, **REF)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for a second real device")
def test_rejects_mixed_devices_cuda():
    s = _system()
    with pytest.raises(InputError, match=r"mass is on cuda:0 but pos is on cpu"):
        ops.acceleration(s.pos, s.mass.cuda(), **REF)
    with pytest.raises(InputError, match=r"dt is on cpu but pos is on cuda:0"):
        ops.step(s.pos.cuda(), s.vel.cuda(), s.mass.cuda(), torch.full((2,), 0.01, dtype=torch.float64), **REF)


def test_a_backend_rejects_tensors_on_another_device():
    s = _system()
    with pytest.raises(InputError, match=r"backend 'cuda' needs CUDA tensors, got tensors on cpu"):
        ops.acceleration(s.pos, s.mass, backend="cuda")
    meta = s.to(device="meta")
    with ops.unchecked():  # value checks cannot read meta tensors; the backend check must still run
        with pytest.raises(InputError, match=r"backend 'cpu' needs CPU tensors, got tensors on meta"):
            ops.acceleration(meta.pos, meta.mass, backend="cpu")
        with pytest.raises(InputError, match=r"no backend runs on device type 'meta'"):
            ops.acceleration(meta.pos, meta.mass, backend="auto")


# ---------------------------------------------------------------------------------------------
# values


NON_FINITE_CASES = [(op, which) for op in PUBLIC_OPS for which in ("pos", "vel", "mass")
                    if not (which == "vel" and op in ("acceleration", "potential_energy"))]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("op, which", NON_FINITE_CASES, ids=[f"{op}-{which}" for op, which in NON_FINITE_CASES])
def test_rejects_non_finite_values(op, which, bad):
    s = _system()
    args = dict(pos=s.pos.clone(), vel=s.vel.clone(), mass=s.mass.clone())
    args[which].view(-1)[4] = bad
    with pytest.raises(InputError, match=rf"{which} has 1 non-finite value\(s\) \(NaN or inf\)"):
        _call(op, args["pos"], args["vel"], args["mass"])


@pytest.mark.parametrize("bad", [0.0, -0.5], ids=["zero", "negative"])
@pytest.mark.parametrize("op", list(PUBLIC_OPS))
def test_rejects_non_positive_masses(op, bad):
    s = _system()
    mass = s.mass.clone()
    mass[1, 2] = bad
    with pytest.raises(InputError, match=rf"mass must be positive, got min {bad:g}"):
        _call(op, s.pos, s.vel, mass)


@pytest.mark.parametrize("dt", [-0.01, -1e-300], ids=["negative", "tiny_negative"])
def test_rejects_a_negative_float_dt(dt):
    s = _system()
    with pytest.raises(InputError, match=rf"dt must be finite and >= 0.0, got {dt}"):
        ops.step(s.pos, s.vel, s.mass, dt, **REF)


def test_rejects_a_negative_dt_tensor():
    s = _system()
    dt = torch.tensor([0.01, -0.02], dtype=torch.float64)
    with pytest.raises(InputError, match=r"dt must be >= 0, got min -0.02"):
        ops.step(s.pos, s.vel, s.mass, dt, **REF)


@pytest.mark.parametrize("dt", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_rejects_a_non_finite_dt(dt):
    s = _system()
    with pytest.raises(InputError, match=rf"dt must be finite and >= 0.0, got {dt}"):
        ops.step(s.pos, s.vel, s.mass, dt, **REF)
    with pytest.raises(InputError, match=r"dt has 1 non-finite value"):
        ops.step(s.pos, s.vel, s.mass, torch.tensor([0.01, dt], dtype=torch.float64), **REF)


@pytest.mark.parametrize("dt", ["0.01", True, [0.01, 0.01]], ids=["str", "bool", "list"])
def test_rejects_a_dt_that_is_not_a_number(dt):
    s = _system()
    with pytest.raises(InputTypeError, match=rf"dt must be a real number, got {type(dt).__name__}"):
        ops.step(s.pos, s.vel, s.mass, dt, **REF)


def test_rejects_a_missing_dt():
    s = _system()
    with pytest.raises(InputTypeError, match=r"dt must be a real number or a tensor, got None"):
        ops.step(s.pos, s.vel, s.mass, None, **REF)


@pytest.mark.parametrize("N", [3, 100], ids=["small_N_pairwise", "large_N_sorted"])
@pytest.mark.parametrize("op", FORCE_OPS)
def test_rejects_coincident_bodies_without_softening(op, N):
    # N <= 64 compares all pairs, larger N sorts: both paths must catch a duplicate.
    s = make_system(N, 3, (2,), seed=82)
    pos = s.pos.clone()
    pos[1, N - 1] = pos[1, 0]
    with pytest.raises(InputError, match=r"two bodies of one system share a position and softening is 0"):
        _call(op, pos, s.vel, s.mass)
    # With softening the pair force is finite: accepted.
    _call(op, pos, s.vel, s.mass, softening=0.01)


@pytest.mark.parametrize("N", [3, 100], ids=["small_N_pairwise", "large_N_sorted"])
def test_accepts_equal_positions_in_different_systems(N):
    # Bodies of different systems never interact: the same position in two systems is fine.
    s = make_system(N, 2, (2,), seed=83)
    pos = s.pos.clone()
    pos[1] = pos[0]
    acc = ops.acceleration(pos, s.mass, **REF)
    assert bool(torch.isfinite(acc).all())


def test_angular_momentum_accepts_coincident_bodies():
    # No forces, no singularity: only the force ops check for coincident bodies.
    s = _system()
    pos = s.pos.clone()
    pos[0, 1] = pos[0, 0]
    ops.angular_momentum(pos, s.vel, s.mass)


# ---------------------------------------------------------------------------------------------
# names and numbers


@pytest.mark.parametrize("op", FORCE_OPS)
def test_rejects_an_unknown_backend(op):
    s = _system()
    with pytest.raises(InputError, match=r"unknown backend 'gpu'; choose one of \['auto', 'reference', 'cpu', 'cuda', 'triton'\]"):
        _call(op, s.pos, s.vel, s.mass, backend="gpu")


def test_rejects_an_unknown_integrator():
    s = _system()
    with pytest.raises(InputError, match=r"unknown integrator 'rk4'; choose one of \['leapfrog', 'yoshida4'\]"):
        ops.step(s.pos, s.vel, s.mass, 0.01, integrator="rk4", **REF)


@pytest.mark.parametrize("steps", [0, -3, 2.0, True, "5"], ids=["zero", "negative", "float", "bool", "str"])
def test_rejects_steps_that_are_not_a_positive_integer(steps):
    s = _system()
    with pytest.raises(InputError, match=r"steps must be a positive integer, got"):
        ops.step(s.pos, s.vel, s.mass, 0.01, steps=steps, **REF)


@pytest.mark.parametrize("G", [0.0, -1.0, float("nan"), float("inf")])
def test_rejects_a_non_positive_or_non_finite_G(G):
    s = _system()
    with pytest.raises(InputError, match=r"G must be finite and > 0.0, got"):
        ops.acceleration(s.pos, s.mass, G=G, **REF)


@pytest.mark.parametrize("softening", [-0.1, float("nan")])
def test_rejects_a_negative_or_non_finite_softening(softening):
    s = _system()
    with pytest.raises(InputError, match=r"softening must be finite and >= 0.0, got"):
        ops.potential_energy(s.pos, s.mass, softening=softening, **REF)


def test_rejects_a_softening_that_is_not_a_number():
    s = _system()
    with pytest.raises(InputTypeError, match=r"softening must be a real number, got Tensor"):
        ops.potential_energy(s.pos, s.mass, softening=torch.tensor(0.1), **REF)


# ---------------------------------------------------------------------------------------------
# the tidal field


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mass=1.0, position=(0.0, 0.0)), r"must not be the origin"),
        (dict(mass=1.0, position=(0.0, 0.0, 0.0)), r"must not be the origin"),
        (dict(mass=1.0, position=(1.0,)), r"position must have 2 or 3 coordinates, got 1"),
        (dict(mass=1.0, position=(1.0, 2.0, 3.0, 4.0)), r"position must have 2 or 3 coordinates, got 4"),
        (dict(mass=-1.0, position=(1.0, 2.0)), r"mass must be finite and >= 0, got -1.0"),
        (dict(mass=float("nan"), position=(1.0, 2.0)), r"mass must be finite and >= 0"),
        (dict(mass=1.0, position=(1.0, float("inf"))), r"position must be finite"),
    ],
    ids=["origin_2d", "origin_3d", "one_coordinate", "four_coordinates", "negative_mass", "nan_mass", "inf_position"],
)
def test_rejects_a_bad_tidal_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        aitimestepper.TidalField(**kwargs)


@pytest.mark.parametrize("op", FORCE_OPS)
def test_rejects_a_tidal_field_of_another_dimension(op):
    s = make_system(3, 2, (2,), seed=84)
    field = aitimestepper.TidalField(mass=1.0, position=(3.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"TidalField position has 3 coordinates but the system has D = 2"):
        _call(op, s.pos, s.vel, s.mass, field=field)


def test_rejects_a_field_that_is_not_a_tidal_field():
    s = _system()
    with pytest.raises(InputTypeError, match=r"field must be an aitimestepper.TidalField or None, got dict"):
        ops.acceleration(s.pos, s.mass, field={"mass": 1.0, "position": (3.0, 0.0, 0.0)}, **REF)


# ---------------------------------------------------------------------------------------------
# gradients with respect to masses


@pytest.mark.parametrize("op", FORCE_OPS)
def test_compiled_backends_refuse_mass_gradients(backend, op):
    s = _system().to(device=device_for(backend))
    mass = s.mass.clone().requires_grad_(True)
    with pytest.raises(InputError, match=rf"gradients with respect to mass are not provided by backend '{backend}'"):
        _call(op, s.pos, s.vel, mass, backend=backend)
    # Without autograd recording, a mass that requires grad is just data.
    with torch.no_grad():
        _call(op, s.pos, s.vel, mass, backend=backend)


def test_the_reference_differentiates_masses():
    s = _system()
    mass = s.mass.clone().requires_grad_(True)
    ops.potential_energy(s.pos, mass, **REF).sum().backward()
    assert mass.grad is not None and bool((mass.grad < 0).all())  # more mass, deeper potential


# ---------------------------------------------------------------------------------------------
# what must be accepted


def test_errors_are_package_errors_and_builtin_errors():
    s = _system()
    with pytest.raises(AITimeStepperError):
        ops.acceleration(s.pos, s.mass, backend="nope")
    with pytest.raises(ValueError):
        ops.acceleration(s.pos, s.mass, backend="nope")
    with pytest.raises(TypeError):
        ops.acceleration(s.pos.long(), s.mass, **REF)


def test_non_contiguous_leaf_gets_its_gradient(any_backend):
    # The Python layer copies non-contiguous inputs to contiguous ones for the kernels; the
    # gradient must still reach the caller's leaf, in the caller's layout.
    s = _system(N=5, D=3, batch=(2,)).to(device=device_for(any_backend))
    big = torch.zeros(2, 10, 3, dtype=torch.float64, device=s.pos.device)
    big[:, ::2] = s.pos
    big.requires_grad_(True)
    view = big[:, ::2]
    assert not view.is_contiguous()
    weights = torch.linspace(-1.0, 1.0, 30, dtype=torch.float64, device=s.pos.device).reshape(2, 5, 3)
    (ops.acceleration(view, s.mass, backend=any_backend) * weights).sum().backward()

    dense_cpu = s.pos.detach().cpu().clone().requires_grad_(True)
    (ops.acceleration(dense_cpu, s.mass.cpu(), backend="reference") * weights.cpu()).sum().backward()
    assert torch.equal(big.grad[:, 1::2], torch.zeros_like(big.grad[:, 1::2])), "gradient leaked into the gaps"
    assert_matches_reference(big.grad[:, ::2], dense_cpu.grad, what=f"{any_backend} gradient through a strided view")


# ---------------------------------------------------------------------------------------------
# unchecked()


def test_unchecked_skips_the_value_checks_only():
    s = _system()
    pos = s.pos.clone()
    pos[0, 0, 0] = float("nan")
    coincident = s.pos.clone()
    coincident[1, 2] = coincident[1, 0]
    zero_mass = s.mass.clone()
    zero_mass[0, 0] = 0.0
    with ops.unchecked():
        assert bool(torch.isnan(ops.acceleration(pos, s.mass, **REF)[0]).any())
        ops.acceleration(coincident, s.mass, **REF)
        ops.potential_energy(s.pos, zero_mass, **REF)
        ops.step(s.pos, s.vel, s.mass, torch.tensor([0.01, -0.01], dtype=torch.float64), **REF)
        # Shape, dtype and device checks still run.
        with pytest.raises(InputError, match=r"D = 2 or 3"):
            ops.acceleration(torch.zeros(2, 3, 4, dtype=torch.float64), s.mass, **REF)
        with pytest.raises(InputTypeError, match=r"mass has dtype torch.float32"):
            ops.acceleration(s.pos, s.mass.float(), **REF)
    # ...and the value checks are back afterwards.
    with pytest.raises(InputError, match=r"non-finite"):
        ops.acceleration(pos, s.mass, **REF)


def test_unchecked_restores_the_checks_after_an_exception():
    s = _system()
    pos = s.pos.clone()
    pos[0, 0, 0] = float("inf")
    with pytest.raises(RuntimeError, match="inside"):
        with ops.unchecked():
            raise RuntimeError("inside")
    with pytest.raises(InputError, match=r"non-finite"):
        ops.acceleration(pos, s.mass, **REF)


def test_unchecked_is_per_thread():
    s = _system()
    pos = s.pos.clone()
    pos[0, 0, 0] = float("nan")
    caught: list[BaseException] = []

    def other_thread():
        try:
            ops.acceleration(pos, s.mass, **REF)
        except InputError as error:
            caught.append(error)

    with ops.unchecked():
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(caught) == 1, "unchecked() in one thread turned the checks off in another"
