"""The learned step: its training signal, its units, its time symmetry, its start-up and its report.

- A sample whose step was needlessly accurate (r below E_lower) gets a gradient that raises dt.
- The scale-aware dt with `scaled` features rescales exactly as the physics does, in either time
  scale; the encounter time is the smaller of the dynamical and the fly-by time, and a fresh
  network measured in it is the classical criterion in that time, in training and simulation.
- The symmetric step rule retraces its steps when the run is reversed.
- With history features, the first K steps are classical and no zero-padded window is fed.
- The simulation reports the largest energy error, ignores the cut last step in dt_min, counts
  only the force evaluations a system used, and ends a collision quickly.
- `evaluate` reads every method at the learned run's cost.
"""
import io
import json
import math

import pytest
import torch

from _product import BACKEND, tiny_config
from aitimestepper import ops
from aitimestepper.config import build_config
from aitimestepper.errors import ConfigError, TrainingStopped
from aitimestepper.evaluate import evaluate, interpolate, Run
from aitimestepper.features import Featurizer, Scales
from aitimestepper.model import FullyConnectedNN
from aitimestepper.config import TIMESCALES
from aitimestepper.initial_conditions import kepler_orbits
from aitimestepper.physics.timescale import dynamical_time, eta_criterion, flyby_time, step_time
from aitimestepper.simulate import SymmetricSteps, run_simulation
from aitimestepper.training import run_training
from aitimestepper.training.loop import setup
from aitimestepper.training.part1 import collect
from aitimestepper.training.part2 import evaluate as judge_samples
from aitimestepper.training.part2 import iteration

DTYPE = torch.float64


