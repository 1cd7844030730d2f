"""Simulation: the four modes, batching, step caps, strict JSON and checkpoint restoration."""
import io
import json
import math

import pytest
import torch

from _product import BACKEND, tiny_config
from aitimestepper import ops
from aitimestepper.config import build_config
from aitimestepper.errors import CheckpointError, ConfigError
from aitimestepper.initial_conditions import make_systems
from aitimestepper.physics.timescale import eta_criterion
from aitimestepper.simulate import results_json, run_simulation
from aitimestepper.training import run_training


def sim_config(tmp_path, **changes):
    return build_config("simulate", None, {"backend": BACKEND, "output_dir": str(tmp_path / "data"),
                                           "e_min": 0.3, "e_max": 0.3, **changes})


def run_json(cfg):
    stream = io.StringIO()
    records = run_simulation(cfg, stream=stream)
    parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert parsed == records
    return records


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    plain = run_training(tiny_config(root, epochs=1, save_name="plain"), progress=False).checkpoint
    history = run_training(tiny_config(root, epochs=1, save_name="hist", history_len=2, normalize_inputs=True),
                           progress=False).checkpoint
    return {"plain": plain, "history": history}


def test_analytic_equals_ops_step_and_counts_evaluations(tmp_path):
    cfg = sim_config(tmp_path, integrator_mode="analytic", dt=1e-3, steps=50, num_orbits=2)
    records = run_json(cfg)
    systems = make_systems(cfg, torch.Generator().manual_seed(cfg.seed))
    pos, vel = ops.step(systems.pos, systems.vel, systems.mass, 1e-3, steps=50, backend=BACKEND)
    energy = ops.total_energy(pos, vel, systems.mass, backend=BACKEND)
    assert [r["energy_final"] for r in records] == pytest.approx(energy.tolist(), rel=1e-12)
    assert records[0]["steps"] == 50 and records[0]["t_final"] == pytest.approx(0.05)
    assert records[0]["force_evaluations"] == 51 and not records[0]["diverged"]
    assert records[0]["dt_min"] == records[0]["dt_max"] == 1e-3


def test_duration_lands_on_t_end_with_one_evaluation_per_step(tmp_path):
    records = run_json(sim_config(tmp_path, integrator_mode="adaptive", duration=0.3, eta=0.05))
    assert records[0]["t_final"] == pytest.approx(0.3, rel=1e-12)
    assert records[0]["dt_max"] <= 0.3 and records[0]["energy_residual"] == pytest.approx(0, abs=1e-3)


def test_nperiod_and_step_cap(tmp_path):
    records = run_json(sim_config(tmp_path, integrator_mode="analytic", Nperiod=1.0, dt=0.01))
    period = 2 * math.pi * math.sqrt(1 / 2)  # a = 1, two unit masses
    assert records[0]["t_final"] == pytest.approx(period, rel=1e-12)
    capped = run_json(sim_config(tmp_path, integrator_mode="analytic", Nperiod=1.0, dt=0.01, step_cap=20))
    assert capped[0]["step_cap_reached"] and capped[0]["steps"] == 20


def test_adaptive_dt_formula():
    pos = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]]], dtype=torch.float64)
    acc = torch.tensor([[[4.0, 0.0], [1.0, 0.0], [0.25, 0.0]]], dtype=torch.float64)
    # d = (1, 1, 2), |a| = (4, 1, 1/4): sqrt(d/|a|) = (0.5, 1, 2.83); eta * min = 0.05.
    assert eta_criterion(pos, acc, 0.1).item() == pytest.approx(0.05)


def test_ml_mode_uses_the_checkpoint(checkpoints, tmp_path):
    # hidden_dims here differ from the checkpoint's: the saved architecture must win.
    cfg = sim_config(tmp_path, integrator_mode="ml", model_path=checkpoints["plain"], steps=20, num_orbits=3)
    records = run_json(cfg)
    assert len(records) == 3 and all(r["steps"] == 20 and r["force_evaluations"] == 21 for r in records)
    assert all(r["dt_min"] > 0 for r in records)


