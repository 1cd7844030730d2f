#!/usr/bin/env python3
"""Simulation speed with the learned dt: time per step beside the network's own forward, single
system and 1024 systems batched, beside the `reference` backend. Rows go to
bench/results/simulate.jsonl with provenance.

Targets (issue 4, 2-core machine): `--integrator-mode ml`, single system: a step costs at most
1.3x the network forward; 1024 systems batched: at most 10 us per system-step.

    python bench/bench_simulate.py [--backends reference cpu] [--budget 3]
"""
from __future__ import annotations

import argparse

import torch

from _product_bench import DEFAULT_NET, RESULTS, SMALL_NET, backends_to_run, config, h, timed
from aitimestepper.simulate import Simulator
from aitimestepper.training.loop import checkpoint_payload, setup

STEPS = 50  # steps per timed simulation call


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=None)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per case")
    parser.add_argument("--out", default=str(RESULTS / "simulate.jsonl"))
    args = parser.parse_args(argv)
    log = h.ResultLog(args.out, suite="simulate")
    lines = []
    for backend in backends_to_run(args.backends):
        for hidden, name in ((DEFAULT_NET, "default_net"), (SMALL_NET, "small_net")):
            # An untrained network of the right architecture: speed does not depend on the weights.
            run = setup(config(backend, hidden, 2, 1))
            checkpoint = checkpoint_payload(run, 0, 1, "bench")
            for B in (1, 1024):
                cfg = config(backend, hidden, 2, B, integrator_mode="ml", steps=STEPS)
                simulator = Simulator(cfg, checkpoint)
                systems = run.ics if B == 1 else _batch(run.ics, B)
                step = timed(lambda: simulator.run(systems, None, None), args.budget)
                per_step = step.median_s / STEPS
                inputs = torch.zeros(B, simulator.featurizer.input_dim, dtype=torch.float64)
                with torch.no_grad():
                    forward = timed(lambda: simulator.model(inputs), args.budget)
                metrics = {"step_s": per_step, "system_step_s": per_step / B, "forward_s": forward.median_s,
                           "ratio_to_forward": per_step / forward.median_s}
                log.append(case=f"ml_{name}_B{B}", backend=backend, timing=step, metrics=metrics,
                           params={"N": 2, "B": B, "hidden_dims": hidden, "steps_per_call": STEPS},
                           primary="system_step_s")
                lines.append(f"{backend:10s} {name:12s} B={B:5d} step {per_step * 1e3:8.3f} ms  per system-step "
                             f"{per_step / B * 1e6:9.2f} us  forward {forward.median_s * 1e3:8.3f} ms  ratio "
                             f"{per_step / forward.median_s:5.2f}")
                if B == 1:
                    target = h.Target(f"ml step / forward ({name}, 1 system)", "<=", 1.3).evaluate(
                        metrics["ratio_to_forward"])
                else:
                    target = h.Target(f"ml system-step ({name}, 1024 systems)", "<=", 10e-6, "s").evaluate(
                        metrics["system_step_s"])
                log.append_target(target, backend=backend)
                lines.append(f"  [{target['status']}] {target['name']}: {target['achieved']:.4g} "
                             f"(target {target['direction']} {target['threshold']:g})")
    print("\n".join(lines))
    return 0


def _batch(ics, B: int):
    from aitimestepper.initial_conditions import Systems

    return Systems(ics.pos.repeat(B, 1, 1), ics.vel.repeat(B, 1, 1), ics.mass.repeat(B, 1))


if __name__ == "__main__":
    raise SystemExit(main())