def _three_bodies(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(2, 3, 2, generator=g, dtype=DTYPE)
    vel = 0.5 * torch.randn(2, 3, 2, generator=g, dtype=DTYPE)
    mass = torch.rand(2, 3, generator=g, dtype=DTYPE) + 0.5
    return pos, vel, mass


def test_a_sample_below_E_lower_pushes_dt_up(tmp_path):
    # eta_init 1e-3 makes every step far more accurate than the band asks (r << E_lower = 1e-6).
    cfg = tiny_config(tmp_path, eta_init=1e-3, E_lower=1e-6, E_upper=1e-4, steps_per_epoch=8, lr=1e-2)
    run = setup(cfg)
    trainer = run.trainer
    collect(trainer, 0, run.steps_done, run.retries)
    samples = trainer.replay.take(torch.arange(len(trainer.replay)))
    with torch.no_grad():
        before = judge_samples(trainer, samples)
    assert bool((before.r < cfg.E_lower).all()), "the setup must put every sample below the band"
    fails, converged, _ = iteration(trainer, samples)
    assert fails == 0 and not converged  # all pass the gate, yet the loss is not small: a step is taken
    with torch.no_grad():
        after = judge_samples(trainer, samples)
    assert bool((after.dt > before.dt).all())


def test_train_on_failing_ignores_samples_below_the_band(tmp_path):
    cfg = tiny_config(tmp_path, eta_init=1e-3, steps_per_epoch=8, lr=1e-2, train_on="failing")
    run = setup(cfg)
    collect(run.trainer, 0, run.steps_done, run.retries)
    samples = run.trainer.replay.take(torch.arange(len(run.trainer.replay)))
    assert iteration(run.trainer, samples)[:2] == (0, True)


def test_threshold_below_E_upper_is_refused():
    with pytest.raises(ConfigError, match="E_upper"):
        build_config("train", None, {"energy_threshold": 1e-6})


@pytest.mark.parametrize("timescale", TIMESCALES)
def test_scale_aware_dt_rescales_as_the_physics_does(timescale):
    torch.manual_seed(0)
    featurizer = Featurizer("scaled", 0, Scales(), softening=0.0, G=1.0)
    model = FullyConnectedNN(featurizer.input_dim, [16, 16], dropout=0.0, timescale=timescale).to(DTYPE)
    with torch.no_grad():  # a trained-looking network: the zero-initialised row would hide the features
        model.net[-2].weight.normal_()
    pos, vel, mass = _three_bodies()
    length, mass_unit, G = 4.0, 16.0, 0.25  # powers of two: every rescaling is exact in binary
    time_unit = math.sqrt(length ** 3 / (G * mass_unit))

    def predicted(pos, vel, mass, G):
        acc = ops.acceleration(pos, mass, G=G, backend=BACKEND)
        scaled = Featurizer("scaled", 0, Scales(), softening=0.0, G=G)
        with torch.no_grad():
            return model.dt(scaled.state_block(pos, vel, mass, acc), step_time(pos, vel, acc, model.timescale))

    dt = predicted(pos, vel, mass, 1.0)
    rescaled = predicted(pos * length, vel * (length / time_unit), mass * mass_unit, G)
    torch.testing.assert_close(rescaled, dt * time_unit, rtol=1e-12, atol=0)
    assert float((dt - dt.mean()).abs().max()) > 0, "the network must depend on the state for this to mean much"


def test_fresh_scale_aware_network_is_the_eta_criterion():
    featurizer = Featurizer("scaled", 0, Scales())
    model = FullyConnectedNN(featurizer.input_dim, [8], dropout=0.0, eta_init=0.03).to(DTYPE)
    pos, vel, mass = _three_bodies(1)
    acc = ops.acceleration(pos, mass, backend=BACKEND)
    with torch.no_grad():
        dt = model.dt(featurizer.state_block(pos, vel, mass, acc), dynamical_time(pos, acc))
    torch.testing.assert_close(dt, eta_criterion(pos, acc, 0.03), rtol=1e-14, atol=0)


def test_encounter_time_is_the_smaller_of_tau_and_the_flyby_time():
    pos, vel, mass = _three_bodies(3)
    acc = ops.acceleration(pos, mass, backend=BACKEND)
    by_loop = torch.tensor([min(float((pos[b, i] - pos[b, j]).norm() / (vel[b, i] - vel[b, j]).norm())
                                for i in range(3) for j in range(i + 1, 3)) for b in range(2)], dtype=DTYPE)
    torch.testing.assert_close(flyby_time(pos, vel), by_loop, rtol=1e-14, atol=0)
    torch.testing.assert_close(step_time(pos, vel, acc, "encounter"),
                               torch.minimum(dynamical_time(pos, acc), by_loop), rtol=1e-14, atol=0)
    assert torch.equal(step_time(pos, vel, acc, "acceleration"), dynamical_time(pos, acc))
    # Two unit masses at pericentre: the relative speed is sqrt(2 (1 + e) / d), so the fly-by time
    # is tau / sqrt(2 (1 + e)); half an orbit later, at apocentre, tau is the smaller.
    e = 0.9
    orbit = kepler_orbits(1, 2, 1.0, (e, e), (1.0, 1.0), 1.0, torch.Generator().manual_seed(0))
    acc = ops.acceleration(orbit.pos, orbit.mass, backend=BACKEND)
    tau = dynamical_time(orbit.pos, acc)
    torch.testing.assert_close(step_time(orbit.pos, orbit.vel, acc, "encounter"), tau / math.sqrt(2 * (1 + e)),
                               rtol=1e-12, atol=0)
    apocentre, slower = -orbit.pos * (1 + e) / (1 - e), orbit.vel * (1 - e) / (1 + e)
    acc = ops.acceleration(apocentre, orbit.mass, backend=BACKEND)
    assert torch.equal(step_time(apocentre, slower, acc, "encounter"), dynamical_time(apocentre, acc))
    with pytest.raises(ValueError, match="unknown timescale 'free-fall'"):
        step_time(apocentre, slower, acc, "free-fall")


def test_a_fresh_encounter_network_is_the_encounter_criterion_in_simulation(tmp_path):
    """Training saves the time scale with the model, and simulation measures the learned step in
    it: with lr = 1e-300 the network stays fresh, so its run is the classical run in that time scale
    (and differs from the run in the dynamical time)."""
    checkpoint = run_training(tiny_config(tmp_path, save_name="enc", timescale="encounter", lr=1e-300, eta_init=0.005,
                                          e_min=0.5, e_max=0.5, duration=60.0), progress=False).checkpoint
    assert torch.load(checkpoint, weights_only=True)["architecture"]["timescale"] == "encounter"
    common = dict(steps=200, step_rule="plain")
    learned = _records(_sim_config(tmp_path, integrator_mode="ml", model_path=checkpoint, **common))[0]
    classical = {scale: _records(_sim_config(tmp_path, integrator_mode="adaptive", eta=0.005, timescale=scale,
                                             **common))[0] for scale in TIMESCALES}
    for key in ("t_final", "energy_error_max", "dt_min", "dt_max"):
        assert learned[key] == pytest.approx(classical["encounter"][key], rel=1e-9), key
    assert classical["encounter"]["t_final"] < 0.95 * classical["acceleration"]["t_final"]
    with pytest.raises(ConfigError, match="measures its step in the encounter time"):
        _records(_sim_config(tmp_path, integrator_mode="ml", model_path=checkpoint, timescale="acceleration", **common))
    # evaluate adds the learned step's own starting point, and keeps the eta criterion in the dynamical time.
    report = evaluate(_sim_config(tmp_path, model_path=checkpoint, Nperiod=0.25), stream=None)
    assert [row["method"] for row in report["rows"]][2:6] == ["fixed-dt leapfrog", "eta criterion",
                                                              "eta criterion, symmetric", "eta x encounter time, symm."]
    assert report["runs"]["eta criterion, symmetric"][0]["label"] == "eta criterion (symmetric, acceleration time)"
    assert report["runs"]["eta x encounter time, symm."][0]["label"] == "eta criterion (symmetric, encounter time)"


def test_bounded_factor_stays_in_its_range():
    """With --dt-factor-range R the step stays within a factor R of the eta criterion whatever the
    network outputs, a fresh network is still the eta criterion, and the bound is smooth (the
    gradient reaches the network from inside the range)."""
    featurizer = Featurizer("scaled", 0, Scales())
    model = FullyConnectedNN(featurizer.input_dim, [8], dropout=0.0, eta_init=0.03, dt_factor_range=2.0).to(DTYPE)
    pos, vel, mass = _three_bodies(1)
    acc = ops.acceleration(pos, mass, backend=BACKEND)
    inputs, tau, classical = featurizer.state_block(pos, vel, mass, acc), dynamical_time(pos, acc), eta_criterion(pos, acc, 0.03)
    with torch.no_grad():
        torch.testing.assert_close(model.dt(inputs, tau), classical, rtol=1e-14, atol=0)
        last = model.net[-2]
        for bias in (-800.0, -30.0, -1.0, 0.5, 3.0, 30.0, 1e4):  # outputs far outside any sensible range
            last.bias[0] = bias
            ratio = model.dt(inputs, tau) / classical
            assert bool(((ratio >= 0.5 * (1 - 1e-12)) & (ratio <= 2.0 * (1 + 1e-12))).all()), (bias, ratio)
        last.bias[0] = 0.3
    ratio = model.dt_from_output(model(inputs), tau) / classical
    ratio.sum().backward()
    assert float(last.bias.grad[0]) > 0
    with pytest.raises(ValueError, match="dt_factor_range must be a finite number > 1"):
        FullyConnectedNN(featurizer.input_dim, [8], dt_factor_range=1.0)
    with pytest.raises(ConfigError, match="dt_factor_range must be a finite number > 1"):
        build_config("train", None, {"dt_factor_range": 0.5})


def test_symmetric_step_rule_retraces_its_steps():
    pos, vel, mass = _three_bodies(2)
    pos, vel, mass = pos[:1], vel[:1], mass[:1]
    physics = {"softening": 0.05, "backend": BACKEND}

    def run(pos, vel, rule, steps):
        taken = []
        for _ in range(steps):
            acc = ops.acceleration(pos, mass, **physics)
            h = rule(eta_criterion(pos, acc, 0.05))
            taken.append(h.item())
            pos, vel = ops.step(pos, vel, mass, h, **physics)
        return pos, vel, taken

    forward = SymmetricSteps()
    end_pos, end_vel, steps = run(pos, vel, forward, 200)
    assert max(steps) / min(steps) > 1.5, "the step must vary for the test to mean anything"
    # The reversed run starts from the step the forward run would have taken next.
    backward = SymmetricSteps()
    backward.previous = forward(eta_criterion(end_pos, ops.acceleration(end_pos, mass, **physics), 0.05))
    back_pos, back_vel, back_steps = run(end_pos, -end_vel, backward, 200)
    assert back_steps == pytest.approx(steps[::-1], rel=1e-10)
    torch.testing.assert_close(back_pos, pos, rtol=0, atol=1e-10)
    torch.testing.assert_close(-back_vel, vel, rtol=0, atol=1e-10)


def test_plain_state_dependent_step_does_not_retrace():
    """The control: with h = f(s_n) the reversed run takes other steps."""
    pos, vel, mass = _three_bodies(2)
    pos, vel, mass = pos[:1], vel[:1], mass[:1]
    f = lambda p: eta_criterion(p, ops.acceleration(p, mass, softening=0.05), 0.05)  # noqa: E731
    h_forward = f(pos)
    end_pos, end_vel = ops.step(pos, vel, mass, h_forward, softening=0.05)
    h_backward = f(end_pos)
    assert abs(h_backward.item() - h_forward.item()) > 1e-6 * h_forward.item()


def _sim_config(tmp_path, **changes):
    return build_config("simulate", None, {"backend": BACKEND, "output_dir": str(tmp_path / "data"),
                                           "e_min": 0.5, "e_max": 0.5, **changes})


def _records(cfg):
    stream = io.StringIO()
    run_simulation(cfg, stream=stream)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_history_window_is_filled_by_classical_steps_first(tmp_path, monkeypatch):
    train = tiny_config(tmp_path, history_len=3, save_name="hist")
    checkpoint = run_training(train, progress=False).checkpoint
    seen = []
    original = FullyConnectedNN.bind_dt

    def spying_bind(self, rows, dtype, device):
        bound = original(self, rows, dtype, device)

        def spy(inputs, tau):
            seen.append(inputs.clone())
            return bound(inputs, tau)
        return spy

    monkeypatch.setattr(FullyConnectedNN, "bind_dt", spying_bind)
    cfg = _sim_config(tmp_path, integrator_mode="history", model_path=checkpoint, steps=10, step_rule="plain",
                      plot=str(tmp_path / "h.png"), movie_max_frames=100)
    records = _records(cfg)
    assert len(seen) == 10 - 3  # the first 3 steps are classical
    block = seen[0].shape[-1] // 4
    for inputs in seen:  # every block of every window comes from a real state
        assert bool((inputs.view(-1, 4, block).abs().sum(-1) > 0).all())
    assert records[0]["steps"] == 10


def test_simulation_reports_max_error_cut_step_and_own_evaluations(tmp_path):
    records = _records(_sim_config(tmp_path, integrator_mode="analytic", dt=0.03, duration=0.1))
    assert records[0]["steps"] == 4 and records[0]["t_final"] == pytest.approx(0.1)
    assert records[0]["dt_min"] == pytest.approx(0.03)  # not the last step's 0.01
    assert records[0]["energy_error_max"] >= abs(records[0]["energy_residual"]) > 0
    # Two orbits of different periods: each counts only the evaluations it used.
    two = _records(_sim_config(tmp_path, integrator_mode="adaptive", Nperiod=1.0, num_orbits=2, e_min=0.2,
                               e_max=0.8, a_min=0.5, a_max=2.0, seed=3))
    assert two[0]["steps"] != two[1]["steps"]
    assert all(r["force_evaluations"] == r["steps"] + 1 for r in two)


def test_head_on_collision_ends_quickly_and_says_so(tmp_path):
    path = tmp_path / "collision.npy"
    import numpy as np

    np.save(path, np.array([[1.0, -0.5, 0.0, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0, 0.0]]))
    records = _records(_sim_config(tmp_path, integrator_mode="adaptive", ic_path=str(path), duration=10.0,
                                   step_cap=200_000))
    assert records[0]["stalled"] or records[0]["diverged"]
    assert records[0]["steps"] < 200_000 and not records[0]["step_cap_reached"]


def test_interpolation_at_the_learned_cost():
    runs = [Run("x", 100, 1e-2, 99, 0.0), Run("x", 200, 2.5e-3, 199, 0.0), Run("x", 400, 6.25e-4, 399, 0.0)]
    value, note = interpolate(runs, 141.42135623730951, 0.1)
    assert value == pytest.approx(5e-3, rel=1e-9) and note == ""
    # A run that diverged a third of the way through would have cost 3 x 50 = 150 evaluations.
    diverged = [Run("x", 50, math.inf, 49, 0.0, planned_evaluations=150.0)] + runs[1:]
    assert interpolate(diverged, 120, 0.1) == (0.1, "diverged at this cost: the error exceeds 0.1")
    assert interpolate(diverged, 160, 0.1) == (pytest.approx(3.906e-3, rel=1e-3), "extrapolated")


def test_evaluate_compares_at_equal_force_evaluations(tmp_path):
    checkpoint = run_training(tiny_config(tmp_path, save_name="ev"), progress=False).checkpoint
    cfg = _sim_config(tmp_path, model_path=str(tmp_path / "data" / "ev"), Nperiod=0.5,
                      output_json=str(tmp_path / "ev.json"), plot=str(tmp_path / "ev.png"))
    stream = io.StringIO()
    report = evaluate(cfg, stream=stream)
    assert report["model"] == checkpoint
    methods = [row["method"] for row in report["rows"]]
    assert methods[:5] == ["learned (symmetric)", "learned (plain)", "fixed-dt leapfrog", "eta criterion",
                           "eta criterion, symmetric"]
    assert report["runs"]["eta criterion"][0]["label"] == "eta criterion (plain, acceleration time)"
    try:
        import rebound  # noqa: F401
    except ImportError:
        assert len(methods) == 5
    else:  # IAS15 at its own cost sets the ceiling; REBOUND's leapfrog runs at the learned cost
        rows = {row["method"]: row for row in report["rows"][5:]}
        assert rows["REBOUND IAS15"]["energy_error_max"] < 1e-12
        assert abs(rows["REBOUND leapfrog (DKD)"]["evaluations"] - report["learned_evaluations"]) <= 2
    target = report["learned_evaluations"]
    for name in ("eta criterion", "eta criterion, symmetric"):
        costs = [run["evaluations"] for run in report["runs"][name]]
        assert min(costs) < target < max(costs)  # interpolated, not extrapolated
    assert all(math.isfinite(row["energy_error_max"]) and row["energy_error_max"] > 0 for row in report["rows"])
    assert "fixed-dt leapfrog" in stream.getvalue()
    assert json.loads((tmp_path / "ev.json").read_text())["learned_evaluations"] == target
    assert (tmp_path / "ev.png").stat().st_size > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "silu"])