def test_history_mode_and_mode_mismatch(checkpoints, tmp_path):
    records = run_json(sim_config(tmp_path, integrator_mode="history", model_path=checkpoints["history"], steps=10))
    assert records[0]["steps"] == 10 and not records[0]["diverged"]
    with pytest.raises(ConfigError, match="history"):
        run_simulation(sim_config(tmp_path, integrator_mode="ml", model_path=checkpoints["history"]), stream=None)
    with pytest.raises(ConfigError, match="history_len"):
        run_simulation(sim_config(tmp_path, integrator_mode="history", model_path=checkpoints["plain"]), stream=None)


def test_checkpoint_errors(checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        run_simulation(sim_config(tmp_path, model_path=str(tmp_path / "nope.pt")), stream=None)
    with pytest.raises(CheckpointError, match="N = 2"):
        run_simulation(sim_config(tmp_path, model_path=checkpoints["plain"], num_particles=3), stream=None)
    with pytest.raises(ConfigError, match="model-path"):
        run_simulation(sim_config(tmp_path, integrator_mode="ml"), stream=None)


def test_diverged_run_gives_null_and_flag(tmp_path):
    cfg = sim_config(tmp_path, integrator_mode="analytic", steps=3)
    systems = make_systems(cfg, torch.Generator().manual_seed(0))
    nan = torch.full_like(systems.pos, float("nan"))
    out = {"pos": nan, "vel": nan, "t": torch.ones(1, dtype=torch.float64), "steps": torch.ones(1, dtype=torch.long),
           "dt": {k: torch.ones(1, dtype=torch.float64) for k in ("dt_mean", "dt_min", "dt_max")},
           "evaluations": torch.full((1,), 2), "wall_time_s": 0.0, "step_cap_reached": False,
           "energy_error_max": torch.full((1,), math.inf, dtype=torch.float64),
           "diverged": torch.ones(1, dtype=torch.bool), "stalled": torch.zeros(1, dtype=torch.bool)}
    record = results_json(cfg, systems, out)[0]
    text = json.dumps(record, allow_nan=False)
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert parsed["diverged"] is True and parsed["energy_final"] is None and parsed["momentum_final"] == [None, None]
    assert "NaN" not in text


def test_output_json_file(tmp_path):
    path = tmp_path / "out" / "sim.jsonl"
    records = run_json(sim_config(tmp_path, integrator_mode="analytic", steps=5, output_json=str(path)))
    assert [json.loads(line) for line in path.read_text().splitlines()] == records


def test_ml_loop_matches_the_pytorch_features_and_substeps(checkpoints, tmp_path, monkeypatch):
    """The compiled hot path (features kernel, carried step) against the PyTorch formulas it replaces."""
    cfg = sim_config(tmp_path, integrator_mode="ml", model_path=checkpoints["plain"], steps=40, num_orbits=3,
                     num_particles=2)
    fast = run_json(cfg)
    from aitimestepper import features
    monkeypatch.setattr(features, "_compiled_applies", lambda *tensors: False)
    monkeypatch.setattr(ops, "bind_carried_step", _pytorch_carried_step)
    slow = run_json(cfg)
    for a, b in zip(fast, slow):
        for key in ("energy_final", "t_final", "dt_mean", "dt_min", "dt_max"):
            assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-300), key
        assert a["steps"] == b["steps"] and a["force_evaluations"] == b["force_evaluations"] == 41


def _pytorch_carried_step(pos, vel, acc, mass, *, integrator, with_energy=False, **physics):
    from aitimestepper.physics.integrators import kick_drift_kick, substep_weights

    def advance(dt):
        x, v, a = pos, vel, acc
        for c in substep_weights(integrator):
            h = (dt if c == 1.0 else c * dt).view(-1, 1, 1)
            x, v, a = kick_drift_kick(x, v, a, h, lambda y: ops.acceleration(y, mass, **physics))
        pos.copy_(x), vel.copy_(v), acc.copy_(a)
        advance.energy = ops.total_energy(pos, vel, mass, **physics) if with_energy else None

    return advance


