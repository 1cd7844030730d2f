"""The main job on a GPU: train, simulate, both and evaluate with --device cuda, end to end.

- Every op of a CUDA run goes to the `cuda` backend: the kernel table is only ever asked for
  `cuda`, and no compiled CPU helper (`_core.cpu_*`: features, network, step rule, carried step)
  is called. No CPU fallback hides anywhere in the loop.
- Host syncs: one per Part 1 attempt (the accept decision), one per Part 2 iteration, one per
  block of CHECK_EVERY simulated steps (counted with torch.cuda.set_sync_debug_mode).
- The simulation's captured CUDA graphs (_GraphedSteps) give the step-by-step loop's results.

Every test here needs a GPU and skips without one (bench/gpu_check.sh runs them on the GPU
machine). AITS_E2E_DEVICE=cpu runs the same tests on the CPU instead, with the backend `cpu`
and the graph replaced by its uncaptured blocks, minus the CUDA-only checks (the sync counts,
the graph replays, the refused `_core.cpu_*`): that is how this file's own logic is checked on a
machine without a GPU (gpu_check.sh's dry mode does it).
"""
from __future__ import annotations

import io
import json
import os
import warnings
from contextlib import contextmanager

import pytest
import torch

from _product import tiny_config
from aitimestepper.ops import backends, custom
from aitimestepper.simulate import CHECK_EVERY, Simulator, run_simulation
from aitimestepper.training import run_training

DEVICE = os.environ.get("AITS_E2E_DEVICE", "cuda")
ON_CUDA = DEVICE == "cuda"
BACKEND = "cuda" if ON_CUDA else "cpu"
# The step loop's graph mode on CUDA; on the CPU the same blocks without capture.
BLOCKS = "auto" if ON_CUDA else "blocks"

pytestmark = pytest.mark.skipif(ON_CUDA and not backends.cuda_kernels_usable(),
                                reason="needs a GPU and a CUDA build (AITS_E2E_DEVICE=cpu runs it on the CPU)")


def e2e_config(tmp_path, **changes):
    """A tiny Kepler training run on DEVICE (the backend left to `auto`)."""
    return tiny_config(tmp_path, device=DEVICE, backend="auto", **changes)


@contextmanager
def only_the_device_backend(monkeypatch):
    """Record every backend the ops ask for; any compiled CPU helper called on the way fails."""
    asked: list[str] = []
    real = custom.kernels

    def spy(name):
        asked.append(name)
        return real(name)

    monkeypatch.setattr(custom, "kernels", spy)
    if ON_CUDA:
        core = backends._core
        for name in [n for n in dir(core) if n.startswith("cpu_")]:
            def refuse(*args, _name=name, **kwargs):
                raise AssertionError(f"_core.{_name} called during a CUDA run: a hidden CPU path")
            monkeypatch.setattr(core, name, refuse)
    yield asked  # the monkeypatch fixture restores everything at the test's end


@contextmanager
def counted_syncs():
    """Counts the host syncs (torch.cuda.set_sync_debug_mode) inside the block: `count[0]`
    (None on the CPU, where there is nothing to count)."""
    count = [None]
    if not ON_CUDA:
        yield count
        return
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield count
        finally:
            torch.cuda.set_sync_debug_mode("default")
    count[0] = sum("synchronizing CUDA operation" in str(w.message) for w in caught)


def test_cuda_train_then_simulate_on_the_device_backend_only(tmp_path, monkeypatch):
    with only_the_device_backend(monkeypatch) as asked:
        result = run_training(e2e_config(tmp_path, epochs=2), progress=False)
        stream = io.StringIO()
        records = run_simulation(e2e_config(tmp_path).replace(integrator_mode="ml", model_path=result.checkpoint,
                                                              Nperiod=0.3, num_orbits=3), stream=stream)
    assert asked and set(asked) == {BACKEND}
    assert len(records) == 3 and not any(r["diverged"] or r["stalled"] for r in records)
    assert all(abs(r["energy_residual"]) < 1e-2 and r["steps"] > CHECK_EVERY for r in records)
    assert [json.loads(line) for line in stream.getvalue().splitlines()] == records
    saved = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert saved["config"]["device"] == DEVICE


