"""The physics as tests: conservation, reversibility, convergence order, the reference cases.

Long runs use fused steps (one `step` call advances many steps) on a compiled backend in float64:
the cpu kernels here, and cuda / triton where a GPU runs them. The interpreted Triton kernels
are far too slow for thousands of steps and skip (the forward and gradient tests cover them).

- A Kepler orbit (e = 0.5) for 1000 periods at fixed dt: |dE/E| stays bounded at the leapfrog
  truncation level and does not drift (first vs last 100 periods, linear fit).
- Linear and angular momentum are conserved to round-off.
- Leapfrog (and the symmetric yoshida4 composition) is time-reversible: K steps, negate the
  velocities, K steps, negate again, and the start comes back to ~1e-12 (dt < 0 is rejected by
  design, so reversal goes through the velocities).
- On every case in tests/data/cases/, leapfrog converges to the independent reference end state at
  second order and yoshida4 at fourth order; the figure-eight returns to its start.
- With a tidal field, the energy including the field's potential is conserved in 2-D and 3-D.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import aitimestepper
import aitimestepper.ops as ops
from conftest import (
    System,
    device_for,
    is_interpreted,
    kepler_period,
    kepler_system,
    make_system,
    relative_error,
    require_backend,
)

# Reference end states computed by an independent code (REBOUND IAS15); see data/cases/README.md.
CASES_DIR = Path(__file__).resolve().parent / "data" / "cases"
CASE_FILES = sorted(CASES_DIR.glob("*.json"))


@pytest.fixture(params=("cpu", "cuda", "triton"))
def physics_backend(request) -> str:
    """A compiled backend fast enough for thousands of fused steps."""
    require_backend(request.param)
    if is_interpreted(request.param):
        pytest.skip("triton interpreter on CPU: too slow for long integrations; runs on a GPU")
    return request.param


def _on(backend: str, s: System) -> System:
    return s.to(device=device_for(backend))


def _run_sampled(s: System, backend: str, *, dt: float, samples: int, steps_per_sample: int,
                 integrator: str = "leapfrog", **physics) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate and keep the state every `steps_per_sample` steps: [samples + 1, *s.pos.shape] each."""
    pos, vel = s.pos, s.vel
    kept_pos, kept_vel = [pos], [vel]
    # The ops feed on their own outputs here: the value checks (finite, coincident) would only
    # cost time, and a non-finite state would fail the energy checks below anyway.
    with ops.unchecked():
        for _ in range(samples):
            pos, vel = ops.step(pos, vel, s.mass, dt, steps=steps_per_sample, integrator=integrator,
                                backend=backend, **physics)
            kept_pos.append(pos)
            kept_vel.append(vel)
    return torch.stack(kept_pos), torch.stack(kept_vel)


def _energy_error(pos, vel, mass, backend, **physics) -> np.ndarray:
    """(E(t) - E(0)) / |E(0)| for states stacked along dim 0 (one batched energy call)."""
    E = ops.total_energy(pos, vel, mass.expand(pos.shape[:-1]), backend=backend, **physics).cpu()
    return ((E - E[0]) / E[0].abs()).numpy()


# ---------------------------------------------------------------------------------------------
# Kepler, 1000 periods