def test_recorded_frames_are_copies_of_the_moving_state(tmp_path):
    from aitimestepper.simulate import Recording, Simulator

    cfg = sim_config(tmp_path, integrator_mode="adaptive", steps=30, eta=0.05)
    systems = make_systems(cfg, torch.Generator().manual_seed(cfg.seed))
    recording = Recording(max_frames=100)
    out = Simulator(cfg).run(systems, None, recording)
    assert len(recording.pos) == 30
    assert not torch.equal(recording.pos[0], recording.pos[-1])
    assert torch.equal(recording.pos[-1], out["pos"][0])


def test_steps_past_the_end_time_record_no_frames(tmp_path):
    """The end check runs every CHECK_EVERY steps; the steps in between have dt = 0 and must not
    add frames (they would repeat the last state and draw dt = 0 at the end of the plot)."""
    from aitimestepper.simulate import CHECK_EVERY, Recording, Simulator

    cfg = sim_config(tmp_path, integrator_mode="analytic", dt=0.01, steps=1000)
    systems = make_systems(cfg, torch.Generator().manual_seed(cfg.seed))
    recording = Recording(max_frames=100)
    t_end = torch.full((systems.pos.shape[0],), 0.055, dtype=systems.pos.dtype)
    out = Simulator(cfg).run(systems, t_end, recording)
    assert CHECK_EVERY > 6, "the end must fall between two checks for this test to mean anything"
    assert recording.dt == pytest.approx([0.01] * 5 + [0.005])
    assert recording.t[-1] == pytest.approx(0.055) and out["t"][0].item() == pytest.approx(0.055)


# ---------------------------------------------------------------------------------------------
# Blocks of CHECK_EVERY steps (what a CUDA graph replays) against the step-by-step loop


def _run_both_ways(cfg, checkpoint=None, t_end=None, systems=None):
    """The same run step by step and in blocks without capture: (per-step out, blocks out, blocks run)."""
    from aitimestepper.checkpoint import load_checkpoint
    from aitimestepper.simulate import Simulator, simulation_config

    data = load_checkpoint(checkpoint) if checkpoint else None
    cfg = simulation_config(cfg, data)
    systems = systems if systems is not None else make_systems(cfg, torch.Generator().manual_seed(cfg.seed))
    outs = []
    for mode in ("per-step", "blocks"):
        simulator = Simulator(cfg, data)
        simulator.step_blocks = mode
        outs.append(simulator.run(systems, t_end, None))
    return outs[0], outs[1], simulator.blocks_run


def _assert_same_run(a, b):
    for key in ("pos", "vel", "t", "steps", "energy_error_max", "diverged", "stalled", "evaluations"):
        assert torch.equal(a[key], b[key]), key
    assert a["step_cap_reached"] == b["step_cap_reached"]
    for key in ("dt_min", "dt_max"):
        torch.testing.assert_close(a["dt"][key], b["dt"][key], rtol=0, atol=0, equal_nan=True)
    # The sum behind dt_mean is reduced per block of CHECK_EVERY rows instead of per 1024.
    torch.testing.assert_close(a["dt"]["dt_mean"], b["dt"]["dt_mean"], rtol=1e-14, atol=0, equal_nan=True)


@pytest.mark.parametrize("mode, rule", [("adaptive", "plain"), ("adaptive", "symmetric"), ("analytic", "plain")])
def test_step_blocks_match_the_step_by_step_loop(tmp_path, mode, rule):
    from aitimestepper.simulate import CHECK_EVERY

    # Three systems with their own end times (one ends early: masked, not synchronised), a step
    # count that is not a multiple of the block (the rest runs step by step).
    cfg = sim_config(tmp_path, integrator_mode=mode, step_rule=rule, eta=0.05, dt=2e-3, steps=7 * CHECK_EVERY + 5,
                     num_orbits=3, e_min=0.2, e_max=0.7)
    systems = make_systems(cfg, torch.Generator().manual_seed(cfg.seed))
    t_end = torch.tensor([0.05, 0.4, 10.0], dtype=systems.pos.dtype)
    a, b, blocks = _run_both_ways(cfg.replace(step_cap=7 * CHECK_EVERY + 5), t_end=t_end, systems=systems)
    assert blocks > 0
    _assert_same_run(a, b)
    assert a["t"][0].item() == pytest.approx(0.05) and a["step_cap_reached"]
    # And with a fixed number of steps (no end time).
    a, b, blocks = _run_both_ways(cfg, systems=systems)
    assert blocks == 6 and int(a["steps"][0]) == 7 * CHECK_EVERY + 5
    _assert_same_run(a, b)


