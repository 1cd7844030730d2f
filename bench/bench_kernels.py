#!/usr/bin/env python3
"""The tuning benchmark of the kernels: gravity and fused integration per backend, beside
`reference` and REBOUND, with the targets the kernels were built to. (`aitimestepper bench` is
the installed package's quick table; this script is the repository's full suite.)

What it measures:
- `acceleration`: pair interactions/s = B N (N-1) / time (ordered pairs i != j), and GFLOP/s at
  20 flops per interaction; on a GPU also the fraction of the instruction bound.
- `step`: system-steps/s = B steps / time (and the pair rate, B steps S N (N-1) / time with S
  substeps per step); on a GPU one step per call is also timed as achieved bandwidth against a
  device-to-device copy measured in the same run.
- the energy-error gradient: forward = `step` with dt requiring grad (trajectory saved) +
  `total_energy`; backward = `.backward()` of |E1 - E0| / |E0| summed; reported as
  backward / forward and backward / plain no-grad forward.
- REBOUND (optional): leapfrog with fixed dt, one system, `sim.steps(k)`. Interactions are
  counted for REBOUND exactly as for us: N (N-1) ordered pairs per force evaluation (its
  `basic` gravity in src/gravity.c loops over ordered pairs i != j).

How it runs: the parent process (`main`) runs each group of cases in a child process
(`--worker GROUP`), because OpenMP reads OMP_NUM_THREADS when the runtime starts: a child with
OMP_NUM_THREADS=n and torch.set_num_threads(n) is the one reliable way to get n threads in
both the C++ kernels and the reference. Each row records what the pools report (torch,
OMP_NUM_THREADS, and `_core`'s own omp_get_max_threads via build_info) and the measured
CPU-time / wall-time ratio (`util`): on an idle machine util near n shows that n threads
worked; on a shared one it also shows how much CPU the run actually got.
Children append rows to the results file as they go; the parent then evaluates the targets,
appends them, and prints the tables (targets last).

All timed calls run under `ops.unchecked()`: they measure the kernels, not the input checks
(one GPU row, `step1 checked`, shows what the checks cost; `step1 raw` calls the backend's
kernel without the ops layer, which separates per-call overhead from kernel time).

To time an alternative (for instance the CUDA symmetric pair kernel at every size), run the
suite again with its switch in the environment (`AITS_CUDA_PAIRS=symmetric`) and compare runs.

Usage:

    python bench/bench_kernels.py                 # CPU suite (+ GPU suite if CUDA): ~1.5 min here
    python bench/bench_kernels.py --suite gpu --out $OUT      # what bench/gpu_check.sh runs
    python bench/bench_kernels.py --quick         # smaller sizes, a smoke test (~30 s)
    TRITON_INTERPRET=1 python bench/bench_kernels.py --dry-run   # GPU suite's code on the CPU

Rows go to DIR/kernels.jsonl (DIR = --out, default bench/results/local/ beside this script,
which git ignores; `-quick` / `-dryrun` in the name for those modes) and the printed tables to
DIR/kernels-table.txt. The exit status is 0 unless a group failed (2), or --strict and a
target was missed (1).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402  (bench/harness.py: one harness for every script here)

SUITE = "kernels"
PAIR_FLOPS = 20  # flops per softened pair interaction, the convention for GFLOP/s

# The GPU instruction bound for softened all-pairs gravity, per interaction: 12 FP32 instructions
# (3 sub, 3 FMA for r^2 + eps^2, 2 mul for s^-3 and m_j s^-3, 3 FMA into the accumulators, 1 for
# the rsqrt's operand) plus 1 MUFU rsqrt. FP32 issue: 132 SMs x 128 lanes x 1.98 GHz = 3.35e13
# instr/s, / 12 = 2.8e12 interactions/s (H200 and H100 SXM); MUFU (16/SM/clock = 4.2e12/s) does
# not bind. FP64 has 64 lanes per SM: 1.4e12, before the software rsqrt that double needs.
# pair_bound() computes it from this GPU's SM count and clock.
BOUND_TEXT = ("12 FP32 instr + 1 MUFU rsqrt per interaction: SMs x 128 lanes x clock / 12 "
              "(H200: 132 x 128 x 1.98 GHz / 12 = 2.8e12/s; fp64: 64 lanes/SM, 1.4e12/s)")

# Nominal HBM bandwidth, for context only: the bandwidth target uses the copy measured in the run.
NOMINAL_HBM = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12))

UNITS = {
    "pair_interactions_per_s": "pairs/s",
    "system_steps_per_s": "sys-steps/s",
    "bytes_per_s": "B/s",
    "backward_over_forward": "x fwd",
}


@dataclass(frozen=True)
class Case:
    """One measurement: an op on one backend at one size."""

    kind: str  # acceleration | step | step1 | energy_grad | copy | rebound
    backend: str
    dtype: str = "float32"
    N: int = 2
    B: int = 1
    D: int = 3
    steps: int = 1
    integrator: str = "leapfrog"
    wrt: str = "dt"  # energy_grad: "dt" or "dt,state"
    checked: bool = False  # step1: run with the value checks on
    raw: bool = False  # step1: call the backend's kernel directly (no ops layer, outputs preallocated)
    nbytes: int = 0  # copy
    note: str = ""

    def params(self, device: torch.device, threads: Optional[int]) -> dict:
        p = {"device": device.type, "dtype": self.dtype, "N": self.N, "B": self.B, "D": self.D,
             "threads": threads}
        if self.kind in ("step", "step1", "energy_grad", "rebound"):
            p.update(steps=self.steps, integrator=self.integrator)
        if self.kind == "energy_grad":
            p["wrt"] = self.wrt
        if self.kind == "step1":
            p["checked"] = self.checked
            p["raw"] = self.raw
        if self.kind == "copy":
            p = {"device": device.type, "bytes": self.nbytes, "threads": threads}
        return p

    def label(self) -> str:
        if self.kind == "copy":
            return f"copy {self.nbytes / 2**20:.0f} MiB"
        parts = [f"{self.kind} {self.backend} {self.dtype} N={self.N} B={self.B}"]
        if self.kind in ("step", "step1", "energy_grad", "rebound"):
            parts.append(f"steps={self.steps}")
        return " ".join(parts)


# ------------------------------------------------------------------------------------------------
# plans: which cases each group runs


@dataclass(frozen=True)
class Sizes:
    acc_N: int
    small_B: int
    step3_B: int
    step3_steps: int
    step64_B: int
    step64_steps: int
    grad_B: int
    grad_steps: int


# N = 64 runs 100 fused steps per call, like the long REBOUND integration it is compared with:
# each call starts with one extra force evaluation, which at 10 steps per call is 10%.
CPU_FULL = Sizes(acc_N=4096, small_B=1024, step3_B=4096, step3_steps=100, step64_B=64,
                 step64_steps=100, grad_B=4096, grad_steps=10)
CPU_QUICK = Sizes(acc_N=1024, small_B=128, step3_B=512, step3_steps=20, step64_B=16,
                  step64_steps=4, grad_B=512, grad_steps=5)


def cpu_plan(threads: int, quick: bool, rebound: bool) -> list[Case]:
    s = CPU_QUICK if quick else CPU_FULL
    plan = [
        Case("acceleration", b, "float32", N=s.acc_N, B=1) for b in ("reference", "cpu")
    ] + [
        Case("acceleration", b, "float32", N=64, B=s.small_B) for b in ("reference", "cpu")
    ]
    if threads == 1:
        plan += [Case("acceleration", b, "float64", N=64, B=s.small_B) for b in ("reference", "cpu")]
        plan += [Case("step", b, "float64", N=3, B=s.step3_B, steps=s.step3_steps)
                 for b in ("reference", "cpu")]
        plan += [Case("step", "cpu", "float64", N=3, B=s.step3_B, steps=s.step3_steps // 3 or 1,
                      integrator="yoshida4")]
        plan += [Case("step", b, "float64", N=64, B=s.step64_B, steps=s.step64_steps)
                 for b in ("reference", "cpu")]
        plan += [Case("energy_grad", b, "float64", N=3, B=s.grad_B, steps=s.grad_steps)
                 for b in ("reference", "cpu")]
        if rebound:
            plan += [Case("rebound", "rebound", "float64", N=3, B=1, steps=100),
                     Case("rebound", "rebound", "float64", N=64, B=1, steps=100)]
    else:
        plan += [Case("step", "cpu", "float64", N=64, B=s.step64_B, steps=s.step64_steps)]
    return plan


def gpu_plan(quick: bool, dry: bool) -> list[Case]:
    """The GPU cases. `dry` shrinks everything so the same code runs on the CPU in seconds."""
    if dry:
        # Interpreted Triton costs milliseconds per program and tile: keep every grid tiny.
        acc_Ns, ref_N, copy_bytes = (128,), 64, 64 * 2**20
        b4, s4, b64, s64, ref_b4, ref_b64, grad_b4, grad_b64 = 16, 2, 2, 1, 16, 2, 16, 2
        ref_s4, ref_s64, grad_steps = 2, 1, 2
    elif quick:
        acc_Ns, ref_N, copy_bytes = (65536,), 8192, 2**30
        b4, s4, b64, s64, ref_b4, ref_b64, grad_b4, grad_b64 = 2**18, 100, 4096, 100, 2**16, 1024, 2**18, 4096
        ref_s4, ref_s64, grad_steps = 10, 5, 10
    else:
        acc_Ns, ref_N, copy_bytes = (131072, 262144), 16384, 2**30
        b4, s4, b64, s64, ref_b4, ref_b64, grad_b4, grad_b64 = 2**20, 100, 16384, 100, 2**20, 16384, 2**20, 16384
        ref_s4, ref_s64, grad_steps = 10, 5, 10
    # Order: what the targets need first, then the reference rows, then diagnostics, so that a
    # run short of time loses the least important cases (each group stops at its budget).
    gpus = ("cuda", "triton")
    plan = [Case("copy", "torch", nbytes=copy_bytes, note="device-to-device copy: the bandwidth ceiling")]
    plan += [Case("acceleration", b, dtype, N=n, B=1)
             for dtype in ("float32", "float64") for n in acc_Ns for b in gpus]
    plan += [Case("step", b, "float32", N=n, B=B, steps=k) for n, B, k in ((4, b4, s4), (64, b64, s64))
             for b in gpus]
    plan += [Case("step1", b, "float32", N=4, B=b4, steps=1) for b in gpus]
    plan += [Case("energy_grad", b, "float32", N=n, B=B, steps=grad_steps, wrt="dt,state")
             for n, B in ((4, grad_b4), (64, grad_b64)) for b in gpus]

    fewer = "reference: fewer steps per call (the rate is per step)"
    plan += [Case("acceleration", "reference", dtype, N=ref_N, B=1,
                  note=f"reference stores N x N pair tensors: measured at N={ref_N}")
             for dtype in ("float32", "float64")]
    plan += [Case("step", "reference", "float32", N=4, B=ref_b4, steps=ref_s4, note=fewer),
             Case("step", "reference", "float32", N=64, B=ref_b64, steps=ref_s64, note=fewer),
             Case("step1", "reference", "float32", N=4, B=b4, steps=1)]
    plan += [Case("energy_grad", "reference", "float32", N=n, B=B if dry else max(1, B // 8),
                  steps=grad_steps, wrt="dt,state",
                  note="reference at B/8: its autograd keeps N x N tensors for every step")
             for n, B in ((4, grad_b4), (64, grad_b64))]

    plan += [Case("step1", b, "float32", N=4, B=b4, steps=1, raw=True,
                  note="the kernel alone: no ops layer, outputs preallocated") for b in gpus]
    plan += [Case("step1", "cuda", "float32", N=4, B=b4, steps=1, checked=True,
                  note="value checks on: what validation costs per call")]
    return plan


# ------------------------------------------------------------------------------------------------
# inputs


DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class State:
    pos: torch.Tensor  # [B, N, D]
    vel: torch.Tensor  # [B, N, D]
    mass: torch.Tensor  # [B, N]
    dt: torch.Tensor  # [B]


def make_state(B: int, N: int, D: int, dtype: str, device: torch.device, seed: int) -> State:
    """Bound-ish random systems: unit total mass, positions ~ N(0, 1), speeds ~ 0.3.

    Drawn in float64 on the CPU from a fixed seed, so every backend and dtype sees the same
    systems; never zeros (zeros would time a different code path than real data).
    """
    g = torch.Generator().manual_seed(12345 + seed)
    pos = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    vel = 0.3 * torch.randn(B, N, D, generator=g, dtype=torch.float64)
    mass = (0.5 + torch.rand(B, N, generator=g, dtype=torch.float64)) / N
    dt = torch.full((B,), 1e-3, dtype=torch.float64)
    t = DTYPES[dtype]
    return State(*(x.to(device=device, dtype=t) for x in (pos, vel, mass, dt)))


def _itemsize(dtype: str) -> int:
    return torch.empty((), dtype=DTYPES[dtype]).element_size()


def _substeps(integrator: str) -> int:
    from aitimestepper.physics.integrators import substep_weights

    return len(substep_weights(integrator))


# ------------------------------------------------------------------------------------------------
# the measurements


@dataclass
class Context:
    device: torch.device
    threads: Optional[int]
    budget_s: float
    dry: bool
    copy_bytes_per_s: Optional[float] = None

    def measure(self, fn: Callable[..., Any], *, share: float = 1.0, **kw: Any) -> h.Timing:
        """harness.measure on this context's device and budget; a dry run only checks the code
        path (interpreted Triton takes seconds per call), so it times each case twice."""
        kw.setdefault("device", self.device)
        kw.setdefault("budget_s", self.budget_s * share)
        if self.dry:
            kw.update(warmup=1, repeats=2, min_repeats=2)
        return h.measure(fn, **kw)


def pair_bound(device: torch.device, dtype: str) -> Optional[float]:
    """FP32 lanes x clock / 12 instructions per interaction (half the lanes for FP64)."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_hz = (getattr(props, "clock_rate", 0) or 1_980_000) * 1e3  # kHz; H100/H200 boost if absent
    lanes = 128 if dtype == "float32" else 64
    return props.multi_processor_count * lanes * clock_hz / 12


