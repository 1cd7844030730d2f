"""torch.compile is a contract: every public op traces as one graph (fullgraph=True), with the
default input checks on, and gives what eager gives, forward and backward.

The value checks (finite, positive, coincident bodies) are skipped while compiling (they turn
tensor values into Python control flow); shape, dtype and device checks still run at trace time.
The compiled graphs run with the `aot_eager` backend: AOTAutograd traces the forward and the
backward through the torch.library ops (their fake implementations and autograd formulas) as
inductor would, without spending minutes of C++ compilation on two cores.
"""
from __future__ import annotations

import pytest
import torch

import aitimestepper.ops as ops
from conftest import require_backend

BACKENDS = ["reference", "cpu"]
COMPILE_BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _system(B=2, N=5, D=3, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(B, N, D, generator=gen, dtype=dtype)
    vel = 0.1 * torch.randn(B, N, D, generator=gen, dtype=dtype)
    mass = torch.rand(B, N, generator=gen, dtype=dtype) + 0.5
    return pos, vel, mass


OPS = {
    "acceleration": lambda pos, vel, mass, backend: ops.acceleration(pos, mass, softening=0.1, backend=backend),
    "potential_energy": lambda pos, vel, mass, backend: ops.potential_energy(pos, mass, softening=0.1,
                                                                             backend=backend),
    "total_energy": lambda pos, vel, mass, backend: ops.total_energy(pos, vel, mass, softening=0.1,
                                                                     backend=backend),
    "kinetic_energy": lambda pos, vel, mass, backend: ops.kinetic_energy(vel, mass),
    "linear_momentum": lambda pos, vel, mass, backend: ops.linear_momentum(vel, mass),
    "angular_momentum": lambda pos, vel, mass, backend: ops.angular_momentum(pos, vel, mass),
    "step": lambda pos, vel, mass, backend: ops.step(pos, vel, mass, 1e-2, steps=2, softening=0.1,
                                                     integrator="yoshida4", backend=backend),
}


def test_every_public_op_is_covered():
    exported = {name for name in ops.__all__ if not name.startswith("bind_")}
    assert exported - {"available_backends", "build_info", "unchecked"} == set(OPS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPS))
def test_public_op_compiles_as_one_graph(name, backend):
    require_backend(backend)
    pos, vel, mass = _system()
    fn = OPS[name]
    eager = fn(pos, vel, mass, backend)
    compiled = torch.compile(fn, fullgraph=True, backend=COMPILE_BACKEND)(pos, vel, mass, backend)
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_like_step_compiles_and_matches_eager(backend):
    """Forward of ops.step, then ops.total_energy, backward to dt (and the initial state)."""
    require_backend(backend)
    pos0, vel0, mass = _system(B=3, N=4)

    def energy_error(pos, vel, dt):
        e0 = ops.total_energy(pos, vel, mass, softening=0.1, backend=backend)
        p, v = ops.step(pos, vel, mass, dt, steps=3, softening=0.1, backend=backend)
        e1 = ops.total_energy(p, v, mass, softening=0.1, backend=backend)
        return ((e1 - e0) / e0).abs().sum()

    def run(fn):
        pos, vel = pos0.clone().requires_grad_(True), vel0.clone().requires_grad_(True)
        dt = torch.tensor([1e-2, 2e-2, 5e-3], dtype=torch.float64, requires_grad=True)
        loss = fn(pos, vel, dt)
        loss.backward()
        return loss.detach(), dt.grad, pos.grad, vel.grad

    eager = run(energy_error)
    compiled = run(torch.compile(energy_error, fullgraph=True, backend=COMPILE_BACKEND))
    for got, want, what in zip(compiled, eager, ("loss", "d/d dt", "d/d pos", "d/d vel")):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14, msg=lambda m: f"{what}: {m}")
    assert bool((eager[1] != 0).all()), "the gradient reaches every system's dt"


def test_value_checks_still_run_in_eager_around_compiled_code():
    """Skipping them while tracing does not switch them off for eager calls."""
    pos, vel, mass = _system()
    torch.compile(OPS["acceleration"], fullgraph=True, backend=COMPILE_BACKEND)(pos, vel, mass, "reference")
    bad = pos.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        ops.acceleration(bad, mass, softening=0.1, backend="reference")
