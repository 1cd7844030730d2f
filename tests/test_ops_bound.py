"""The bound ops of hot loops: bind_acceleration (checked once, then straight to the backend) and
bind_carried_step (one step in place, carrying the acceleration), against the public ops and the
PyTorch substep physics.integrators.kick_drift_kick."""
import pytest
import torch

from aitimestepper import ops
from aitimestepper.errors import InputError
from aitimestepper.physics.integrators import kick_drift_kick, substep_weights
from conftest import (assert_matches_reference, device_for, make_system, require_backend,
                      skip_float32_in_interpreter, tidal_field)


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_bound_acceleration_equals_acceleration(any_backend, batch):
    device = device_for(any_backend)
    system = make_system(5, 3, batch, seed=1).to(device=device)
    kwargs = dict(G=1.5, softening=0.02, field=tidal_field(3), backend=any_backend)
    force = ops.bind_acceleration(system.pos, system.mass, **kwargs)
    for pos in (system.pos, system.pos * 1.1):
        assert torch.equal(force(pos), ops.acceleration(pos, system.mass, **kwargs))
    # Other positions take the full, checked op: the same values, or its error message.
    other = make_system(5, 3, (4,), seed=2).to(device=device)
    assert torch.equal(ops.bind_acceleration(other.pos[:1], other.mass[:1], **kwargs)(other.pos),
                       ops.acceleration(other.pos, other.mass[:1], **kwargs))
    with pytest.raises(InputError, match="D = 2 or 3"):
        force(torch.zeros(*batch, 5, 4, dtype=torch.float64, device=device))


def _reference_step(pos, vel, acc, mass, dt, integrator, physics):
    """One step of the PyTorch substeps with the reference force, in float64."""
    def force(x):
        return ops.acceleration(x, mass, backend="reference", **physics)

    h_step = dt.view(-1, 1, 1)
    for c in substep_weights(integrator):
        pos, vel, acc = kick_drift_kick(pos, vel, acc, h_step if c == 1.0 else c * h_step, force)
    return pos, vel, acc


@pytest.mark.parametrize("integrator", ["leapfrog", "yoshida4"])
@pytest.mark.parametrize("N, D, B", [(2, 2, 1), (3, 3, 4), (8, 3, 3), (70, 2, 2)])
def test_carried_step_matches_the_pytorch_substeps(any_backend, dtype, integrator, N, D, B):
    """Three carried steps against the PyTorch substeps in float64, and the energy each step
    reports (with_energy) against the reference's total energy of the same state."""
    skip_float32_in_interpreter(any_backend, dtype)
    device = device_for(any_backend)
    system = make_system(N, D, (B,), dtype=dtype, seed=N)
    physics = dict(G=1.2, softening=0.05, field=tidal_field(D))
    dt = torch.linspace(1e-3, 4e-3, B, dtype=dtype)
    pos, vel, mass = (t.to(device).clone() for t in (system.pos, system.vel, system.mass))
    acc = ops.acceleration(pos, mass, backend=any_backend, **physics).contiguous()
    advance = ops.bind_carried_step(pos, vel, acc, mass, integrator=integrator, backend=any_backend,
                                    with_energy=True, **physics)
    oracle = list(t.double() for t in (system.pos, system.vel))
    oracle.append(ops.acceleration(oracle[0], system.mass.double(), backend="reference", **physics))
    ours32 = [t.clone() for t in (system.pos, system.vel)] if dtype == torch.float32 else None
    if ours32 is not None:
        ours32.append(ops.acceleration(ours32[0], system.mass, backend="reference", **physics))
    for _ in range(3):  # the carried acceleration must be the one each next step needs
        advance(dt.to(device))
        oracle = _reference_step(*oracle[:3], system.mass.double(), dt.double(), integrator, physics)
        if ours32 is not None:
            ours32 = _reference_step(*ours32, system.mass, dt, integrator, physics)
    for name, ours, expected, own in zip(("pos", "vel", "acc"), (pos, vel, acc), oracle, ours32 or [None] * 3):
        assert_matches_reference(ours, expected, own, what=f"{any_backend} carried step {name}")
    energy = ops.total_energy(*oracle[:2], system.mass.double(), backend="reference", **physics)
    energy32 = None if ours32 is None else ops.total_energy(*ours32[:2], system.mass, backend="reference", **physics)
    assert advance.energy.shape == (B,)
    assert_matches_reference(advance.energy, energy, energy32, what=f"{any_backend} carried step energy")


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_carried_step_on_a_compiled_backend_is_the_fused_step_kernels_step(backend, dtype):
    """Same substep arithmetic as the backend's fused step (aits::cpu::step; on CUDA the
    one-thread-per-system step_kernel): a carried step is bitwise one fused step."""
    require_backend(backend)
    device = device_for(backend)
    for integrator in ("leapfrog", "yoshida4"):
        system = make_system(4, 3, (5,), dtype=dtype, seed=3).to(device=device)
        dt = torch.linspace(1e-3, 3e-3, 5, dtype=dtype, device=device)
        pos, vel = system.pos.clone(), system.vel.clone()
        acc = ops.acceleration(pos, system.mass, softening=0.01, backend=backend)
        advance = ops.bind_carried_step(pos, vel, acc, system.mass, integrator=integrator, softening=0.01,
                                        backend=backend)
        expected_pos, expected_vel = system.pos, system.vel
        for _ in range(4):
            advance(dt)
            expected_pos, expected_vel = ops.step(expected_pos, expected_vel, system.mass, dt, steps=1,
                                                  integrator=integrator, softening=0.01, backend=backend)
            assert torch.equal(pos, expected_pos) and torch.equal(vel, expected_vel), integrator
        assert torch.equal(acc, ops.acceleration(pos, system.mass, softening=0.01, backend=backend))
        assert advance.energy is None  # not asked for