def nominal_hbm(device: torch.device) -> Optional[float]:
    """Datasheet-style bandwidth (2 transfers per memory clock x bus width), for context only."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8
    name = torch.cuda.get_device_name(device)
    for key, value in NOMINAL_HBM:
        if key in name:
            return value
    return None


Result = dict  # fields for ResultLog.append: timing, metrics, primary, notes


def run_copy(case: Case, ctx: Context) -> list[Result]:
    n = case.nbytes // 4
    src = torch.randn(n, device=ctx.device)
    dst = torch.empty_like(src)
    timing = ctx.measure(lambda: dst.copy_(src))
    rate = 2 * n * 4 / timing.median_s  # bytes read + bytes written
    ctx.copy_bytes_per_s = rate
    metrics = {"bytes_per_s": rate, "bytes_per_call": 2 * n * 4}
    if nominal_hbm(ctx.device):
        metrics["fraction_of_nominal_hbm"] = rate / nominal_hbm(ctx.device)
    return [dict(timing=timing, metrics=metrics, primary="bytes_per_s", notes=[case.note])]


def run_acceleration(case: Case, ctx: Context) -> list[Result]:
    from aitimestepper import ops

    set_bytes = case.B * case.N * (case.D + 1) * _itemsize(case.dtype)
    sets = h.Rotation(lambda i: make_state(case.B, case.N, case.D, case.dtype, ctx.device, i),
                      set_bytes, ctx.device)

    def call() -> None:
        s = sets.next()
        ops.acceleration(s.pos, s.mass, backend=case.backend)

    with ops.unchecked():
        timing = ctx.measure(call)
    pairs = case.B * case.N * (case.N - 1)
    rate = pairs / timing.median_s
    metrics = {"pair_interactions_per_s": rate, "gflops": PAIR_FLOPS * rate / 1e9,
               "pairs_per_call": pairs}
    notes = [n for n in (case.note, f"inputs rotated over {sets.count} copies") if n]
    bound = pair_bound(ctx.device, case.dtype)
    if bound:
        metrics["pair_bound"] = bound
        metrics["fraction_of_bound"] = rate / bound
        notes.append("bound: " + BOUND_TEXT)
    return [dict(timing=timing, metrics=metrics, primary="pair_interactions_per_s", notes=notes)]


def _step_metrics(case: Case, seconds: float) -> dict:
    system_steps = case.B * case.steps
    pairs = system_steps * _substeps(case.integrator) * case.N * (case.N - 1)
    return {"system_steps_per_s": system_steps / seconds, "pair_interactions_per_s": pairs / seconds,
            "gflops": PAIR_FLOPS * pairs / seconds / 1e9}


def run_step(case: Case, ctx: Context) -> list[Result]:
    from aitimestepper import ops

    item = _itemsize(case.dtype)
    set_bytes = case.B * (2 * case.N * case.D + case.N + 1) * item
    sets = h.Rotation(lambda i: make_state(case.B, case.N, case.D, case.dtype, ctx.device, i),
                      set_bytes, ctx.device)

    def call() -> None:
        s = sets.next()
        ops.step(s.pos, s.vel, s.mass, s.dt, steps=case.steps, integrator=case.integrator,
                 backend=case.backend)

    if case.raw:
        from aitimestepper.ops.backends import kernels
        from aitimestepper.ops.validate import check_integrator, physics_tuple

        kernel = kernels(case.backend)
        physics = physics_tuple(1.0, 0.0, None, case.D)
        integrator = check_integrator(case.integrator)
        out_pos = torch.empty(case.B, case.N, case.D, dtype=DTYPES[case.dtype], device=ctx.device)
        out_vel = torch.empty_like(out_pos)

        def call() -> None:  # noqa: F811 - the raw variant replaces the ops call
            s = sets.next()
            kernel.step(s.pos, s.vel, s.mass, s.dt, out_pos, out_vel, None, case.steps, integrator, physics)

    if case.checked:
        timing = ctx.measure(call)
    else:
        with ops.unchecked():
            timing = ctx.measure(call)
    metrics = _step_metrics(case, timing.median_s)
    notes = [n for n in (case.note, f"inputs rotated over {sets.count} copies") if n]
    primary = "system_steps_per_s"
    bound = pair_bound(ctx.device, case.dtype)
    if bound:
        metrics["fraction_of_pair_bound"] = metrics["pair_interactions_per_s"] / bound
    if case.kind == "step1":
        # The fewest bytes one step can move: read pos, vel, mass, dt; write pos, vel.
        moved = case.B * (4 * case.N * case.D + case.N + 1) * item
        metrics["bytes_per_call"] = moved
        metrics["bytes_per_s"] = moved / timing.median_s
        if ctx.copy_bytes_per_s:
            metrics["copy_bytes_per_s"] = ctx.copy_bytes_per_s
            metrics["fraction_of_copy"] = metrics["bytes_per_s"] / ctx.copy_bytes_per_s
        if nominal_hbm(ctx.device):
            metrics["fraction_of_nominal_hbm"] = metrics["bytes_per_s"] / nominal_hbm(ctx.device)
        notes.append("bytes = B (4 N D + N + 1) x itemsize: read pos, vel, mass, dt; write pos, vel")
        primary = "bytes_per_s"
    return [dict(timing=timing, metrics=metrics, primary=primary, notes=notes)]


def run_energy_grad(case: Case, ctx: Context) -> list[Result]:
    """Three rows: forward without grad, forward with grad (trajectory saved), backward."""
    from aitimestepper import ops

    s = make_state(case.B, case.N, case.D, case.dtype, ctx.device, 0)
    with torch.no_grad():
        e0 = ops.total_energy(s.pos, s.vel, s.mass, backend=case.backend)
    wrt_state = "state" in case.wrt
    leaves = {"dt": s.dt.clone().requires_grad_()}
    if wrt_state:
        leaves["pos"] = s.pos.clone().requires_grad_()
        leaves["vel"] = s.vel.clone().requires_grad_()

    def energy_error() -> torch.Tensor:
        pos, vel = leaves.get("pos", s.pos), leaves.get("vel", s.vel)
        p1, v1 = ops.step(pos, vel, s.mass, leaves["dt"], steps=case.steps,
                          integrator=case.integrator, backend=case.backend)
        e1 = ops.total_energy(p1, v1, s.mass, backend=case.backend)
        return ((e1 - e0) / e0).abs().sum()

    def no_grad_forward() -> None:
        with torch.no_grad():
            energy_error()

    def fresh_forward() -> torch.Tensor:
        for leaf in leaves.values():
            leaf.grad = None
        return energy_error()

    with ops.unchecked():
        plain = ctx.measure(no_grad_forward, share=1 / 3)
        forward = ctx.measure(energy_error, share=1 / 3)
        backward = ctx.measure(lambda loss: loss.backward(), setup=fresh_forward, share=1 / 3, warmup=1)
    if not torch.isfinite(leaves["dt"].grad).all():
        raise RuntimeError("the gradient with respect to dt is not finite")
    note = [case.note] if case.note else []
    wrt = f"d/d({case.wrt}) of sum |E1 - E0| / |E0|"
    return [
        dict(case_suffix="forward_nograd", timing=plain, metrics=_step_metrics(case, plain.median_s),
             primary="system_steps_per_s", notes=note + ["step + total_energy under no_grad"]),
        dict(case_suffix="forward", timing=forward, metrics=_step_metrics(case, forward.median_s),
             primary="system_steps_per_s", notes=note + ["step with grad (trajectory saved) + total_energy"]),
        dict(case_suffix="backward", timing=backward,
             metrics={"backward_over_forward": backward.median_s / forward.median_s,
                      "backward_over_nograd_forward": backward.median_s / plain.median_s,
                      "forward_s": forward.median_s, "forward_nograd_s": plain.median_s},
             primary="backward_over_forward", notes=note + [wrt]),
    ]


def run_rebound(case: Case, ctx: Context) -> list[Result]:
    import rebound

    s = make_state(1, case.N, case.D, "float64", torch.device("cpu"), 0)
    sim = rebound.Simulation()
    sim.G = 1.0
    for m, x, v in zip(s.mass[0].tolist(), s.pos[0].tolist(), s.vel[0].tolist()):
        sim.add(m=m, x=x[0], y=x[1], z=x[2], vx=v[0], vy=v[1], vz=v[2])
    sim.integrator = "leapfrog"
    sim.dt = 1e-3
    chunk = case.steps

    def advance() -> None:
        if hasattr(sim, "steps"):
            sim.steps(chunk)
        else:  # older REBOUND: integrate to a time that is a whole number of fixed steps away
            sim.integrate(sim.t + chunk * sim.dt, exact_finish_time=0)

    timing = ctx.measure(advance, device="cpu")
    metrics = _step_metrics(case, timing.median_s)
    notes = [f"REBOUND {rebound.__version__} leapfrog, gravity={sim.gravity}, fixed dt, one system, "
             f"{chunk} steps per call; interactions counted as N(N-1) ordered pairs per step, as for ours"]
    return [dict(timing=timing, metrics=metrics, primary="system_steps_per_s", notes=notes)]


RUNNERS: dict[str, Callable[[Case, Context], list[Result]]] = {
    "copy": run_copy,
    "acceleration": run_acceleration,
    "step": run_step,
    "step1": run_step,
    "energy_grad": run_energy_grad,
    "rebound": run_rebound,
}


# ------------------------------------------------------------------------------------------------
# a worker: one group of cases in this process


# Threads per group (None: left alone). The dry run uses one thread: it checks code paths, and on
# a shared 2-core machine a second OpenMP thread mostly waits at barriers for a busy core.
GROUPS = {"cpu-2t": 2, "cpu-1t": 1, "gpu": None, "gpu-dry": 1}


def _set_threads(threads: Optional[int]) -> list[str]:
    """Set torch's pool; OMP_NUM_THREADS was set by the parent. Returns notes on any mismatch."""
    notes = []
    if threads is None:
        return notes
    torch.set_num_threads(threads)
    info = h.thread_info()
    if info["torch_num_threads"] != threads:
        notes.append(f"torch reports {info['torch_num_threads']} threads, asked {threads}")
    if info.get("OMP_NUM_THREADS") != str(threads):
        notes.append(f"OMP_NUM_THREADS={info.get('OMP_NUM_THREADS')}, asked {threads}")
    core = info.get("core_openmp_max_threads")
    if core is not None and core != threads:
        notes.append(f"_core's OpenMP reports {core} threads, asked {threads}")
    return notes


