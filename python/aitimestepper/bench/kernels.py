"""`aitimestepper bench`: a quick table of the kernels on this machine.

Times two ops on every backend available here, beside the `reference` backend (plain PyTorch),
and REBOUND's leapfrog on the same systems when the `rebound` package is installed:

- `acceleration` of one system of N bodies: pair interactions per second;
- `step` of many small systems (`steps` leapfrog steps per call): system-steps per second.

Pair rates count ordered pairs i != j, N (N - 1) per system and force evaluation (REBOUND's
direct summation evaluates the same pairs); a leapfrog step costs one force evaluation.

Timing is torch.utils.benchmark's: warm-up, then `blocked_autorange` (enough calls to fill
`--min-run-time`, median and interquartile range over blocks; CUDA is synchronized). Inputs are
checked once outside the timed calls (`ops.unchecked()`), so the rows measure the kernels and
the op layer, not the input checks.

The table is printed. With `--output PATH` the rows are also appended to PATH as JSON lines,
each with the machine, the package and library versions and the build information; nothing is
written anywhere else. The repository's `bench/` folder holds the full tuning suite.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils import benchmark

PAIR_CONVENTION = "pair rates count ordered pairs i != j: N (N - 1) per system and force evaluation"


@dataclass(frozen=True)
class Case:
    op: str  # "acceleration" or "step"
    N: int
    B: int
    steps: int = 1
    dtype: str = "float32"


def plan(device: torch.device, quick: bool) -> list[Case]:
    """The cases: small enough for the reference backend's N x N pair tensors."""
    if device.type == "cuda":
        sizes = [Case("acceleration", 4096 if quick else 16384, 1),
                 Case("step", 4, 16384 if quick else 2**18, steps=10),
                 Case("step", 64, 256 if quick else 4096, steps=10)]
    else:
        sizes = [Case("acceleration", 256 if quick else 1024, 1),
                 Case("step", 4, 256 if quick else 4096, steps=10),
                 Case("step", 64, 4 if quick else 32, steps=10)]
    return sizes


def _system(case: Case, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, case.dtype)
    pos = torch.randn(case.B, case.N, 3, generator=gen, dtype=torch.float64)
    vel = 0.1 * torch.randn(case.B, case.N, 3, generator=gen, dtype=torch.float64)
    mass = torch.rand(case.B, case.N, generator=gen, dtype=torch.float64) + 0.5
    mass = mass / mass.sum(-1, keepdim=True)
    return (t.to(device=device, dtype=dtype) for t in (pos, vel, mass))


def _rates(case: Case, seconds: float) -> dict[str, float]:
    pairs = case.B * case.N * (case.N - 1) * case.steps
    rates = {"pair_interactions_per_s": pairs / seconds}
    if case.op == "step":
        rates["system_steps_per_s"] = case.B * case.steps / seconds
    return rates


def _measure(fn: Callable[[], Any], min_run_time: float, label: str) -> benchmark.Measurement:
    fn()  # warm-up: module loads, JIT compilation, allocator growth
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, label=label, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time)


def time_backend(case: Case, backend: str, device: torch.device, min_run_time: float) -> dict:
    from .. import ops

    pos, vel, mass = _system(case, device)
    dt = 1e-3
    with ops.unchecked():
        if case.op == "acceleration":
            fn = lambda: ops.acceleration(pos, mass, softening=0.01, backend=backend)  # noqa: E731
        else:
            fn = lambda: ops.step(pos, vel, mass, dt, steps=case.steps, softening=0.01,  # noqa: E731
                                  backend=backend)
        m = _measure(fn, min_run_time, f"{case.op} {backend}")
    return {"median_s": m.median, "iqr_s": m.iqr, "runs": len(m.times)}


def time_rebound(case: Case, min_run_time: float) -> Optional[dict]:
    """REBOUND's leapfrog on one system of the case's size (per system: it runs one at a time)."""
    try:
        import rebound
    except ImportError:
        return None
    pos, vel, mass = _system(Case(case.op, case.N, 1, case.steps, "float64"), torch.device("cpu"))
    sim = rebound.Simulation()
    sim.G = 1.0
    sim.softening = 0.01
    for m, x, v in zip(mass[0].tolist(), pos[0].tolist(), vel[0].tolist()):
        sim.add(m=m, x=x[0], y=x[1], z=x[2], vx=v[0], vy=v[1], vz=v[2])
    sim.integrator = "leapfrog"
    sim.dt = 1e-3

    def fn() -> None:
        if hasattr(sim, "steps"):
            sim.steps(case.steps)
        else:  # older REBOUND: integrate a whole number of fixed steps ahead
            sim.integrate(sim.t + case.steps * sim.dt, exact_finish_time=0)

    m = _measure(fn, min_run_time, f"{case.op} rebound")
    return {"median_s": m.median, "iqr_s": m.iqr, "runs": len(m.times), "B": 1,
            "note": f"REBOUND {rebound.__version__}, one system per call"}