def test_kepler_energy_bounded_without_secular_drift(physics_backend):
    periods, steps_per_period, phases = 1000, 256, 16
    stride = steps_per_period // phases
    dt = kepler_period() / steps_per_period
    s = _on(physics_backend, kepler_system([0.5]))
    # One orbit sampled every `stride` steps, as `phases` copies started `stride` steps apart and
    # advanced one period per call: 1000 fused calls instead of 16000.
    starts_pos, starts_vel = [s.pos[0]], [s.vel[0]]
    for _ in range(phases - 1):
        pos, vel = ops.step(starts_pos[-1], starts_vel[-1], s.mass[0], dt, steps=stride, backend=physics_backend)
        starts_pos.append(pos)
        starts_vel.append(vel)
    copies = System(torch.stack(starts_pos), torch.stack(starts_vel), s.mass[0])
    pos, vel = _run_sampled(copies, physics_backend, dt=dt, samples=periods, steps_per_sample=steps_per_period)
    # [periods + 1, phases, 2, D] -> time order: sample j of copy k is step j * 256 + k * stride.
    pos, vel = pos.flatten(0, 1), vel.flatten(0, 1)
    mass = s.mass[0]
    error = _energy_error(pos, vel, mass, physics_backend)
    assert np.isfinite(error).all()

    # Bounded at the leapfrog truncation level for dt = T/256 at e = 0.5 (about 1.6e-3, set by
    # the pericentre passage): a first-order or non-symplectic scheme exceeds it.
    amplitude = np.abs(error).max()
    assert amplitude < 2.5e-3, f"max |dE/E| = {amplitude:.3e}"
    assert amplitude > 1e-5, f"max |dE/E| = {amplitude:.3e}: the orbit is not being integrated at dt = T/256"

    # No secular drift: the worst error of the first and the last 100 periods agree (they sample
    # the same pericentre passages), and a straight-line fit has no slope to speak of.
    window = 100 * phases
    first, last = np.abs(error[1:window + 1]).max(), np.abs(error[-window:]).max()
    assert abs(last / first - 1.0) < 0.05, f"max |dE/E| first 100 periods {first:.4e}, last 100 {last:.4e}"
    t = np.arange(error.size) * stride * dt
    slope = np.polyfit(t, error, 1)[0]
    assert abs(slope * t[-1]) < 0.01 * amplitude, f"drift over the run {slope * t[-1]:.3e} vs amplitude {amplitude:.3e}"

    # Momentum (zero in the centre-of-mass frame) and angular momentum: round-off only.
    P = ops.linear_momentum(vel, mass).cpu()
    L = ops.angular_momentum(pos, vel, mass).cpu()
    momentum_scale = (mass[:, None] * s.vel[0]).abs().sum().item()
    assert P.abs().max().item() < 1e-12 * momentum_scale, f"max |P| = {P.abs().max().item():.3e}"
    dL = (L - L[0]).abs().max().item()
    assert dL < 1e-11 * L[0].abs().item(), f"max |dL| = {dL:.3e} (L = {L[0].item():.3e})"


# ---------------------------------------------------------------------------------------------
# momentum, reversibility


@pytest.mark.parametrize("integrator", ["leapfrog", "yoshida4"])
@pytest.mark.parametrize("D", [2, 3], ids=["D2", "D3"])
def test_momentum_conserved_to_round_off(physics_backend, D, integrator):
    s = _on(physics_backend, make_system(32, D, (3,), seed=71, vel_scale=0.3))
    pos, vel = ops.step(s.pos, s.vel, s.mass, 1e-3, steps=2000, integrator=integrator,
                        softening=0.02, backend=physics_backend)
    # The run must go somewhere for the check to mean anything.
    assert relative_error(pos, s.pos) > 1e-2 and relative_error(vel, s.vel) > 1e-2
    for name, before, after in (
        ("P", ops.linear_momentum(s.vel, s.mass), ops.linear_momentum(vel, s.mass)),
        ("L", ops.angular_momentum(s.pos, s.vel, s.mass), ops.angular_momentum(pos, vel, s.mass)),
    ):
        # Scale: the sum of the magnitudes of the terms, as round-off in the sum is relative to it.
        if name == "P":
            scale = (s.mass[..., None] * s.vel).abs().sum().item()
        else:
            scale = (s.mass[..., None] * s.pos.norm(dim=-1, keepdim=True) * s.vel.norm(dim=-1, keepdim=True)).sum().item()
        change = (after - before).abs().max().item()
        assert change < 1e-13 * scale, f"{name} changed by {change:.3e} (scale {scale:.3e})"