def run_worker(group: str, args: argparse.Namespace) -> int:
    from aitimestepper import backends

    threads = GROUPS[group]
    thread_notes = _set_threads(threads)
    for note in thread_notes:
        print(f"[{group}] WARNING: {note}", file=sys.stderr)
    dry = group == "gpu-dry"
    if group == "gpu":
        device = torch.device("cuda")
        plan = gpu_plan(args.quick, dry=False)
    elif dry:
        device = torch.device("cpu")
        plan = gpu_plan(args.quick, dry=True)
    else:
        device = torch.device("cpu")
        plan = cpu_plan(threads, args.quick, rebound=not args.no_rebound)
    if dry:  # the GPU code path, with the CPU kernels standing in for the CUDA ones
        plan = [dataclasses.replace(c, backend="cpu") if c.backend == "cuda" else c for c in plan]
    if args.backends:
        wanted = set(args.backends.split(",")) | {"torch", "rebound"}
        plan = [c for c in plan if c.backend in wanted]
    if args.only:
        texts = [t for t in args.only.split(",") if t]
        plan = [c for c in plan if c.kind == "copy" or any(t in c.label() for t in texts)]

    available = set(backends())
    log = h.ResultLog(args.results, suite=SUITE, run_id=args.run_id, device=device)
    ctx = Context(device=device, threads=threads, budget_s=args.case_budget, dry=dry)
    deadline = time.monotonic() + args.budget
    for index, case in enumerate(plan):
        backend = case.backend
        notes = list(thread_notes)
        if dry and backend == "cpu":
            notes.append("dry run: cpu stands in for cuda")
        common = dict(backend=backend, params=case.params(device, threads), group=group,
                      label=case.label(), dry_run=dry)
        skip = None
        if backend not in available | {"torch", "rebound"}:
            skip = f"backend {backend!r} is not available here (available: {sorted(available)})"
        if case.kind == "rebound":
            try:
                import rebound  # noqa: F401
            except ImportError:
                skip = "REBOUND is not installed (pip install 'aitimestepper[bench]')"
        remaining = deadline - time.monotonic()
        if skip is None and remaining <= 0:
            skip = "time budget of this group used up"
        if skip is not None:
            print(f"[{group}] skip {case.label()}: {skip}", file=sys.stderr)
            log.append(case=case.kind, skipped=skip, notes=notes, **common)
            continue
        ctx.budget_s = min(args.case_budget, max(0.3, remaining / max(1, len(plan) - index) / 2))
        try:
            results = RUNNERS[case.kind](case, ctx)
        except Exception as error:  # one failing case must not hide the others
            message = f"{type(error).__name__}: {error}"
            print(f"[{group}] ERROR {case.label()}: {message}", file=sys.stderr)
            log.append(case=case.kind, error=message[:2000], notes=notes, **common)
            _release(device)
            continue
        for result in results:
            suffix = result.pop("case_suffix", None)
            result["notes"] = notes + [n for n in result.get("notes", []) if n]
            _add_cpu_normalized(result)
            row = log.append(case=case.kind + (f".{suffix}" if suffix else ""), **common, **result)
            value = row["metrics"].get(row["primary"])
            util = row["timing"].get("cpu_util")
            print(f"[{group}] {row['case']:<24} {case.label():<48} {h.si(value)} "
                  f"{UNITS.get(row['primary'], row['primary'])}  ({h.seconds(row['timing']['median_s'])}"
                  f"{'' if util is None else f', util {util:.2f}'})", file=sys.stderr)
        _release(device)
    return 0


