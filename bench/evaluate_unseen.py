#!/usr/bin/env python3
"""The learned dt on many systems it never saw: `evaluate` on random systems of the training
distribution with seeds it was not trained on, one system per seed; the geometric mean and the
spread of (learned max |dE/E0|) / (eta criterion's at the same cost) over the seeds. One
chaotic system decides little (its error depends on its closest encounters); many do.

    python bench/evaluate_unseen.py --model data/three_body_2d --seeds 101-110 --duration 20

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
    args = parser.parse_args(argv)
    first, last = (int(x) for x in args.seeds.split("-"))
    rows = []
    for seed in range(first, last + 1):
        cfg = build_config("evaluate", None, {"model_path": args.model, "seed": seed, "duration": args.duration,
                                              "ic": "random"})
        report = evaluate(cfg, stream=None)
        errors = {row["method"]: row["energy_error_max"] for row in report["rows"]}
        row = {"seed": seed, "evaluations": report["learned_evaluations"], **errors}
        rows.append(row)
        print(f"seed {seed}: {report['learned_evaluations']} evaluations, learned {errors['learned (symmetric)']:.3e}, "
              f"eta {errors['eta criterion']:.3e}, eta symmetric {errors['eta criterion, symmetric']:.3e}", flush=True)

    def ratios(baseline: str) -> list[float]:
        return [r["learned (symmetric)"] / r[baseline] for r in rows
                if all(math.isfinite(r[k]) and r[k] > 0 for k in ("learned (symmetric)", baseline))]

    summary = {}
    for baseline in ("eta criterion", "eta criterion, symmetric", "fixed-dt leapfrog"):
        values = ratios(baseline)
        if values:
            summary[baseline] = {"geometric_mean": math.exp(sum(map(math.log, values)) / len(values)),
                                 "min": min(values), "max": max(values), "count": len(values),
                                 "learned_better_in": sum(v <= 1 for v in values)}
            s = summary[baseline]
            print(f"learned / {baseline}: geometric mean {s['geometric_mean']:.3f} over {s['count']} systems "
                  f"(range {s['min']:.2f}-{s['max']:.2f}; learned at least as good in {s['learned_better_in']})")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"unseen-{Path(args.model).name}.json"
    path.write_text(json.dumps({"model": args.model, "seeds": args.seeds, "duration": args.duration, "commit": commit,
                                "rows": rows, "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