def test_cuda_cli_both_and_evaluate(tmp_path, monkeypatch):
    from aitimestepper.cli import main

    monkeypatch.chdir(tmp_path)
    common = ["--device", DEVICE, "--hidden-dims", "16", "16", "--dropout", "0", "--e-min", "0.5", "--e-max", "0.5",
              "--save-name", "gpu"]
    with only_the_device_backend(monkeypatch) as asked:
        assert main(["both", *common, "--epochs", "2", "--steps-per-epoch", "2", "--min-replay-size", "1",
                     "--replay-steps", "2", "--Nperiod", "0.5", "--output-json", "both.json"]) == 0
        assert main(["evaluate", "--device", DEVICE, "--model-path", "data/gpu", "--Nperiod", "0.25",
                     "--output-json", "evaluate.json"]) == 0
    assert set(asked) == {BACKEND}
    record = json.loads((tmp_path / "both.json").read_text().splitlines()[0])
    assert record["mode"] == "ml" and not record["diverged"]
    report = json.loads((tmp_path / "evaluate.json").read_text())
    methods = [row["method"] for row in report["rows"]]
    assert methods[0] == "learned (symmetric)" and "eta criterion" in methods


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", ["ml", "history", "adaptive"])
def test_cuda_graph_steps_match_the_step_by_step_loop(tmp_path, mode, dtype):
    """The captured blocks against the step-by-step loop on the same device: the same kernels
    in the same order, so the states agree to round-off (in practice bitwise); only dt_mean's
    sum is reduced in other chunks. Three Kepler systems with their own end times (the first
    ends early: masked on the device), and a step count that leaves a remainder."""
    from aitimestepper.checkpoint import load_checkpoint
    from aitimestepper.initial_conditions import make_systems
    from aitimestepper.simulate import simulation_config

    history = 2 if mode == "history" else 0
    checkpoint = None
    if mode != "adaptive":
        trained = run_training(e2e_config(tmp_path, epochs=1, dtype=dtype, history_len=history,
                                          hidden_dims=[32, 32]), progress=False)
        checkpoint = load_checkpoint(trained.checkpoint, map_location=DEVICE)
    cfg = e2e_config(tmp_path, dtype=dtype).replace(integrator_mode=mode, num_orbits=3, e_min=0.3, e_max=0.8,
                                                    step_cap=9 * CHECK_EVERY + 3, eta=0.03)
    cfg = simulation_config(cfg, checkpoint).replace(e_min=0.3, e_max=0.8, num_orbits=3)
    systems = make_systems(cfg, torch.Generator().manual_seed(3))
    t_end = torch.tensor([0.1, 0.6, 50.0], dtype=systems.pos.dtype, device=DEVICE)
    outs, blocks, replays = [], [], []
    for step_blocks in ("per-step", BLOCKS):
        simulator = Simulator(cfg, checkpoint)
        simulator.step_blocks = step_blocks
        outs.append(simulator.run(systems, t_end, None))
        blocks.append(simulator.blocks_run)
        replays.append(simulator.graph_replays)
    assert blocks[0] == 0 and blocks[1] >= 6
    assert replays == ([0, blocks[1] - 1] if ON_CUDA else [0, 0])  # the first block warms up, eagerly
    eager, graphed = outs
    rtol = 1e-12 if dtype == "float64" else 1e-5
    for key in ("pos", "vel", "t", "energy_error_max"):
        torch.testing.assert_close(graphed[key], eager[key], rtol=rtol, atol=rtol * 1e-3, msg=key)
    for key in ("diverged", "stalled"):
        assert torch.equal(graphed[key], eager[key]), key
    # Expected bitwise equal; in float32 a last-ulp difference could move one end-time cut a step.
    slack = 0 if dtype == "float64" else 1
    for key in ("steps", "evaluations"):
        assert (graphed[key] - eager[key]).abs().max().item() <= slack * (1 if key == "steps" else 2), key
    for key in ("dt_mean", "dt_min", "dt_max"):
        torch.testing.assert_close(graphed["dt"][key], eager["dt"][key], rtol=rtol, atol=0, equal_nan=True, msg=key)
    assert eager["t"][0].item() == pytest.approx(0.1) and eager["step_cap_reached"] == graphed["step_cap_reached"]