@pytest.mark.parametrize("kind", ["plain", "history"])
def test_step_blocks_match_with_the_network(tmp_path, checkpoints, kind):
    cfg = sim_config(tmp_path, integrator_mode="ml" if kind == "plain" else "history", model_path=checkpoints[kind],
                     steps=100, num_orbits=2)
    a, b, blocks = _run_both_ways(cfg, checkpoints[kind])
    assert blocks > 0
    _assert_same_run(a, b)


def test_step_blocks_stop_diverged_systems_on_the_device(tmp_path):
    """Past the energy-error bound a system is stopped (dt = 0) at the end of the block in which
    it passed it, as at the step-by-step loop's check; once every system has stopped, the run
    ends at that block. (Kepler orbits starting at pericentre, e = 0.1 and 0.9 drawn per system:
    the eccentric one passes 6e-4 within 16 steps, the other between steps 16 and 48.)"""
    from aitimestepper.simulate import CHECK_EVERY

    cfg = sim_config(tmp_path, integrator_mode="analytic", dt=0.005, steps=200, num_orbits=2, e_min=0.1, e_max=0.9,
                     energy_error_bound=1e-3)
    a, b, blocks = _run_both_ways(cfg)
    _assert_same_run(a, b)
    assert a["diverged"].tolist() == [True, False] and blocks > 0
    assert int(a["steps"][0]) == CHECK_EVERY and int(a["steps"][1]) == 200
    a, b, blocks = _run_both_ways(cfg.replace(energy_error_bound=6e-4))
    _assert_same_run(a, b)
    assert a["diverged"].tolist() == [True, True] and 0 < blocks < 4
    assert int(a["steps"][1]) <= 4 * CHECK_EVERY


def test_a_step_count_on_a_check_is_not_stalled(tmp_path):
    """The last check and the final look at the flags fell on the same step when --steps was a
    multiple of CHECK_EVERY: the second saw no time pass and called every system stalled."""
    from aitimestepper.simulate import CHECK_EVERY

    for steps in (CHECK_EVERY, 2 * CHECK_EVERY, 2 * CHECK_EVERY + 1):
        records = run_json(sim_config(tmp_path, integrator_mode="analytic", dt=1e-3, steps=steps))
        assert not records[0]["stalled"] and records[0]["steps"] == steps


@pytest.mark.parametrize("kind", ["plain", "history"])
def test_compile_flag_runs_the_policy_through_torch_compile(tmp_path, checkpoints, kind):
    """--compile (a flag simulate used to parse and ignore): features, tau, network and dt head
    as one torch.compile'd function; the same run as without it, to round-off, step by step and
    in blocks."""
    from aitimestepper.checkpoint import load_checkpoint
    from aitimestepper.simulate import Simulator, simulation_config

    data = load_checkpoint(checkpoints[kind])
    cfg = simulation_config(sim_config(tmp_path, integrator_mode="ml" if kind == "plain" else "history",
                                       model_path=checkpoints[kind], steps=40, num_orbits=2), data)
    systems = make_systems(cfg, torch.Generator().manual_seed(cfg.seed))
    plain = Simulator(cfg, data).run(systems, None, None)
    compiled = Simulator(cfg.replace(compile=True), data)
    assert compiled.compiled_policy() is not None
    for mode in ("per-step", "blocks"):
        compiled.step_blocks = mode
        out = compiled.run(systems, None, None)
        torch.testing.assert_close(out["pos"], plain["pos"], rtol=1e-12, atol=1e-14)
        assert torch.equal(out["steps"], plain["steps"])
