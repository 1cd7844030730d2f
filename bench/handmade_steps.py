#!/usr/bin/env python3
"""Hand-made step functions on unseen random three-body systems, at equal force evaluations: which
time scale should a step (classical or learned) be measured in?

Each candidate is dt = eta * t(state) with kick-drift-kick leapfrog, plain or through the
symmetric step rule, run on the systems of the shipped three-body configs' distribution (seeds
101-116, never trained on) over t = 0..20, for eta at 5 values sqrt(2) apart. Its max |dE/E0| is
read in log-log at the cost of the plain eta criterion at the middle eta, and divided by that
criterion's error. Systems the eta criterion does not survive (|dE/E0| > 0.1) are left out.

    python bench/handmade_steps.py --dim 2        (about 3 minutes on one core)
    python bench/handmade_steps.py --dim 3

Candidates: the eta criterion (the dynamical time tau of physics/timescale.py), plain and
symmetric; the encounter time min(tau, min d_ij / |v_ij|) (--timescale encounter), symmetric;
tau * (tau / t_vir)^0.1, t_vir = G M^(5/2) / |2 E|^(3/2) (the best power of tau tried; it needs
the total energy, a property of the whole system, which is why it was not adopted).
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from aitimestepper import ops
from aitimestepper.initial_conditions import random_systems
from aitimestepper.physics.timescale import dynamical_time, step_time
from aitimestepper.simulate import SymmetricSteps

T_END = 20.0
BOUND = 0.1
# The shipped configs' distributions (configs/three_body_2d.toml, three_body_3d.toml) and eta_init.
DISTRIBUTIONS = {2: dict(mass=[1.0, 1.0, 1.0], vel_scale=0.4, eta=0.004),
                 3: dict(mass=[1.0, 0.7, 0.4], vel_scale=0.3, eta=0.01)}
ETA_STEPS = range(-2, 3)  # eta * 2^(k/2)


def run(time_of, pos, vel, mass, etas, symmetric: bool, step_cap: int):
    """max |dE/E0| and steps [S, len(etas)] of every system at every eta, all in one batch."""
    S = pos.shape[0]
    pos, vel, mass = (t.repeat(len(etas), *[1] * (t.dim() - 1)) for t in (pos, vel, mass))
    eta = torch.tensor(etas, dtype=pos.dtype).repeat_interleave(S)
    energy0 = ops.total_energy(pos, vel, mass, backend="reference")
    ctx = {"t_vir": mass.sum(-1) ** 2.5 / (2 * energy0.abs()) ** 1.5}
    t = torch.zeros_like(eta)
    steps = torch.zeros(eta.shape, dtype=torch.long)
    worst = torch.zeros_like(eta)
    done = torch.zeros(eta.shape, dtype=torch.bool)
    acc = ops.acceleration(pos, mass, backend="reference")
    rule = SymmetricSteps() if symmetric else None
    while not bool(done.all()):
        f = eta * time_of(pos, vel, acc, ctx)
        h = rule(f) if rule is not None else f
        h = torch.where(done, 0.0, torch.minimum(h, T_END - t))
        vel = vel + 0.5 * h[:, None, None] * acc
        pos = pos + h[:, None, None] * vel
        acc = ops.acceleration(pos, mass, backend="reference")
        vel = vel + 0.5 * h[:, None, None] * acc
        t, steps = t + h, steps + (~done).long()
        error = ((ops.total_energy(pos, vel, mass, backend="reference") - energy0) / energy0).abs()
        worst = torch.where(done, worst, torch.maximum(worst, error.nan_to_num(math.inf)))
        done |= (t >= T_END * (1 - 1e-14)) | (worst > BOUND) | (steps >= step_cap)
    worst = torch.where(steps >= step_cap, math.inf, worst)
    return worst.view(len(etas), S).T, (steps + 1).view(len(etas), S).T


def at_cost(evaluations, errors, target: float) -> float:
    """errors against evaluations read in log-log at target (nan outside the sweep, inf past the bound)."""
    points = sorted(zip(evaluations.tolist(), errors.tolist()))
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= target <= x1:
            break
    else:
        return math.nan
    if not (y0 < BOUND and y1 < BOUND):
        return math.inf
    w = 0.0 if x1 == x0 else (math.log(target) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp((1 - w) * math.log(y0) + w * math.log(y1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, choices=(2, 3), default=2)
    parser.add_argument("--seeds", default="101-116")
    parser.add_argument("--step-cap", type=int, default=120_000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    spec = DISTRIBUTIONS[args.dim]
    first, last = (int(x) for x in args.seeds.split("-"))
    systems = [random_systems(1, 3, args.dim, spec["mass"], 1.0, spec["vel_scale"], torch.Generator().manual_seed(s))
               for s in range(first, last + 1)]
    pos, vel, mass = (torch.cat([getattr(s, name) for s in systems]) for name in ("pos", "vel", "mass"))
    etas = [spec["eta"] * 2 ** (k / 2) for k in ETA_STEPS]
    middle = len(etas) // 2
    candidates = {
        "eta criterion, plain": (lambda p, v, a, c: dynamical_time(p, a), False),
        "eta criterion, symmetric": (lambda p, v, a, c: dynamical_time(p, a), True),
        "encounter time, symmetric": (lambda p, v, a, c: step_time(p, v, a, "encounter"), True),
        "tau (tau/t_vir)^0.1, symmetric": (lambda p, v, a, c: dynamical_time(p, a) ** 1.1 / c["t_vir"] ** 0.1, True),
    }
    results = {}
    for name, (time_of, symmetric) in candidates.items():
        started = time.perf_counter()
        results[name] = run(time_of, pos, vel, mass, etas, symmetric, args.step_cap)
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    base_errors, base_evaluations = results["eta criterion, plain"]
    kept = [i for i in range(len(systems)) if float(base_errors[i, middle]) < BOUND]
    print(f"{args.dim}-D, seeds {args.seeds}: {len(kept)} systems the eta criterion survives at eta = "
          f"{spec['eta']:g}; ratio to its max |dE/E0| at its cost")
    for name, (errors, evaluations) in results.items():
        ratios = [at_cost(evaluations[i], errors[i], float(base_evaluations[i, middle])) / float(base_errors[i, middle])
                  for i in kept]
        finite = [r for r in ratios if math.isfinite(r)]
        mean = math.exp(sum(map(math.log, finite)) / len(finite)) if finite else math.nan
        print(f"  {name:32s} geometric mean {mean:.2f} over {len(finite)} (better in {sum(r <= 1 for r in finite)}; "
              f"{len(ratios) - len(finite)} outside the sweep or failed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
