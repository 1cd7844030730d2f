#!/usr/bin/env python3
"""Training speed: one retrain iteration (the gate's attempt + one optimizer step, exactly as
Part 1 runs it on a failing state) and one Part 2 iteration, each timed in alternating rounds with
its baseline (the network's own forward + backward + Adam, or the single-sample retrain
iteration), on each backend (`reference` beside the compiled one). Rows go to
bench/results/local/training.jsonl with provenance.

Targets (issue 4, 2-core machine): default network, single orbit: iteration <= 1.25x network
only; small network [64, 64], N = 3, n_steps 10: <= 1 ms beyond the network only, and 64
orbits batched <= 3 ms per iteration; Part 2 over 512 samples <= 10x a single-sample iteration.

    python bench/bench_training.py [--backends reference cpu] [--budget 4] [--threads 1]
"""
from __future__ import annotations

import argparse

import torch

from _product_bench import (DEFAULT_NET, RESULTS, SMALL_NET, add_common_arguments, backends_to_run, config, h,
                            measure_paired, network_only, set_threads)
from aitimestepper import ops
from aitimestepper.physics.timescale import dynamical_time
from aitimestepper.training import part1, part2
from aitimestepper.training.loop import setup
from aitimestepper.training.replay import Samples

PART2_SAMPLES = 512
# Every Part 2 sample fails this threshold: the timed iteration always takes its optimizer step.
ALWAYS_FAIL = 1e-300


def retrain_iteration(trainer) -> None:
    """What Part 1 does when every orbit fails the gate: judge (one host sync), then one Adam step."""
    gate, *_ = part1.judge(trainer)
    part1.retrain(trainer, gate, list(range(trainer.orbits.count)))


def part2_iteration(trainer, size: int) -> None:
    """One Part 2 iteration as replay() runs it: draw a minibatch, judge it in one batched
    evaluation and (every sample failing) take the optimizer step."""
    index = torch.randperm(len(trainer.replay), generator=trainer.sampler)[:size]
    part2.iteration(trainer, trainer.replay.take(index), size)


def fill_replay(trainer, size: int) -> None:
    """size samples: the orbits' states perturbed, with their own (padding-free) inputs."""
    o = trainer.orbits
    generator = torch.Generator().manual_seed(0)
    reps = -(-size // o.count)
    pos = o.pos.repeat(reps, 1, 1)[:size]
    pos = pos + 0.01 * torch.randn(pos.shape, generator=generator, dtype=pos.dtype)
    vel, mass = o.vel.repeat(reps, 1, 1)[:size], o.mass.repeat(reps, 1)[:size]
    acc = ops.acceleration(pos, mass, **trainer.physics)
    history = trainer.featurizer.new_history(size, *pos.shape[1:], pos.dtype, pos.device)
    inputs, _ = trainer.featurizer.inputs(history, pos, vel, mass, acc)
    energy = ops.total_energy(pos, vel, mass, **trainer.physics)
    tau = dynamical_time(pos, acc)
    trainer.replay.append(Samples(inputs, tau, pos, vel, mass, energy, torch.zeros_like(energy)), [0] * size)


def trainer_for(backend: str, hidden: list[int], N: int, B: int, **extra):
    trainer = setup(config(backend, hidden, N, B, **extra)).trainer
    trainer.refresh_inputs()
    return trainer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--out", default=str(RESULTS / "training.jsonl"))
    args = parser.parse_args(argv)
    set_threads(args.threads)
    log = h.ResultLog(args.out, suite="training")
    lines = []

    def record(case, backend, params, paired, target, achieved, baseline_name):
        metrics = {**paired.metrics(), "baseline": baseline_name, "iterations_per_s": 1 / paired.target.median_s}
        log.append(case=case, backend=backend, params={**params, "threads": torch.get_num_threads()},
                   timing=paired.target, metrics=metrics, primary="paired_ratio")
        evaluated = target.evaluate(achieved)
        log.append_target(evaluated, backend=backend)
        lines.append(f"{backend:10s} {case:26s} {paired.target.median_s * 1e3:9.3f} ms  {baseline_name} "
                     f"{paired.baseline.median_s * 1e3:9.3f} ms  ratio {paired.ratio:6.2f}  "
                     f"beyond {paired.difference_s * 1e3:8.3f} ms  [{evaluated['status']}] {target.name}: "
                     f"{achieved:.4g} ({target.direction} {target.threshold:g} {target.unit})")

    for backend in backends_to_run(args.backends):
        params = {"n_steps": 10, "dtype": "float64"}
        # Default network (dropout 0.2), Kepler orbit: the gate runs without grad, the optimizer
        # step through a training-mode forward.
        trainer = trainer_for(backend, DEFAULT_NET, 2, 1)
        o = trainer.orbits
        paired = measure_paired(lambda: retrain_iteration(trainer),
                                lambda: network_only(trainer.model, o.inputs, o.tau, trainer.optimizer), budget_s=args.budget)
        record("retrain_default_net_N2_B1", backend, {**params, "N": 2, "B": 1, "hidden_dims": DEFAULT_NET}, paired,
               h.Target("retrain / network-only (default net)", "<=", 1.25), paired.ratio, "network-only")

        # Small network, N = 3: the retrain iteration and, beside it, Part 2 over 512 samples.
        small = trainer_for(backend, SMALL_NET, 3, 1, energy_threshold=ALWAYS_FAIL, E_upper=ALWAYS_FAIL,
                            E_lower=ALWAYS_FAIL / 10)
        paired = measure_paired(lambda: retrain_iteration(small),
                                lambda: network_only(small.model, small.orbits.inputs, small.orbits.tau, small.optimizer),
                                budget_s=args.budget)
        record("retrain_small_net_N3_B1", backend, {**params, "N": 3, "B": 1, "hidden_dims": SMALL_NET}, paired,
               h.Target("retrain overhead beyond network (small, N=3)", "<=", 1e-3, "s"), paired.difference_s,
               "network-only")
        fill_replay(small, PART2_SAMPLES)
        paired = measure_paired(lambda: part2_iteration(small, PART2_SAMPLES), lambda: retrain_iteration(small),
                                budget_s=args.budget)
        record("part2_small_net_N3_S512", backend,
               {**params, "N": 3, "samples": PART2_SAMPLES, "hidden_dims": SMALL_NET}, paired,
               h.Target("Part 2 (512) / single retrain", "<=", 10.0), paired.ratio, "1-sample retrain")

        batched = trainer_for(backend, SMALL_NET, 3, 64)
        paired = measure_paired(lambda: retrain_iteration(batched),
                                lambda: network_only(batched.model, batched.orbits.inputs, batched.orbits.tau, batched.optimizer),
                                budget_s=args.budget)
        record("retrain_small_net_N3_B64", backend, {**params, "N": 3, "B": 64, "hidden_dims": SMALL_NET}, paired,
               h.Target("retrain iteration, 64 orbits (small, N=3)", "<=", 3e-3, "s"), paired.target.median_s,
               "network-only")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