def machine(device: torch.device) -> dict:
    from .. import __version__, build_info

    versions = {"python": platform.python_version(), "torch": torch.__version__, "aitimestepper": __version__}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        import rebound

        versions["rebound"] = rebound.__version__
    except ImportError:
        pass
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": device.type, "device_name": name, "host": platform.node(), "platform": platform.platform(),
            "threads": torch.get_num_threads(), "versions": versions, "build_info": build_info()}


def run(device: torch.device, backends: Sequence[str], quick: bool, min_run_time: float) -> list[dict]:
    rows = []
    for case in plan(device, quick):
        case_backends = list(backends)
        if case.op == "step":
            case_backends.append("rebound")
        for backend in case_backends:
            base = {"op": case.op, "backend": backend, "N": case.N, "B": case.B, "steps": case.steps,
                    "dtype": case.dtype if backend != "rebound" else "float64"}
            try:
                timing = (time_rebound(case, min_run_time) if backend == "rebound"
                          else time_backend(case, backend, device, min_run_time))
            except Exception as error:  # one failing backend must not hide the others
                rows.append({**base, "error": f"{type(error).__name__}: {error}"})
                continue
            if timing is None:
                continue  # REBOUND is not installed
            if backend == "rebound":
                base["B"] = timing.pop("B")
            rows.append({**base, **timing, **_rates(Case(case.op, case.N, base["B"], case.steps), timing["median_s"])})
    return rows


def format_table(rows: list[dict]) -> str:
    header = f"{'op':<13}{'backend':<11}{'dtype':<9}{'N':>7}{'B':>8}{'steps':>6}{'time':>12}{'IQR':>6}" \
             f"{'pairs/s':>11}{'sys-steps/s':>13}"
    lines = [header, "-" * len(header)]
    for r in rows:
        start = f"{r['op']:<13}{r['backend']:<11}{r['dtype']:<9}{r['N']:>7}{r['B']:>8}{r['steps']:>6}"
        if "error" in r:
            lines.append(f"{start}  ERROR {r['error'][:80]}")
            continue
        iqr = f"{100 * r['iqr_s'] / r['median_s']:.0f}%" if r["median_s"] else "-"
        sys_steps = f"{r['system_steps_per_s']:.3g}" if "system_steps_per_s" in r else "-"
        lines.append(f"{start}{_seconds(r['median_s']):>12}{iqr:>6}{r['pair_interactions_per_s']:>11.3g}"
                     f"{sys_steps:>13}")
    return "\n".join(lines)


def _seconds(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aitimestepper bench", description=__doc__.splitlines()[0].strip("`"),
                                epilog=PAIR_CONVENTION)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when a GPU is present, else cpu")
    p.add_argument("--backends", default="",
                   help="comma-separated backends (default: every one available on the device, reference included)")
    p.add_argument("--quick", action="store_true", help="smaller sizes: a smoke test of a few seconds")
    p.add_argument("--min-run-time", type=float, default=0.5, metavar="S",
                   help="seconds of timed calls per row (default 0.5)")
    p.add_argument("--output", "-o", metavar="PATH", default=None,
                   help="also append the rows to PATH as JSON lines (default: print only)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..ops.backends import available_backends

    args = _parser().parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    available = [b for b in available_backends() if b != "cuda" or device.type == "cuda"]
    if device.type == "cpu":
        available = [b for b in available if b != "triton"]  # the interpreter is not a speed
    backends = [b for b in args.backends.split(",") if b] or available
    unknown = [b for b in backends if b not in available]
    if unknown:
        print(f"error: backend(s) {unknown} not available on {device.type}; available: {available}", file=sys.stderr)
        return 2
    rows = run(device, backends, args.quick, args.min_run_time)
    info = machine(device)
    print(f"{info['device_name']} ({device.type}), torch {info['versions']['torch']}, "
          f"{info['threads']} threads; {PAIR_CONVENTION}")
    print(format_table(rows))
    if args.output:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            for row in rows:
                f.write(json.dumps({**row, "machine": info, "pair_convention": PAIR_CONVENTION}) + "\n")
        print(f"rows appended to {path}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