def test_inference_forward_matches_the_module(dtype, activation):
    """The simulation's forward (compiled for a few CPU rows, plain calls otherwise) against forward()."""
    torch.manual_seed(0)
    model = FullyConnectedNN(13, [24, 16], activation=activation, dropout=0.0).to(dtype).eval()
    with torch.no_grad():
        model.net[-2].weight.normal_()
    for rows in (1, 5, 40):  # 40 rows take the plain-calls path
        x = torch.randn(rows, 13, dtype=dtype)
        with torch.inference_mode():
            fast, reference = model._inference(x), model(x)
        tolerance = 1e-13 if dtype is torch.float64 else 2e-6
        torch.testing.assert_close(fast, reference, rtol=tolerance, atol=0)
    compiled = model._compiled_layers()
    assert compiled is not None or "cpu" not in __import__("aitimestepper").backends()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dt_param", ["scale-aware", "absolute", "scale-aware, bounded"])
def test_compiled_step_head_matches_dt_from_output(dtype, dt_param):
    torch.manual_seed(1)
    factor_range = 2.0 if dt_param.endswith("bounded") else None
    model = FullyConnectedNN(13, [16], dropout=0.0, dt_param=dt_param.split(",")[0], dt_max=0.05,
                             dt_factor_range=factor_range).to(dtype).eval()
    with torch.no_grad():
        model.net[-2].weight.normal_()
    x, tau = torch.randn(4, 13, dtype=dtype), torch.rand(4, dtype=dtype) + 0.5
    with torch.inference_mode():
        fast = model.dt(x, tau)
        bound = model.bind_dt(4, dtype, "cpu")(x, tau).clone()
        reference = model.dt_from_output(model(x), tau)
    torch.testing.assert_close(fast, reference, rtol=1e-13 if dtype is torch.float64 else 2e-6, atol=0)
    assert torch.equal(bound, fast)
    assert bool((fast <= torch.tensor(0.05, dtype=dtype)).all())  # the cap, rounded to the dtype