RATES = ("pair_interactions_per_s", "system_steps_per_s", "bytes_per_s")


def _add_cpu_normalized(result: Result) -> None:
    """The rate per second of CPU time the process received (rate / util).

    On a shared machine a process may get a fraction of a core; for a one-thread row this
    estimates the rate on an idle core. (With several threads it undercounts: OpenMP threads
    that spin at a barrier burn CPU time too.)
    """
    timing, primary = result["timing"], result.get("primary")
    if timing.cpu_util and primary in RATES:
        result["metrics"]["rate_per_cpu_second"] = result["metrics"][primary] / timing.cpu_util


def _release(device: torch.device) -> None:
    """Give the memory of the last case back, so that a large case never fails for fragmentation."""
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.empty_cache()
        except RuntimeError:  # a sticky CUDA error: the next case reports it
            pass


# ------------------------------------------------------------------------------------------------
# the parent: run the groups, evaluate the targets, print the tables


def _matches(row: dict, case: str, backend: Optional[str], params: dict) -> bool:
    if row.get("case") != case or "timing" not in row or row.get("timing") is None:
        return False
    if backend is not None and row.get("backend") != backend:
        return False
    return all(row["params"].get(k) == v for k, v in params.items())


def find(rows: list[dict], case: str, backend: Optional[str] = None, **params: Any) -> Optional[dict]:
    for row in rows:
        if _matches(row, case, backend, params):
            return row
    return None


