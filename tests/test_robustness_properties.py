"""Property: any argument to the public ops, the tidal field and the settings either works or
raises one of the package's typed errors (aitimestepper.errors), never anything else."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import aitimestepper  # noqa: E402
import aitimestepper.ops as ops  # noqa: E402
from aitimestepper.config import SETTING_NAMES, Config, build_config, read_toml, setting_type  # noqa: E402
from aitimestepper.errors import AITimeStepperError  # noqa: E402

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SPECIAL = [0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, math.nan, 1e308, -1e308, 5e-324, 1e-300, 1e150, 3.0]
numbers = st.one_of(st.sampled_from(SPECIAL), st.floats(allow_nan=True, allow_infinity=True, width=64))
# Mostly ordinary values, so that many calls get past the argument checks and compute.
values = st.one_of(st.floats(-10, 10), st.floats(-10, 10), st.floats(-10, 10), numbers)
DTYPES = [torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool, torch.complex64, torch.complex128]
BACKENDS = ["reference", "auto"] + (["cpu"] if "cpu" in aitimestepper.backends() else [])


def _special(draw, t: torch.Tensor) -> torch.Tensor:
    """t with a few entries replaced by extreme or non-finite values."""
    t = t.clone()
    flat = t.view(-1)
    for _ in range(draw(st.integers(1, 3)) if flat.numel() else 0):
        flat[draw(st.integers(0, flat.numel() - 1))] = torch.tensor(draw(numbers), dtype=torch.float64).to(t.dtype)
    return t


MUTATIONS = ("pos_values", "vel_values", "mass_values", "pos_dtype", "vel_dtype", "mass_dtype", "N", "D",
             "vel_shape", "mass_shape", "field", "G", "softening", "backend", "dt", "steps", "integrator")


@st.composite
def op_calls(draw):
    """A valid call of a public op with up to two of its arguments broken."""
    broken = set(draw(st.lists(st.sampled_from(MUTATIONS), max_size=2)))
    batch = tuple(draw(st.lists(st.integers(0 if "N" in broken else 1, 3), max_size=2)))
    N = draw(st.sampled_from([0, 1])) if "N" in broken else draw(st.integers(2, 5))
    D = draw(st.sampled_from([1, 4])) if "D" in broken else draw(st.sampled_from([2, 3]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    scale = draw(st.sampled_from([1.0, 1e-150, 1e150]))  # tiny and huge systems are legal
    pos = torch.randn(batch + (N, D), dtype=torch.float64, generator=torch.Generator().manual_seed(draw(
        st.integers(0, 2**32)))).mul(scale).to(dtype)
    vel = torch.randn_like(pos)
    mass = (torch.rand(draw(st.sampled_from([(N,), batch + (N,)])), dtype=dtype) + 0.1) * draw(
        st.sampled_from([1.0, 1e-30, 1e30]))
    if "pos_values" in broken:
        pos = _special(draw, pos)
    if "vel_values" in broken:
        vel = _special(draw, vel)
    if "mass_values" in broken:
        mass = _special(draw, mass) if draw(st.booleans()) else -mass
    for name in ("pos_dtype", "vel_dtype", "mass_dtype"):
        if name in broken:
            new_dtype = draw(st.sampled_from(DTYPES))
            value = {"pos_dtype": pos, "vel_dtype": vel, "mass_dtype": mass}[name]
            value = value.to(new_dtype) if new_dtype.is_floating_point or new_dtype.is_complex else \
                torch.zeros(value.shape, dtype=new_dtype)
            pos, vel, mass = {"pos_dtype": (value, vel, mass), "vel_dtype": (pos, value, mass),
                              "mass_dtype": (pos, vel, value)}[name]
    if "vel_shape" in broken:
        vel = torch.zeros(draw(st.sampled_from([(N, 3), (N + 1, D), (N,), (7,) + pos.shape])), dtype=pos.dtype)
    if "mass_shape" in broken:
        mass = torch.ones(draw(st.sampled_from([(N + 1,), (), (N, 1), (5,) + batch + (N,)])), dtype=pos.dtype)
    field = None
    if "field" in broken:
        field = (draw(st.one_of(st.floats(0, 3), numbers, st.just("1"))),
                 draw(st.one_of(st.lists(values, max_size=4).map(tuple), st.just(None), st.just("xy"))))
    elif draw(st.booleans()):
        field = (draw(st.floats(0, 3)), tuple(draw(st.lists(st.floats(1, 5), min_size=D, max_size=D))))
    kw = {"G": draw(st.one_of(numbers, st.sampled_from([0, "1", None]))) if "G" in broken else 1.0,
          "softening": draw(st.one_of(numbers, st.sampled_from(["0.1", None, -1]))) if "softening" in broken
          else draw(st.sampled_from([0.0, 0.1])),
          "backend": draw(st.sampled_from(["bogus", "", None, "cuda"])) if "backend" in broken
          else draw(st.sampled_from(BACKENDS))}
    op = draw(st.sampled_from(["acceleration", "potential_energy", "total_energy", "kinetic_energy",
                               "linear_momentum", "angular_momentum", "step"]))
    extra = {}
    if op == "step":
        if "dt" in broken:
            extra["dt"] = draw(st.one_of(numbers, st.just(None), st.just("0.1"),
                                         st.builds(lambda v: torch.full(batch, v, dtype=torch.float64), numbers),
                                         st.just(torch.ones(9, 9, dtype=pos.dtype))))
        else:
            extra["dt"] = draw(st.one_of(st.floats(0, 0.1), st.just(torch.full(batch, 0.01, dtype=pos.dtype))))
        extra["steps"] = draw(st.sampled_from([0, -1, 1.5, "2", True, None])) if "steps" in broken else \
            draw(st.integers(1, 3))
        extra["integrator"] = draw(st.sampled_from(["euler", "", None])) if "integrator" in broken else \
            draw(st.sampled_from(["leapfrog", "yoshida4"]))
    return op, pos, vel, mass, field, kw, extra


def _call(op, pos, vel, mass, field, kw, extra):
    if field is not None:
        field = aitimestepper.TidalField(mass=field[0], position=field[1])
    physics = dict(kw, field=field)
    if op == "acceleration":
        return ops.acceleration(pos, mass, **physics)
    if op == "potential_energy":
        return ops.potential_energy(pos, mass, **physics)
    if op == "total_energy":
        return ops.total_energy(pos, vel, mass, **physics)
    if op == "kinetic_energy":
        return ops.kinetic_energy(vel, mass)
    if op == "linear_momentum":
        return ops.linear_momentum(vel, mass)
    if op == "angular_momentum":
        return ops.angular_momentum(pos, vel, mass)
    return ops.step(pos, vel, mass, extra["dt"], steps=extra["steps"], integrator=extra["integrator"], **physics)


@FAST
@given(op_calls())
def test_ops_work_or_raise_a_package_error(call):
    try:
        _call(*call)
    except AITimeStepperError as error:
        assert isinstance(error, (ValueError, TypeError, RuntimeError))


# Values of every kind a TOML file or a caller could hand a setting.
setting_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), numbers,
    st.text(max_size=8), st.sampled_from(["cpu", "cuda", "cuda:7", "meta", "..", "a/b", "", "1e3", "nan", "-1"]),
    st.lists(st.one_of(st.integers(-3, 10**6), numbers, st.text(max_size=3)), max_size=4),
)


def _value_for(name: str):
    """A plausible value of the setting's own type, or anything at all."""
    kind, optional, is_list = setting_type(name)
    field = next(f for f in dataclasses.fields(Config) if f.name == name)
    if "choices" in field.metadata:
        own = st.sampled_from(list(field.metadata["choices"]))
    elif kind is int:
        own = st.integers(-3, 50)
    elif kind is float:
        own = st.one_of(st.floats(-1, 10), numbers)
    elif kind is bool:
        own = st.booleans()
    else:
        own = st.text(max_size=6)
    if is_list:
        own = st.lists(own, min_size=0, max_size=4)
    return st.one_of(own, own, own, setting_values)


SETTABLE = sorted(SETTING_NAMES - {"resume", "ic_path", "model_path", "wandb"})


@FAST
@given(st.lists(st.sampled_from(SETTABLE).flatmap(lambda name: st.tuples(st.just(name), _value_for(name))),
                max_size=4).map(dict),
       st.sampled_from(["train", "simulate"]))
def test_settings_work_or_raise_a_package_error(values, phase):
    try:
        build_config(phase, None, values)
    except AITimeStepperError as error:
        assert isinstance(error, (ValueError, TypeError))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=64))
def test_any_config_file_works_or_raises_a_package_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("toml") / "settings.toml"
    path.write_bytes(content)
    try:
        tables = read_toml(path)
        build_config("train", tables, {}, str(path))
    except AITimeStepperError:
        pass