def test_compiled_symmetric_rule_is_the_formula(monkeypatch):
    import aitimestepper.simulate as simulate

    g = torch.Generator().manual_seed(4)
    fs = [torch.rand(5, generator=g, dtype=DTYPE) + 0.1 for _ in range(30)]
    fs[7][2] = float("nan")  # a diverged system's f: NaN passes through both
    runs = []
    for compiled in (True, False):
        monkeypatch.setattr(simulate, "_COMPILED_RULE", compiled)
        rule = SymmetricSteps()
        runs.append(torch.stack([rule(f) for f in fs]))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0, equal_nan=True)


def test_duration_stops_a_part1_that_never_passes(tmp_path):
    """--max-retrain-steps 0 with a gate no step can pass used to spin forever inside Part 1."""
    import time

    cfg = tiny_config(tmp_path, max_retrain_steps=0, energy_threshold=1e-12, E_upper=1e-12, E_lower=1e-13,
                      eta_init=0.5, lr=1e-12, epochs=5, duration=2.0)
    started = time.perf_counter()
    result = run_training(cfg, progress=False)
    assert time.perf_counter() - started < 30
    assert result.stop_reason == "duration" and result.checkpoint is not None
    assert result.metrics[-1]["accepted"] == 0 and result.metrics[-1]["retrain_steps"] > 0


def test_a_step_that_no_longer_moves_the_state_is_not_accepted(tmp_path):
    """An unreachable threshold used to be 'met' once dt was too small to change the state (r = 0)."""
    cfg = tiny_config(tmp_path, energy_threshold=1e-30, E_upper=1e-30, E_lower=1e-31, eta_init=1e-20,
                      max_retrain_steps=0)
    with pytest.raises(TrainingStopped, match="no longer moves the state"):
        run_training(cfg, progress=False)


def test_evaluate_checks_its_outputs_before_any_work(tmp_path, capsys, monkeypatch):
    from aitimestepper.cli import main

    monkeypatch.chdir(tmp_path)
    checkpoint = run_training(tiny_config(tmp_path, save_name="ev"), progress=False).checkpoint
    (tmp_path / "taken").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["evaluate", "--model-path", checkpoint, "--Nperiod", "0.5", "--output-json", "taken"]) == 2
    assert "--output-json 'taken' is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