def metric(row: Optional[dict], name: str) -> Optional[float]:
    return None if row is None else row["metrics"].get(name)


def _missing(*named: tuple[str, Optional[dict]]) -> str:
    absent = [name for name, row in named if row is None]
    return ("not measured: " + ", ".join(absent)) if absent else ""


def _busy(row: Optional[dict], name: str) -> str:
    """A warning when the row's process got clearly less CPU than its threads could use, with
    the metric `name` per second of CPU time received (rate / util)."""
    if row is None or not row.get("timing") or row["timing"].get("cpu_util") is None:
        return ""
    util, threads = row["timing"]["cpu_util"], row["params"].get("threads") or 1
    if util >= 0.8 * threads:
        return ""
    return f"busy machine: util {util:.2f} of {threads} thread(s), rate/util {h.si(_per_cpu(row, name))}"


def _per_cpu(row: Optional[dict], name: str) -> Optional[float]:
    value = metric(row, name)
    util = (row or {}).get("timing", {}) or {}
    util = util.get("cpu_util")
    return value / util if value and util else None


def _normalized_ratio(ours: Optional[dict], theirs: Optional[dict], name: str) -> str:
    """ours / theirs, raw and with each rate divided by its own util (fairer when the load
    changed between the two measurements)."""
    raw = metric(ours, name) / metric(theirs, name) if metric(ours, name) and metric(theirs, name) else None
    a, b = _per_cpu(ours, name), _per_cpu(theirs, name)
    if raw is None:
        return ""
    return f"ours / REBOUND {raw:.3g}x" + (f" ({a / b:.3g}x per CPU-second)" if a and b else "")


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def cpu_targets(rows: list[dict], quick: bool) -> list[dict]:
    """Issue 2's targets for the 2-core machine, each from rows of this run."""
    s = CPU_QUICK if quick else CPU_FULL
    PAIRS, STEPS = "pair_interactions_per_s", "system_steps_per_s"
    out = []

    ours = find(rows, "step", "cpu", dtype="float64", N=3, B=s.step3_B, threads=1, integrator="leapfrog")
    theirs = find(rows, "rebound", "rebound", N=3)
    goal = 3 * metric(theirs, STEPS) if theirs else None
    note = _join(_missing(("cpu step", ours), ("REBOUND", theirs)), _busy(ours, STEPS),
                 _normalized_ratio(ours, theirs, STEPS))
    out.append(h.Target(f"step f64 N=3 B={s.step3_B} 1 thread vs 3x REBOUND", ">=", goal, "sys-steps/s")
               .evaluate(metric(ours, STEPS), note))

    acc2 = find(rows, "acceleration", "cpu", dtype="float32", N=s.acc_N, B=1, threads=2)
    ref2 = find(rows, "acceleration", "reference", dtype="float32", N=s.acc_N, B=1, threads=2)
    note = _join(_missing(("cpu acceleration", acc2)), _busy(acc2, PAIRS))
    out.append(h.Target(f"acceleration f32 N={s.acc_N} 2 threads", ">=", 2e9, "pairs/s")
               .evaluate(metric(acc2, PAIRS), note))
    rate, ref_rate = metric(acc2, PAIRS), metric(ref2, PAIRS)
    out.append(h.Target(f"acceleration f32 N={s.acc_N} 2 threads vs reference", ">=", 50.0, "x ref")
               .evaluate(rate / ref_rate if rate and ref_rate else None,
                         _missing(("cpu", acc2), ("reference", ref2))))

    ours64 = find(rows, "step", "cpu", dtype="float64", N=64, B=s.step64_B, threads=1)
    theirs64 = find(rows, "rebound", "rebound", N=64)
    goal = 5 * metric(theirs64, PAIRS) if theirs64 else None
    note = _join(_missing(("cpu step N=64", ours64), ("REBOUND N=64", theirs64)),
                 "leapfrog f64, 1 thread, N(N-1) pairs per step", _busy(ours64, PAIRS),
                 _normalized_ratio(ours64, theirs64, PAIRS))
    out.append(h.Target("N=64 pair rate per core vs 5x REBOUND", ">=", goal, "pairs/s")
               .evaluate(metric(ours64, PAIRS), note))

    bwd = find(rows, "energy_grad.backward", "cpu", N=3, B=s.grad_B, threads=1)
    note = _missing(("cpu energy grad", bwd)) or (
        f"vs no-grad forward: {h.si(metric(bwd, 'backward_over_nograd_forward'))}x")
    out.append(h.Target(f"energy-error backward / forward (dt, N=3 B={s.grad_B} {s.grad_steps} steps)",
                        "<=", 3.0, "x").evaluate(metric(bwd, "backward_over_forward"), note))
    return out


