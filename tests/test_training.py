"""Two-phase training: band loss, the gate, warmup, Part 2 batching, multi-orbit, caps, duration."""
import math

import numpy as np
import pytest
import torch

from _product import TINY, tiny_config
from aitimestepper.errors import TrainingStopped
from aitimestepper.training import run_training
from aitimestepper.training.loop import setup
from aitimestepper import ops
from aitimestepper.training.losses import band_loss, finite_gradient, relative_energy_error
from aitimestepper.training.part1 import collect
from aitimestepper.training.part2 import evaluate, replay
from aitimestepper.training.replay import Samples


def test_band_loss_by_hand():
    r = torch.tensor([1e-5, 1e-7, 1e-3, 1.0], dtype=torch.float64)
    loss = band_loss(r, 1e-6, 1e-4)
    expected = [0.0, math.log(10) ** 2, math.log(10) ** 2, math.log(1e4) ** 2]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))


def test_non_finite_energy_counts_as_r_equal_one():
    E = torch.tensor([float("nan"), float("inf"), -0.5], dtype=torch.float64)
    r = relative_energy_error(E, torch.tensor(-1.0, dtype=torch.float64))
    assert r.tolist() == [1.0, 1.0, 0.5]


def _constant_dt(trainer, dt):
    """Make the network predict exactly dt (zero weights, output bias softplus^-1(dt)); for a
    network with dt_param 'absolute'."""
    assert not trainer.model.scale_aware
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.zero_()
        last = trainer.model.net[-2]
        last.bias[0] = math.log(math.expm1(dt))


def _two_circular_orbits(path):
    """Rows [m, x, y, vx, vy]: a wide circular binary (r = 4) and a tight one (r = 0.05)."""
    rows = []
    for r in (4.0, 0.05):
        v = math.sqrt(1.0 / r) / 2  # each body of a unit-total-mass circular binary
        rows.append([[0.5, -r / 2, 0, 0, -v], [0.5, r / 2, 0, 0, v]])
    np.save(path, np.array(rows))
    return str(path)


def test_a_diverged_system_sends_no_nan_into_the_gradient():
    # Two Kepler-like systems; the second takes an absurd dt, so its positions overflow and its
    # energy is NaN: r counts as 1, and the first system's gradient must survive untouched.
    pos = torch.tensor([[[-0.5, 0.0], [0.5, 0.0]]] * 2, dtype=torch.float64)
    vel = torch.tensor([[[0.0, -0.7], [0.0, 0.7]]] * 2, dtype=torch.float64)
    mass = torch.ones(2, 2, dtype=torch.float64)
    energy0 = ops.total_energy(pos, vel, mass)

    def dt_gradient(guard):
        dt = torch.tensor([0.05, 1e300], dtype=torch.float64, requires_grad=True)
        used = finite_gradient(dt * 1.0) if guard else dt * 1.0  # a non-leaf, like the network's output
        with ops.unchecked():
            pos1, vel1 = ops.step(pos, vel, mass, used, steps=3)
            r = relative_energy_error(ops.total_energy(pos1, vel1, mass), energy0)
        assert r[1].item() == 1.0
        band_loss(r, 1e-6, 1e-4).mean().backward()
        return dt.grad

    assert not torch.isfinite(dt_gradient(guard=False)).all()  # the failure the guard exists for
    guarded = dt_gradient(guard=True)
    assert torch.isfinite(guarded).all() and guarded[1] == 0 and guarded[0] != 0


def test_gate_accepts_small_and_rejects_large_steps_per_orbit(tmp_path):
    # The same dt = 5e-3 passes for the wide orbit and fails for the tight one; with lr tiny and
    # the cap at 1 retrain, the tight orbit's dt is halved until it passes.
    cfg = tiny_config(tmp_path, ic_path=_two_circular_orbits(tmp_path / "ics.npy"), mass=[0.5], steps_per_epoch=1,
                      dt_param="absolute",
                      lr=1e-12, max_retrain_steps=1, on_retrain_cap="halve")
    run = setup(cfg)
    trainer = run.trainer
    _constant_dt(trainer, 5e-3)
    with torch.no_grad():
        trainer.refresh_inputs()
        gate = trainer.attempt(trainer.orbits.inputs, trainer.orbits.tau, trainer.orbits.pos, trainer.orbits.vel,
                               trainer.orbits.mass, trainer.orbits.energy, train=False)
    assert (gate.r < cfg.energy_threshold).tolist() == [True, False]
    result = collect(trainer, 0, run.steps_done, run.retries)
    dts = {rec["orbit"]: rec["dt"] for rec in result.step_records}
    assert dts[0] == pytest.approx(5e-3, rel=1e-6)  # + dt_min and a 1e-12-lr step
    assert dts[1] < 5e-3 and result.halvings > 0 and result.retrain_steps == 1
    assert run.steps_done == [1, 1]
    # E = -G m1 m2 / (2 r) of a circular binary, conserved by the accepted steps.
    torch.testing.assert_close(trainer.orbits.energy, gate.energy.new_tensor([-1 / 32, -2.5]), rtol=1e-3, atol=0)