def test_carried_step_on_the_reference_backend_is_the_pytorch_substep_bitwise():
    system = make_system(3, 2, (2,), seed=4)
    dt = torch.tensor([1e-3, 2e-3], dtype=torch.float64)
    pos, vel = system.pos.clone(), system.vel.clone()
    acc = ops.acceleration(pos, system.mass, backend="reference")
    ops.bind_carried_step(pos, vel, acc, system.mass, integrator="yoshida4", backend="reference")(dt)
    expected = _reference_step(system.pos, system.vel, ops.acceleration(system.pos, system.mass, backend="reference"),
                               system.mass, dt, "yoshida4", {})
    assert all(torch.equal(a, b) for a, b in zip((pos, vel, acc), expected))


def test_carried_step_takes_dt_as_a_float_or_a_broadcast_tensor():
    system = make_system(3, 2, (2, 3), seed=6)
    results = []
    for dt in (2e-3, torch.tensor(2e-3, dtype=torch.float64), torch.full((2, 3), 2e-3, dtype=torch.float64)):
        pos, vel = system.pos.clone(), system.vel.clone()
        acc = ops.acceleration(pos, system.mass)
        ops.bind_carried_step(pos, vel, acc, system.mass)(dt)
        results.append(pos)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_carried_step_rejects_what_it_cannot_update_in_place():
    system = make_system(3, 2, (2,), seed=7)
    pos, vel = system.pos.clone(), system.vel.clone()
    acc = ops.acceleration(pos, system.mass)
    with pytest.raises(InputError, match="vel must be contiguous"):
        ops.bind_carried_step(pos, vel.transpose(0, 1).contiguous().transpose(0, 1), acc, system.mass)
    with pytest.raises(InputError, match="acc must be a tensor of pos's shape"):
        ops.bind_carried_step(pos, vel, acc[:1], system.mass)
    with pytest.raises(InputError, match="three different buffers"):
        ops.bind_carried_step(pos, vel, pos, system.mass)
    with pytest.raises(InputError, match="not differentiable"):
        ops.bind_carried_step(pos.clone().requires_grad_(), vel, acc, system.mass)
    advance = ops.bind_carried_step(pos, vel, acc, system.mass)
    with pytest.raises(InputError, match="dt must be a float or a tensor broadcastable"):
        advance(torch.ones(3, dtype=torch.float64))
    with pytest.raises(InputError, match="dt requires grad"):
        advance(torch.full((2,), 1e-3, dtype=torch.float64, requires_grad=True))
    with pytest.raises(InputError, match="dt must be finite and >= 0"):
        advance(-1e-3)  # not a [B] tensor: checked as step() checks it (a [B] tensor's values are not)