REVERSIBLE_SYSTEMS = {
    # Kepler e = 0.5, one and a half periods at dt = T/256 (ending near apocentre, far from the start).
    "kepler": lambda: (kepler_system([0.5]), kepler_period() / 256, 384, {}),
    # 16 bodies in 3-D, softened, 1000 steps.
    "cluster3d": lambda: (make_system(16, 3, (2,), seed=72, vel_scale=0.3), 2e-3, 1000, dict(softening=0.05)),
}


@pytest.mark.parametrize("integrator", ["leapfrog", "yoshida4"])
@pytest.mark.parametrize("system", list(REVERSIBLE_SYSTEMS))
def test_time_reversible(physics_backend, system, integrator):
    s, dt, K, physics = REVERSIBLE_SYSTEMS[system]()
    s = _on(physics_backend, s)
    kw = dict(steps=K, integrator=integrator, backend=physics_backend, **physics)
    pos, vel = ops.step(s.pos, s.vel, s.mass, dt, **kw)
    assert relative_error(pos, s.pos) > 0.1, "the forward run barely moved: reversal would prove nothing"
    back_pos, back_vel = ops.step(pos, -vel, s.mass, dt, **kw)
    back_vel = -back_vel
    for name, back, start in (("pos", back_pos, s.pos), ("vel", back_vel, s.vel)):
        error = relative_error(back, start)
        assert error < 1e-12, f"{name} after forward + reversed run: relative error {error:.3e}"


# ---------------------------------------------------------------------------------------------
# the reference cases in tests/data/cases/

# First step count 2^k of the three runs (2^k, 2^(k+1), 2^(k+2) steps over t_end) per case and
# integrator: inside the asymptotic regime (README there: ~2^11 steps for most cases, 2^14 and
# more for the e = 0.9 Kepler orbit; yoshida4 gets there with fewer for the smooth cases) and,
# at the finest run, still well above the float64 round-off floor (~1e-13).
FIRST_STEPS_LOG2 = {
    "figure_eight_2d": {"leapfrog": 11, "yoshida4": 9},
    "kepler_e0.6_2d": {"leapfrog": 12, "yoshida4": 11},
    "kepler_e0.9_2d": {"leapfrog": 15, "yoshida4": 12},
    "plummer16_3d_soft": {"leapfrog": 11, "yoshida4": 10},
    "pythagorean_2d_t1.5": {"leapfrog": 11, "yoshida4": 7},
}
DEFAULT_FIRST_STEPS_LOG2 = {"leapfrog": 12, "yoshida4": 10}
ORDER_BOUNDS = {"leapfrog": (1.8, 2.3), "yoshida4": (3.6, 4.5)}
ROUND_OFF_FLOOR = 1e-11  # the finest run's error must stay above this for the order to mean anything


def _load_case(path: Path) -> dict:
    case = json.loads(path.read_text())
    to = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    case["system"] = System(to(case["pos"]), to(case["vel"]), to(case["masses"]))
    case["end"] = (to(case["reference"]["pos"]), to(case["reference"]["vel"]))
    return case


def _case_params():
    if not CASE_FILES:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no reference cases: {CASES_DIR} is missing or empty"))]
    return [pytest.param(path, id=path.stem) for path in CASE_FILES]