def test_cuda_simulation_syncs_once_per_block(tmp_path):
    """The host waits for the GPU once per block of CHECK_EVERY steps, however long the run:
    twice the steps, exactly the extra blocks' syncs more."""
    from aitimestepper.initial_conditions import make_systems

    cfg = e2e_config(tmp_path).replace(integrator_mode="adaptive", num_orbits=64, step_rule="symmetric")
    systems = make_systems(cfg, torch.Generator().manual_seed(0))
    counts = []
    for blocks in (8, 16):
        simulator = Simulator(cfg.replace(steps=blocks * CHECK_EVERY, step_cap=10**6))
        simulator.step_blocks = BLOCKS
        simulator.run(systems, None, None)  # the first run sets up cuBLAS, caches and the allocator
        with counted_syncs() as count:
            simulator.run(systems, None, None)
        counts.append((count[0], simulator.blocks_run))
    (syncs_short, blocks_short), (syncs_long, blocks_long) = counts
    assert blocks_long - blocks_short == 8
    if ON_CUDA:
        assert syncs_long - syncs_short == 8, counts


def test_cuda_training_syncs_once_per_attempt_and_iteration(tmp_path):
    from aitimestepper.training.loop import setup
    from aitimestepper.training.part1 import collect
    from aitimestepper.training.part2 import replay

    # Every step far more accurate than the band asks (eta_init 1e-3, r << E_lower) and a frozen
    # network: every attempt retrains (an Adam step) and Part 2 never converges (5 iterations).
    run = setup(e2e_config(tmp_path, num_orbits=4, steps_per_epoch=4, replay_steps=5, min_replay_size=1,
                           E_lower=1e-5, E_upper=1e-4, eta_init=1e-3, lr=1e-12))
    collect(run.trainer, 0, run.steps_done, run.retries)  # warm-up: cuBLAS, the optimizer state, caches
    with counted_syncs() as part1_syncs:
        part1 = collect(run.trainer, 1, run.steps_done, run.retries)
    with counted_syncs() as part2_syncs:
        part2 = replay(run.trainer)
    assert part1.attempts == part1.retrain_steps == 4 and part2.iterations == 5
    if ON_CUDA:
        assert part1_syncs[0] == part1.attempts and part2_syncs[0] == part2.iterations


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_compiled_policy_inside_the_graphs(tmp_path, dtype):
    """--compile: features, tau, network and dt head as one torch.compile'd function, captured
    in the CUDA graphs with everything else; the uncompiled step-by-step loop's results to
    round-off (inductor reorders the float operations)."""
    from aitimestepper.checkpoint import load_checkpoint
    from aitimestepper.initial_conditions import make_systems
    from aitimestepper.simulate import simulation_config

    trained = run_training(e2e_config(tmp_path, epochs=1, dtype=dtype, hidden_dims=[32, 32]), progress=False)
    checkpoint = load_checkpoint(trained.checkpoint, map_location=DEVICE)
    cfg = simulation_config(e2e_config(tmp_path, dtype=dtype).replace(integrator_mode="ml", steps=8 * CHECK_EVERY),
                            checkpoint).replace(num_orbits=4, e_min=0.3, e_max=0.8)
    systems = make_systems(cfg, torch.Generator().manual_seed(5))
    plain = Simulator(cfg, checkpoint)
    plain.step_blocks = "per-step"
    expected = plain.run(systems, None, None)
    compiled = Simulator(cfg.replace(compile=True), checkpoint)
    compiled.step_blocks = BLOCKS
    out = compiled.run(systems, None, None)
    assert compiled.blocks_run == 7 and compiled.graph_replays == (6 if ON_CUDA else 0)
    rtol = 1e-10 if dtype == "float64" else 1e-4
    for key in ("pos", "vel", "t", "energy_error_max"):
        torch.testing.assert_close(out[key], expected[key], rtol=rtol, atol=rtol * 1e-2, msg=key)
    assert torch.equal(out["steps"], expected["steps"]) and not out["diverged"].any()
