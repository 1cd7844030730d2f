#!/usr/bin/env python3
"""The learned step's cost beside the classical one: time per simulated step of one system with
the learned dt (`ml`, its symmetric step rule) against the eta criterion (`adaptive`, plain and
symmetric), timed in alternating rounds on the same system. Each step of either includes what
every simulated step does (the carried leapfrog step, the energy error, the stop checks); the
learned one adds the network's forward and its features.

Target (issue 11, 2-core machine, quickstart network [64, 64]): a learned step costs at most
1.5x a classical one.

    python bench/bench_learned_step.py [--budget 4] [--threads 1] [--hidden 64 64] [--timescale encounter]

--timescale measures the learned step in that time scale (the baselines stay the classical
criterion in the dynamical time).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from _product_bench import RESULTS, measure_paired, set_threads
from aitimestepper.config import TIMESCALES, Config
from aitimestepper.initial_conditions import make_systems
from aitimestepper.simulate import Simulator
from aitimestepper.training.loop import checkpoint_payload, setup

STEPS = 200  # steps per timed call


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--timescale", choices=TIMESCALES, default="acceleration")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    base = dict(hidden_dims=args.hidden, dropout=0.0, e_min=0.9, e_max=0.9, output_dir="/tmp/aits_bench",
                save_name="learned_step", steps=STEPS, step_cap=10 * STEPS)
    run = setup(Config(**base, timescale=args.timescale))  # a fresh network: the timing does not depend on its weights
    checkpoint = checkpoint_payload(run, 0, 1, "epochs")
    systems = make_systems(Config(**base), torch.Generator().manual_seed(0))
    simulators = {
        "learned": Simulator(Config(**base, integrator_mode="ml"), checkpoint),
        "eta criterion": Simulator(Config(**base, integrator_mode="adaptive", step_rule="plain")),
        "eta criterion, symmetric": Simulator(Config(**base, integrator_mode="adaptive", step_rule="symmetric")),
    }
    calls = {name: (lambda s=s: s.run(systems, None, None)) for name, s in simulators.items()}
    rows = []
    for baseline in ("eta criterion", "eta criterion, symmetric"):
        paired = measure_paired(calls["learned"], calls[baseline], budget_s=args.budget)
        ratio = sorted(paired.ratios)[len(paired.ratios) // 2]
        row = {"what": f"learned step / {baseline} step", "hidden_dims": args.hidden, "threads": args.threads,
               "timescale": args.timescale,
               "learned_us_per_step": 1e6 * paired.target.median_s / STEPS,
               "baseline_us_per_step": 1e6 * paired.baseline.median_s / STEPS, "ratio_median": ratio,
               "rounds": len(paired.ratios), "target": "<= 1.5", "met": ratio <= 1.5,
               "machine": platform.processor() or platform.machine(), "cpus": torch.get_num_threads(),
               "torch": torch.__version__, "commit": _commit(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        rows.append(row)
        print(f"{row['what']}: {row['learned_us_per_step']:.1f} us / {row['baseline_us_per_step']:.1f} us = "
              f"{ratio:.2f}x (median of {row['rounds']} paired rounds; target <= 1.5)")
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "learned_step.jsonl", "a") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
