#!/usr/bin/env python3
"""Training speed: one retrain iteration (the gate's attempt + one optimizer step) and one Part 2
iteration, each beside the network's own forward + backward + Adam measured in the same run and
beside the `reference` backend. Rows go to bench/results/training.jsonl with provenance.

Targets (issue 4, 2-core machine): default network, single orbit: iteration <= 1.25x network
only; small network [64, 64], N = 3, n_steps 10: <= 1 ms beyond the network only, and 64
orbits batched <= 3 ms per iteration; Part 2 over 512 samples <= 10x a single-sample iteration.

    python bench/bench_training.py [--backends reference cpu] [--budget 3]
"""
from __future__ import annotations

import argparse

import torch

from _product_bench import DEFAULT_NET, RESULTS, SMALL_NET, backends_to_run, config, h, network_only, timed
from aitimestepper.training.loop import setup
from aitimestepper.training.part2 import evaluate
from aitimestepper.training.replay import Samples


def retrain_iteration(trainer) -> None:
    """What Part 1 does for a failing state: gate (no grad, one host sync), then one Adam step."""
    o = trainer.orbits
    with torch.no_grad():
        gate = trainer.attempt(o.inputs, o.pos, o.vel, o.mass, o.energy, train=False)
    torch.stack([gate.r, gate.dt]).tolist()
    trainer.optimize(trainer.attempt(o.inputs, o.pos, o.vel, o.mass, o.energy, train=True).r)


def part2_iteration(trainer, size: int) -> None:
    """One Part 2 iteration over `size` samples, all failing (the worst case): gate + Adam step."""
    index = torch.randperm(len(trainer.replay), generator=trainer.sampler)[:size]
    samples = trainer.replay.take(index)
    with torch.no_grad():
        gate = evaluate(trainer, samples)
    failing = (gate.r >= -1.0).nonzero().squeeze(1)  # all rows: time the full optimizer step
    failing.numel()
    failed = Samples(*(t[failing] for t in (samples.inputs, samples.pos, samples.vel, samples.mass, samples.energy,
                                            samples.dt)))
    trainer.optimize(evaluate(trainer, failed, train=True).r)


def fill_replay(trainer, size: int) -> None:
    """size samples: the orbits' states perturbed, with their own (padded-free) inputs."""
    o = trainer.orbits
    generator = torch.Generator().manual_seed(0)
    reps = -(-size // o.count)
    pos = o.pos.repeat(reps, 1, 1)[:size]
    pos = pos + 0.01 * torch.randn(pos.shape, generator=generator, dtype=pos.dtype)
    vel, mass = o.vel.repeat(reps, 1, 1)[:size], o.mass.repeat(reps, 1)[:size]
    physics = trainer.physics
    from aitimestepper import ops

    acc = ops.acceleration(pos, mass, **physics)
    history = trainer.featurizer.new_history(size, *pos.shape[1:], pos.dtype, pos.device)
    inputs, _ = trainer.featurizer.inputs(history, pos, vel, mass, acc)
    energy = ops.total_energy(pos, vel, mass, **physics)
    trainer.replay.append(Samples(inputs, pos, vel, mass, energy, torch.zeros_like(energy)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=None)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per case")
    parser.add_argument("--out", default=str(RESULTS / "training.jsonl"))
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    log = h.ResultLog(args.out, suite="training")
    cases = [("default_net_N2_B1", DEFAULT_NET, 2, 1), ("small_net_N3_B1", SMALL_NET, 3, 1),
             ("small_net_N3_B64", SMALL_NET, 3, 64)]
    report = []
    for backend in backends_to_run(args.backends):
        single_small = None
        for case, hidden, N, B in cases:
            run = setup(config(backend, hidden, N, B))
            trainer = run.trainer
            trainer.refresh_inputs()
            net = timed(lambda: network_only(trainer.model, trainer.orbits.inputs, trainer.optimizer), args.budget)
            it = timed(lambda: retrain_iteration(trainer), args.budget)
            params = {"N": N, "B": B, "hidden_dims": hidden, "n_steps": 10, "dtype": "float64"}
            metrics = {"iteration_s": it.median_s, "network_only_s": net.median_s,
                       "ratio_to_network": it.median_s / net.median_s, "overhead_s": it.median_s - net.median_s,
                       "iterations_per_s": 1 / it.median_s}
            log.append(case=f"retrain_{case}", backend=backend, params=params, timing=it, metrics=metrics,
                       primary="iterations_per_s")
            report.append((backend, case, it.median_s, net.median_s))
            if case == "default_net_N2_B1":
                log.append_target(h.Target("retrain / network-only (default net)", "<=", 1.25).evaluate(
                    metrics["ratio_to_network"]), backend=backend)
            elif case == "small_net_N3_B1":
                single_small = it.median_s
                log.append_target(h.Target("retrain overhead beyond network (small, N=3)", "<=", 1e-3, "s").evaluate(
                    metrics["overhead_s"]), backend=backend)
                fill_replay(trainer, 512)
                p2 = timed(lambda: part2_iteration(trainer, 512), args.budget)
                log.append(case="part2_small_net_N3_S512", backend=backend, params={**params, "samples": 512},
                           timing=p2, metrics={"iteration_s": p2.median_s, "ratio_to_single": p2.median_s / it.median_s},
                           primary="iteration_s")
                report.append((backend, "part2_S512", p2.median_s, it.median_s))
                log.append_target(h.Target("Part 2 (512) / single retrain", "<=", 10.0).evaluate(
                    p2.median_s / single_small), backend=backend)
            else:
                log.append_target(h.Target("retrain iteration, 64 orbits (small, N=3)", "<=", 3e-3, "s").evaluate(
                    it.median_s), backend=backend)
    print(f"{'backend':10s} {'case':22s} {'time':>10s} {'baseline':>10s} {'ratio':>6s}")
    for backend, case, t, base in report:
        print(f"{backend:10s} {case:22s} {t * 1e3:8.3f}ms {base * 1e3:8.3f}ms {t / base:6.2f}")
    for row in log.rows:
        if row["case"] == "target":
            target = row["target"]
            print(f"[{target['status']}] {target['name']}: {target['achieved']:.4g} (target {target['direction']} "
                  f"{target['threshold']:g}) backend {row.get('backend')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