def gpu_targets(rows: list[dict], quick: bool, dry: bool) -> list[dict]:
    plan = gpu_plan(quick, dry)
    acc_Ns = sorted({c.N for c in plan if c.kind == "acceleration" and c.backend != "reference"})
    step4 = next(c for c in plan if c.kind == "step" and c.N == 4 and c.backend == "cuda")
    step64 = next(c for c in plan if c.kind == "step" and c.N == 64 and c.backend == "cuda")
    b4 = step4.B
    backends = ("cpu", "triton") if dry else ("cuda", "triton")
    out = []
    acc_goal = {("cuda", "float32"): 2.2e12, ("triton", "float32"): 1.2e12, ("cuda", "float64"): 0.5e12,
                ("cpu", "float32"): 2.2e12, ("cpu", "float64"): 0.5e12}
    for (backend, dtype), goal in acc_goal.items():
        if backend not in backends:
            continue
        for n in acc_Ns:
            row = find(rows, "acceleration", backend, dtype=dtype, N=n, B=1)
            frac = metric(row, "fraction_of_bound")
            note = f"{100 * frac:.0f}% of the 12-instruction bound" if frac else _missing((backend, row))
            out.append(h.Target(f"acceleration {backend} {dtype[5:]}-bit N={n}", ">=", goal, "pairs/s")
                       .evaluate(metric(row, "pair_interactions_per_s"), note))
    for backend in backends:
        for case, goal in ((step4, 8e10), (step64, 3e8)):
            row = find(rows, "step", backend, dtype="float32", N=case.N, B=case.B, steps=case.steps)
            frac = metric(row, "fraction_of_pair_bound")
            note = f"{100 * frac:.1f}% of the pair bound" if frac else _missing((backend, row))
            out.append(h.Target(f"step {backend} N={case.N} B={case.B} {case.steps} fused steps",
                                ">=", goal, "sys-steps/s").evaluate(metric(row, "system_steps_per_s"), note))
    for backend in backends:
        row = find(rows, "step1", backend, N=4, B=b4, checked=False, raw=False)
        raw = find(rows, "step1", backend, N=4, B=b4, checked=False, raw=True)
        bw = metric(row, "bytes_per_s")
        note = (f"{h.si(bw)} B/s vs copy {h.si(metric(row, 'copy_bytes_per_s'))} B/s; kernel alone "
                f"{h.si(metric(raw, 'fraction_of_copy'))}" if bw else _missing((backend, row)))
        out.append(h.Target(f"one step {backend} N=4 B={b4}: share of copy bandwidth", ">=", 0.7, "")
                   .evaluate(metric(row, "fraction_of_copy"), note))
    for backend in backends:
        for n in (4, 64):
            row = find(rows, "energy_grad.backward", backend, N=n)
            note = (f"vs no-grad forward {h.si(metric(row, 'backward_over_nograd_forward'))}x" if row
                    else _missing((backend, row)))
            out.append(h.Target(f"energy-error backward / forward {backend} N={n} (dt, state)", "<=", 3.0, "x")
                       .evaluate(metric(row, "backward_over_forward"), note))
    return out


