#!/usr/bin/env python3
"""Secular energy drift over a long run: 100 orbits of a Kepler e = 0.6 binary with the learned dt
(symmetric and plain step rule) and the eta criterion (plain and symmetric, at the eta whose
cost matches the learned run's). A rule without drift keeps max |dE/E0| over the last 10 orbits
close to that over the first 10 (target, issue 11: at most 1.5x for the learned dt).

    python bench/long_run_drift.py [--model data/kepler] [--orbits 100] [--e 0.6]

Writes bench/results/evaluate/drift-e<e>.json.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path

import torch

from aitimestepper.checkpoint import load_checkpoint, resolve_checkpoint
from aitimestepper.config import build_config
from aitimestepper.initial_conditions import make_systems
from aitimestepper.simulate import Recording, Simulator, simulation_config

OUT = Path(__file__).resolve().parent / "results" / "evaluate"


def run(cfg, checkpoint, systems, t_end) -> dict:
    recording = Recording(max_frames=10**7)
    out = Simulator(cfg, checkpoint).run(systems, t_end, recording)
    t = torch.tensor(recording.t[1:], dtype=torch.float64)
    energy = torch.tensor(recording.energy, dtype=torch.float64)
    error = ((energy[1:] - energy[0]) / energy[0]).abs()
    return {"t": t, "error": error, "evaluations": int(out["evaluations"][0]), "steps": int(out["steps"][0])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="data/kepler")
    parser.add_argument("--orbits", type=int, default=100)
    parser.add_argument("--e", type=float, default=0.6)
    args = parser.parse_args(argv)
    path = resolve_checkpoint(args.model)
    checkpoint = load_checkpoint(path)
    base = simulation_config(build_config("simulate", None, {"model_path": str(path), "e_min": args.e, "e_max": args.e,
                                                             "Nperiod": float(args.orbits), "seed": 1}), checkpoint)
    systems = make_systems(base, torch.Generator().manual_seed(base.seed))
    period = float(systems.periods[0])
    t_end = torch.full((1,), args.orbits * period, dtype=torch.float64)
    runs = {}
    for rule in ("symmetric", "plain"):
        runs[f"learned ({rule})"] = run(base.replace(integrator_mode="ml", step_rule=rule), checkpoint, systems, t_end)
    # The eta criterion at the learned run's cost: its cost scales as 1/eta.
    eta0 = float(checkpoint["architecture"].get("eta_init", base.eta))
    target = runs["learned (symmetric)"]["evaluations"]
    for rule in ("plain", "symmetric"):
        probe = run(base.replace(integrator_mode="adaptive", eta=eta0, step_rule=rule), None, systems, t_end)
        eta = eta0 * probe["evaluations"] / target
        runs[f"eta criterion ({rule})"] = run(base.replace(integrator_mode="adaptive", eta=eta, step_rule=rule), None,
                                               systems, t_end)
    rows = []
    for name, r in runs.items():
        first = float(r["error"][r["t"] <= 10 * period].max())
        last = float(r["error"][r["t"] >= (args.orbits - 10) * period].max())
        rows.append({"method": name, "evaluations": r["evaluations"], "max_first_10_orbits": first,
                     "max_last_10_orbits": last, "last_over_first": last / first})
        print(f"{name:<26} {r['evaluations']:>8} evaluations  first 10 orbits {first:.3e}  last 10 {last:.3e}  "
              f"ratio {last / first:.2f}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"model": str(path), "e": args.e, "orbits": args.orbits, "commit": commit, "rows": rows,
              "target": "learned (symmetric): last / first <= 1.5",
              "met": rows[0]["last_over_first"] <= 1.5 and math.isfinite(rows[0]["last_over_first"])}
    (OUT / f"drift-e{args.e}.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
