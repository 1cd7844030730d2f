"""Shared setup of the training and simulation benchmarks: import path, backends, runs to time,
and the paired measurement every product figure uses.

The product targets are ratios to the network's own cost (or small absolute overheads), and this
machine is shared: a quiet second and a busy second differ by 2-5x. So a figure and its baseline
are timed in alternating rounds (target, baseline, baseline, target, ...) and the result is the
median over rounds of the per-round ratio (and of the per-round difference): load that comes
and goes hits both sides of a round alike.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

try:
    import aitimestepper  # noqa: F401
except ImportError:  # a source checkout that is not installed: use its python/ folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

import aitimestepper  # noqa: E402
from aitimestepper.config import Config

RESULTS = Path(__file__).resolve().parent / "results" / "local"  # ignored by git: merge rows into <machine>.jsonl
DEFAULT_NET = [200, 1000, 1000, 200]
SMALL_NET = [64, 64]


def backends_to_run(requested: list[str] | None) -> list[str]:
    """reference always (the baseline every figure stands beside), plus the compiled CPU kernels."""
    available = aitimestepper.backends()
    wanted = requested or ["reference", "cpu"]
    return [b for b in wanted if b in available]


def config(backend: str, hidden: list[int], N: int, B: int, **extra) -> Config:
    """A training/simulation setup: Kepler (N = 2) or a softened random cluster (N > 2).

    The tiny learning rate keeps the network (hence dt and the work per step) the same over
    thousands of timed iterations; the default network keeps its dropout 0.2, the small one has
    none (so Part 1 and Part 2 take their gradient through the gate's own graph)."""
    base = dict(backend=backend, hidden_dims=hidden, num_particles=N, num_orbits=B, dropout=0.0 if hidden == SMALL_NET
                else 0.2, e_min=0.5, e_max=0.5, pos_scale=1.0, vel_scale=0.3, softening=0.05 if N > 2 else 0.0,
                lr=1e-12, weight_decay=0.0, output_dir="/tmp/aits_bench", save_name="bench")
    return Config(**{**base, **extra})


def network_only(model, inputs: torch.Tensor, tau: torch.Tensor, optimizer) -> None:
    """The network's own cost of a retrain step: forward + backward + Adam, nothing else."""
    if not model.training:
        model.train()
    loss = model.dt(inputs, tau).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def add_common_arguments(parser) -> None:
    parser.add_argument("--backends", nargs="+", default=None)
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timing per case and backend")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch (and OpenMP) threads; default: torch's choice. On a loaded machine 1 "
                             "avoids waiting for a descheduled worker thread in every parallel region")


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


@dataclass
class Paired:
    """A figure and its baseline timed in alternating rounds."""

    target: h.Timing
    baseline: h.Timing
    ratios: list[float] = field(default_factory=list)  # target / baseline per round
    differences_s: list[float] = field(default_factory=list)  # target - baseline per round

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def difference_s(self) -> float:
        return statistics.median(self.differences_s)

    def metrics(self) -> dict:
        q = statistics.quantiles(self.ratios, n=4, method="inclusive") if len(self.ratios) > 1 else [self.ratio] * 3
        return {"target_s": self.target.median_s, "baseline_s": self.baseline.median_s,
                "paired_ratio": self.ratio, "paired_ratio_q1": q[0], "paired_ratio_q3": q[2],
                "paired_difference_s": self.difference_s, "rounds": len(self.ratios)}


def _calls_for(fn: Callable[[], object], repeat_s: float) -> int:
    started = time.perf_counter()
    fn()
    return max(1, min(10_000, round(repeat_s / max(time.perf_counter() - started, 1e-9))))


def _timing(samples: list[float], calls: int, cpu: float, wall: float) -> h.Timing:
    q = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else samples * 3
    return h.Timing(median_s=statistics.median(samples), q1_s=q[0], q3_s=q[2], min_s=min(samples),
                    max_s=max(samples), repeats=len(samples), calls_per_repeat=calls,
                    cpu_util=cpu / wall if wall > 0 else None, method="perf_counter (paired rounds)",
                    samples_s=samples)


def measure_paired(target: Callable[[], object], baseline: Callable[[], object], *, budget_s: float,
                   rounds: int = 31, min_rounds: int = 7, repeat_s: float = 0.03, warmup: int = 3) -> Paired:
    """Time target() and baseline() in alternating rounds of about repeat_s each (CPU clock)."""
    for _ in range(warmup):
        target()
        baseline()
    calls = {"target": _calls_for(target, repeat_s), "baseline": _calls_for(baseline, repeat_s)}
    functions = {"target": target, "baseline": baseline}
    samples: dict[str, list[float]] = {"target": [], "baseline": []}
    cpu = {"target": 0.0, "baseline": 0.0}
    wall = {"target": 0.0, "baseline": 0.0}
    started = time.perf_counter()
    for index in range(rounds):
        if index >= min_rounds and time.perf_counter() - started > budget_s:
            break
        for name in (("target", "baseline") if index % 2 == 0 else ("baseline", "target")):
            fn, n = functions[name], calls[name]
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                fn()
            elapsed = time.perf_counter() - wall0
            cpu[name] += time.process_time() - cpu0
            wall[name] += elapsed
            samples[name].append(elapsed / n)
    pairs = list(zip(samples["target"], samples["baseline"]))
    return Paired(_timing(samples["target"], calls["target"], cpu["target"], wall["target"]),
                  _timing(samples["baseline"], calls["baseline"], cpu["baseline"], wall["baseline"]),
                  [t / b for t, b in pairs], [t - b for t, b in pairs])
