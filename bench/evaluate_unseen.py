#!/usr/bin/env python3
"""The learned dt on many systems it never saw: `evaluate` on random systems of the training
distribution with seeds it was not trained on, one system per seed; the geometric mean and the
spread of (learned max |dE/E0|) / (eta criterion's at the same cost) over the seeds. One
chaotic system decides little (its error depends on its closest encounters); many do.

    python bench/evaluate_unseen.py --model data/three_body_2d --seeds 101-110 --duration 20

A ratio is formed where both the learned run and the eta criterion at its cost stay within
--energy-error-bound over the whole span. The other systems are counted apart, not dropped:
those where only the eta criterion failed (a win for the learned dt, whose ratio against the
bound says little), only the learned run failed, or both did (close approaches that no leapfrog
step at this cost survives; with --step-cap, runs cut there count as failed).

Writes bench/results/evaluate/unseen-<run folder name>.json.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path

from aitimestepper.config import build_config
from aitimestepper.evaluate import evaluate

OUT = Path(__file__).resolve().parent / "results" / "evaluate"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--seeds", default="101-110")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--step-cap", type=int, default=None,
                        help="cut every run at this many steps (default: the simulation's); a cut run counts as failed")
    args = parser.parse_args(argv)
    first, last = (int(x) for x in args.seeds.split("-"))
    settings = {"model_path": args.model, "duration": args.duration, "ic": "random"}
    if args.step_cap is not None:
        settings["step_cap"] = args.step_cap
    bound = build_config("evaluate", None, settings).energy_error_bound
    rows = []
    for seed in range(first, last + 1):
        report = evaluate(build_config("evaluate", None, {**settings, "seed": seed}), stream=None)
        errors = {row["method"]: row["energy_error_max"] for row in report["rows"]}
        failed = sorted(row["method"] for row in report["rows"]
                        if not (math.isfinite(row["energy_error_max"]) and row["energy_error_max"] < bound))
        row = {"seed": seed, "evaluations": report["learned_evaluations"], **errors, "failed": failed}
        rows.append(row)
        print(f"seed {seed}: {report['learned_evaluations']} evaluations, learned {errors['learned (symmetric)']:.3e}, "
              f"eta {errors['eta criterion']:.3e} (ratio {errors['learned (symmetric)'] / errors['eta criterion']:.3g}), "
              f"eta symmetric {errors['eta criterion, symmetric']:.3e}"
              + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)

    summary = {}
    baselines = [name for name in rows[0] if name not in ("seed", "evaluations", "failed", "learned (symmetric)",
                                                          "learned (plain)") and not name.startswith("REBOUND")]
    for baseline in baselines:
        learned_failed = {r["seed"] for r in rows if "learned (symmetric)" in r["failed"]}
        baseline_failed = {r["seed"] for r in rows if baseline in r["failed"]}
        compared = [r for r in rows if r["seed"] not in learned_failed | baseline_failed]
        values = [r["learned (symmetric)"] / r[baseline] for r in compared]
        s = summary[baseline] = {
            "compared": len(values), "per_seed": {r["seed"]: v for r, v in zip(compared, values)},
            "only_baseline_failed": sorted(baseline_failed - learned_failed),
            "only_learned_failed": sorted(learned_failed - baseline_failed),
            "both_failed": sorted(learned_failed & baseline_failed)}
        if values:
            s.update(geometric_mean=math.exp(sum(map(math.log, values)) / len(values)), min=min(values),
                     max=max(values), learned_better_in=sum(v <= 1 for v in values))
            print(f"learned / {baseline}: geometric mean {s['geometric_mean']:.3f} over {len(values)} systems "
                  f"(range {s['min']:.2f}-{s['max']:.2f}; learned at least as good in {s['learned_better_in']})")
        print(f"  failed (error past {bound:g}, or cut): only {baseline} in seeds {s['only_baseline_failed']}, only "
              f"the learned run in {s['only_learned_failed']}, both in {s['both_failed']}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"unseen-{Path(args.model).name}.json"
    path.write_text(json.dumps({"model": args.model, "seeds": args.seeds, "duration": args.duration,
                                "step_cap": args.step_cap, "commit": commit, "rows": rows, "summary": summary},
                               indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