def _vs_reference(row: dict, rows: list[dict]) -> Optional[str]:
    """The primary metric over the reference backend's, same case and sizes ('~' = other sizes)."""
    if row.get("backend") in (None, "reference", "torch", "rebound") or not row.get("primary"):
        return None
    if row["primary"] not in ("pair_interactions_per_s", "system_steps_per_s", "bytes_per_s"):
        return None
    p = row["params"]
    exact = {k: p.get(k) for k in ("dtype", "N", "B", "threads", "steps", "integrator")}
    loose = {k: p.get(k) for k in ("dtype", "threads", "integrator")}
    if row["case"] != "acceleration":
        loose["N"] = p.get("N")
    for params, mark in ((exact, ""), (loose, "~")):
        params = {k: v for k, v in params.items() if v is not None or k == "threads"}
        ref = find(rows, row["case"], "reference", **params)
        if ref and metric(ref, row["primary"]):
            return f"{mark}{row['metrics'][row['primary']] / ref['metrics'][row['primary']]:.3g}x"
    return None


def table_columns(rows: list[dict]) -> list[tuple[str, Callable[[dict], Any]]]:
    def util(r: dict) -> Optional[str]:
        t = r.get("timing") or {}
        return None if t.get("cpu_util") is None else f"{t['cpu_util']:.2f}"

    return [
        ("case", lambda r: r["case"] + (" checked" if r["params"].get("checked") else "")
         + (" raw" if r["params"].get("raw") else "")),
        ("backend", lambda r: r.get("backend")),
        ("dtype", lambda r: "f" + r["params"]["dtype"][5:] if r["params"].get("dtype") else None),
        ("N", lambda r: r["params"].get("N")),
        ("B", lambda r: r["params"].get("B")),
        ("steps", lambda r: r["params"].get("steps")),
        ("thr", lambda r: r["params"].get("threads")),
        ("time", lambda r: h.seconds(r["timing"]["median_s"]) if r.get("timing")
         else ("SKIP" if r.get("skipped") else "ERROR")),
        ("IQR", lambda r: f"{100 * r['timing']['iqr_rel']:.0f}%" if r.get("timing") else None),
        ("util", util),
        ("value", lambda r: h.si(r["metrics"].get(r["primary"])) if r.get("primary") else None),
        ("/util", lambda r: h.si(r["metrics"].get("rate_per_cpu_second"))),
        ("unit", lambda r: UNITS.get(r.get("primary"), r.get("primary"))),
        ("vs ref", lambda r: _vs_reference(r, rows)),
    ]