def _state_error(pos, vel, end) -> float:
    """Norm-wise relative error of the state (positions and velocities together) against the reference."""
    got = torch.cat([pos.reshape(-1), vel.reshape(-1)]).cpu()
    ref = torch.cat([end[0].reshape(-1), end[1].reshape(-1)])
    return ((got - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("path", _case_params())
def test_case_initial_energy_matches_the_case_file(path):
    case = _load_case(path)
    s = case["system"]
    E = ops.total_energy(s.pos, s.vel, s.mass, G=case["G"], softening=case["softening"], backend="reference")
    assert abs(E.item() - case["energy_initial"]) <= 1e-13 * abs(case["energy_initial"])


@pytest.mark.parametrize("integrator", ["leapfrog", "yoshida4"])
@pytest.mark.parametrize("path", _case_params())
def test_case_converges_at_the_integrator_order(physics_backend, path, integrator):
    case = _load_case(path)
    s = _on(physics_backend, case["system"])
    k0 = FIRST_STEPS_LOG2.get(case["name"], DEFAULT_FIRST_STEPS_LOG2)[integrator]
    errors = []
    for k in (k0, k0 + 1, k0 + 2):
        n = 2**k
        pos, vel = ops.step(s.pos, s.vel, s.mass, case["t_end"] / n, steps=n, integrator=integrator,
                            G=case["G"], softening=case["softening"], backend=physics_backend)
        errors.append(_state_error(pos, vel, case["end"]))
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    low, high = ORDER_BOUNDS[integrator]
    detail = f"{case['name']} {integrator}: errors {['%.3e' % e for e in errors]} at 2^{k0}.. steps, orders {['%.2f' % o for o in orders]}"
    assert errors[-1] > ROUND_OFF_FLOOR, f"test setup: {detail} reach the round-off floor; start coarser"
    assert all(low <= order <= high for order in orders), detail


def test_figure_eight_returns_to_its_start(physics_backend):
    path = CASES_DIR / "figure_eight_2d.json"
    if not path.is_file():
        pytest.skip(f"no figure-eight case at {path}")
    case = _load_case(path)
    s = _on(physics_backend, case["system"])
    n = 2**11
    kw = dict(integrator="yoshida4", G=case["G"], softening=case["softening"], backend=physics_backend)
    half = ops.step(s.pos, s.vel, s.mass, case["t_end"] / n, steps=n // 2, **kw)
    assert relative_error(half[0], s.pos) > 0.5, "at half a period the bodies should be far from their start"
    pos, vel = ops.step(half[0], half[1], s.mass, case["t_end"] / n, steps=n // 2, **kw)
    # The orbit closes to ~3e-8 (the reference integration's own distance from the start).
    assert relative_error(pos, s.pos) < 1e-6 and relative_error(vel, s.vel) < 1e-6


# ---------------------------------------------------------------------------------------------
# energy with a tidal field


@pytest.mark.parametrize("D", [2, 3], ids=["D2", "D3"])
def test_energy_with_tidal_field_is_conserved(physics_backend, D):
    # A binary (a = 0.3, e = 0.3) at the origin of a field of M = 2 at R = (3, 1[, 1]): the field
    # moves the binary's energy by ~0.5 %, the integrator error is ~2e-5. Ten binary periods: long
    # enough to see drift, short enough that the binary stays near the origin (along R the
    # tidal field pushes it away exponentially).
    field = aitimestepper.TidalField(mass=2.0, position=(3.0, 1.0, 1.0)[:D])
    a, steps_per_period, periods, steps_per_sample = 0.3, 1000, 10, 10
    s = _on(physics_backend, kepler_system([0.3], a=a, D=D))
    dt = kepler_period(a=a) / steps_per_period
    pos, vel = _run_sampled(s, physics_backend, dt=dt, samples=periods * steps_per_period // steps_per_sample,
                            steps_per_sample=steps_per_sample, field=field)
    error = _energy_error(pos[:, 0], vel[:, 0], s.mass[0], physics_backend, field=field)
    without_field = _energy_error(pos[:, 0], vel[:, 0], s.mass[0], physics_backend)
    amplitude = np.abs(error).max()
    assert amplitude < 5e-5, f"max |dE/E| with the field's potential in E: {amplitude:.3e}"
    # The field really acts: leaving its potential out of E shows a far larger change.
    assert np.abs(without_field).max() > 20 * amplitude, "the tidal field does not change the orbit's energy"
    half = error.size // 2
    assert np.abs(error[half:]).max() < 1.1 * np.abs(error[1:half]).max(), "energy error grows"
    slope = np.polyfit(np.arange(error.size), error, 1)[0]
    assert abs(slope * error.size) < 0.01 * amplitude, "energy drifts"
