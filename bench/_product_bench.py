"""Shared setup of the training and simulation benchmarks: import path, backends, runs to time."""
from __future__ import annotations

import sys
from pathlib import Path

try:
    import aitimestepper  # noqa: F401
except ImportError:  # a source checkout that is not installed: use its python/ folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

import torch

import aitimestepper
from aitimestepper.bench import harness as h
from aitimestepper.config import Config

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_NET = [200, 1000, 1000, 200]
SMALL_NET = [64, 64]


def backends_to_run(requested: list[str] | None) -> list[str]:
    """reference always (the baseline every figure stands beside), plus the compiled CPU kernels."""
    available = aitimestepper.backends()
    wanted = requested or ["reference", "cpu"]
    return [b for b in wanted if b in available]


def config(backend: str, hidden: list[int], N: int, B: int, **extra) -> Config:
    """A training/simulation setup: Kepler (N = 2) or a softened random cluster (N > 2)."""
    base = dict(backend=backend, hidden_dims=hidden, num_particles=N, num_orbits=B, dropout=0.0 if hidden == SMALL_NET
                else 0.2, e_min=0.5, e_max=0.5, pos_scale=1.0, vel_scale=0.3, softening=0.05 if N > 2 else 0.0,
                lr=1e-12, weight_decay=0.0, output_dir="/tmp/aits_bench", save_name="bench")
    return Config(**{**base, **extra})


def network_only(model, inputs: torch.Tensor, optimizer) -> None:
    """The network's own cost of a retrain step: forward + backward + Adam, nothing else."""
    model.train()
    loss = model.dt(inputs).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed(fn, budget: float) -> "h.Timing":
    return h.measure(fn, warmup=3, repeats=9, budget_s=budget)