def _child_env(threads: Optional[int]) -> dict:
    import site

    env = dict(os.environ)
    # The child must import the same aitimestepper as this process. A source checkout on
    # sys.path (PYTHONPATH, editable install) is passed on; site-packages is not, since putting
    # it on PYTHONPATH would rank it above the standard library.
    package_parent = str(Path(__file__).resolve().parents[2])  # the folder holding aitimestepper/
    site_dirs = {str(Path(d).resolve()) for d in [*site.getsitepackages(), site.getusersitepackages()]}
    if package_parent not in site_dirs:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
    return env


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/bench_kernels.py",
        description="Kernel benchmark: acceleration and step per backend, beside the reference and REBOUND. "
                    "Pair rates count ordered pairs i != j: N (N - 1) per system and force evaluation.")
    p.add_argument("--suite", choices=("auto", "cpu", "gpu", "all"), default="auto",
                   help="auto: the CPU suite, plus the GPU suite when CUDA is available")
    p.add_argument("--quick", action="store_true", help="smaller sizes (smoke test; not the target sizes)")
    p.add_argument("--dry-run", action="store_true",
                   help="run the GPU suite's code on the CPU at tiny sizes (cpu stands in for cuda)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for kernels.jsonl and kernels-table.txt (default: bench/results/local)")
    p.add_argument("--budget", type=float, default=900.0, help="seconds for everything (each group stops in time)")
    p.add_argument("--case-budget", type=float, default=None,
                   help="seconds of timed repeats per case (default 3 on the CPU, 2 on a GPU)")
    p.add_argument("--backends", default="", help="comma-separated subset of backends to run")
    p.add_argument("--only", default="", metavar="TEXT[,TEXT...]",
                   help="run only the cases whose label contains one of these (e.g. 'energy_grad triton')")
    p.add_argument("--no-rebound", action="store_true", help="skip REBOUND")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--worker", choices=sorted(GROUPS), help=argparse.SUPPRESS)
    p.add_argument("--results", help=argparse.SUPPRESS)
    p.add_argument("--run-id", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.case_budget is None:
        args.case_budget = 2.0 if args.worker == "gpu" or args.suite == "gpu" else 3.0
    if args.worker:
        return run_worker(args.worker, args)

    cuda = torch.cuda.is_available()
    groups: list[str] = []
    if args.suite in ("cpu", "all") or (args.suite == "auto" and not args.dry_run):
        groups += ["cpu-2t", "cpu-1t"]
    if args.suite in ("gpu", "all") or args.suite == "auto":
        if args.dry_run:
            groups.append("gpu-dry")
        elif cuda:
            groups.append("gpu")
        elif args.suite != "auto":
            print("GPU suite: no CUDA device here, skipped (--dry-run runs its code on the CPU)")

    out_dir = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / "local"
    name = "kernels" + ("-dryrun" if args.dry_run else "-quick" if args.quick else "")
    results = out_dir / f"{name}.jsonl"
    run_id = h.new_run_id()
    print(f"kernel benchmark run {run_id}: groups {groups}; rows -> {results}", flush=True)
    started = time.monotonic()
    failures = []
    for group in groups:
        remaining = args.budget - (time.monotonic() - started)
        if remaining <= 5:
            print(f"[{group}] not run: the time budget is used up", flush=True)
            failures.append(group)
            continue
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", group,
                   "--results", str(results), "--run-id", run_id, "--budget", f"{remaining - 5:.0f}",
                   "--case-budget", str(args.case_budget)]
        if args.quick:
            command.append("--quick")
        if args.no_rebound:
            command.append("--no-rebound")
        if args.backends:
            command += ["--backends", args.backends]
        if args.only:
            command += ["--only", args.only]
        try:
            done = subprocess.run(command, env=_child_env(GROUPS[group]), timeout=remaining + 30)
            if done.returncode != 0:
                print(f"[{group}] worker exited with {done.returncode}", flush=True)
                failures.append(group)
        except subprocess.TimeoutExpired:
            print(f"[{group}] worker killed after the time budget", flush=True)
            failures.append(group)

    rows = h.read_rows(results, run_id)
    log = h.ResultLog(results, suite=SUITE, run_id=run_id)
    targets = []
    if any(g.startswith("cpu") for g in groups):
        targets += cpu_targets(rows, args.quick)
    if "gpu" in groups:
        targets += gpu_targets(rows, args.quick, dry=False)
    if "gpu-dry" in groups:
        targets += gpu_targets(rows, args.quick, dry=True)
    note = []
    if args.quick or args.dry_run:
        note.append("quick/dry sizes: not the sizes the targets name")
    target_rows = [log.append_target(t, notes=note, device="cuda" if "gpu" in groups else "cpu")
                   for t in targets]

    measured = [r for r in rows if r["case"] != "target"]
    prov = rows[0]["provenance"] if rows else h.provenance("cpu")
    header = (f"run {run_id}  commit {prov.get('commit', '?')[:12]}{'+dirty' if prov.get('dirty') else ''}  "
              f"torch {prov['versions'].get('torch')}  triton {prov['versions'].get('triton')}  "
              f"load {prov.get('loadavg')}")
    devices = sorted({r["provenance"]["device_name"] for r in measured})
    text = "\n".join([
        header,
        "devices: " + "; ".join(devices),
        "",
        "pair rates count ordered pairs i != j: N (N - 1) per system and force evaluation",
        h.format_table(measured, table_columns(measured)),
        "",
        h.format_table(target_rows, h.TARGET_COLUMNS) if target_rows else "(no targets evaluated)",
    ])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}-table.txt").write_text(text + "\n")
    print()
    print(text, flush=True)
    missed = [t for t in targets if t["status"] == "MISS"]
    if failures:
        return 2
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