def test_retrain_cap_stops_cleanly_with_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, max_retrain_steps=2, lr=1e-12, epochs=3, dt_param="absolute")
    run_dir = cfg.run_dir
    import aitimestepper.training.loop as loop

    original = loop.setup

    def huge_steps(c):
        run = original(c)
        _constant_dt(run.trainer, 5.0)  # far too large: always rejected
        return run

    loop.setup = huge_steps
    try:
        with pytest.raises(TrainingStopped, match=r"r = .*dt = ") as stop:
            run_training(cfg, progress=False)
    finally:
        loop.setup = original
    assert stop.value.checkpoint_path and (run_dir / "model" / "model_epoch_0000.pt").is_file()
    assert "retrain steps" in str(stop.value)


def test_warmup_steps_are_not_kept(tmp_path):
    cfg = tiny_config(tmp_path, history_len=3, steps_per_epoch=5, epochs=1, replay_steps=0)
    run = setup(cfg)
    collect(run.trainer, 0, run.steps_done, run.retries)
    assert run.steps_done == [5]
    assert len(run.trainer.replay) == 2  # the first 3 steps had padding in their window
    assert torch.isfinite(run.trainer.replay.take(torch.arange(2)).inputs).all()


def test_part2_batched_equals_per_sample(tmp_path):
    cfg = tiny_config(tmp_path, history_len=2, feature_type="delta_mag", steps_per_epoch=8, num_orbits=2)
    run = setup(cfg)
    trainer = run.trainer
    collect(trainer, 0, run.steps_done, run.retries)
    n = len(trainer.replay)
    assert n == 12
    samples = trainer.replay.take(torch.arange(n))
    with torch.no_grad():
        batched = evaluate(trainer, samples)
        for i in range(n):
            one = Samples(*(t[i:i + 1] for t in (samples.inputs, samples.tau, samples.pos, samples.vel,
                                                  samples.mass, samples.energy, samples.dt)))
            single = evaluate(trainer, one)
            torch.testing.assert_close(single.dt, batched.dt[i:i + 1], rtol=1e-12, atol=0)
            torch.testing.assert_close(single.r, batched.r[i:i + 1], rtol=1e-9, atol=1e-18)


def test_part2_skips_below_min_replay_size_and_converges(tmp_path):
    cfg = tiny_config(tmp_path, min_replay_size=100)
    run = setup(cfg)
    collect(run.trainer, 0, run.steps_done, run.retries)
    assert replay(run.trainer).skipped
    run.trainer.cfg = cfg.replace(min_replay_size=1)
    result = replay(run.trainer)
    assert not result.skipped and result.iterations >= 1 and result.pass_rate is not None


def test_multi_orbit_three_bodies(tmp_path):
    cfg = tiny_config(tmp_path, num_particles=3, num_orbits=3, pos_scale=1.0, vel_scale=0.3, softening=0.05,
                      history_len=1, on_retrain_cap="halve", max_retrain_steps=5, epochs=2, steps_per_epoch=2)
    result = run_training(cfg, progress=False)
    assert result.epochs_completed == 2
    data = torch.load(result.checkpoint, weights_only=True)
    assert data["training_state"]["steps_done"] == [4, 4, 4]
    assert data["training_state"]["pos"].shape == (3, 3, 2)
    assert len(data["training_state"]["replay"]["inputs"]) == 9  # 4 steps minus 1 warmup, per orbit


def test_duration_stops_at_an_epoch_boundary(tmp_path):
    cfg = tiny_config(tmp_path, epochs=50, duration=1e-9, checkpoint_every=100)
    result = run_training(cfg, progress=False)
    assert result.epochs_completed == 1 and result.stop_reason == "duration"
    assert result.checkpoint.endswith("model_epoch_0000.pt")


def test_tidal_field_in_training(tmp_path):
    cfg = tiny_config(tmp_path, external_field_mass=10.0, external_field_position=[10.0, 0.0], epochs=1)
    result = run_training(cfg, progress=False)
    assert result.epochs_completed == 1


def test_compile_flag_trains_through_torch_compile(tmp_path, monkeypatch):
    # --compile really runs the network through torch.compile: the trainer's forward is the
    # compiled wrapper of the saved module, dynamo compiles at least one graph, and an epoch
    # completes through it. One Part 1 shape and no Part 2 keep it to one compilation
    # (~5-15 s on 2 CPU cores; inductor needs a C++ compiler).
    import shutil

    from aitimestepper.cli import main
    from aitimestepper.training.loop import setup as setup_run

    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("torch.compile's CPU backend needs a C++ compiler")
    from torch._dynamo.eval_frame import OptimizedModule
    from torch._dynamo.utils import counters

    cfg = tiny_config(tmp_path, compile=True)
    trainer = setup_run(cfg).trainer
    assert isinstance(trainer.forward, OptimizedModule) and trainer.forward._orig_mod is trainer.model

    monkeypatch.chdir(tmp_path)
    graphs_before = counters["stats"]["unique_graphs"]
    try:
        code = main(["train", "--compile", "--hidden-dims", "8", "8", "--dropout", "0", "--epochs", "1",
                     "--steps-per-epoch", "1", "--min-replay-size", "100", "--e-min", "0.3", "--e-max", "0.3",
                     "--lr", "3e-2", "--max-retrain-steps", "5", "--on-retrain-cap", "halve",
                     f"--backend={TINY['backend']}", "--save-name", "compiled"])
        assert code == 0
        assert counters["stats"]["unique_graphs"] > graphs_before
    finally:
        torch._dynamo.reset()
    data = torch.load(tmp_path / "data" / "compiled" / "model" / "model_epoch_0000.pt", weights_only=True)
    assert data["config"]["compile"] is True
    assert not any(key.startswith("_orig_mod") for key in data["model_state_dict"])
