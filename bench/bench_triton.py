"""Throughput of the Triton kernels: pair interactions per second for the all-pairs kernels and
system-steps per second for the fused integrator, beside the PyTorch reference in the same run.

    python bench/bench_triton.py [--quick] [--out bench/results/local/triton.jsonl] [--only NAME ...]

Timing, provenance and the row schema come from the repository's one harness (bench/harness.py):
warm-up calls (which also compile and autotune), device synchronization, median and spread over
repeats. Pair interactions count ordered pairs i != j, N (N - 1) per system and force
evaluation, as bench/bench_kernels.py does; GFLOP/s uses 20 flops per interaction. The targets
are those the Triton backend was built to (float32, on a 132-SM GPU).
--quick shrinks every size so that the script runs under TRITON_INTERPRET=1 on a CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import harness as h  # noqa: E402
from aitimestepper.ops import reference  # noqa: E402
from aitimestepper.ops import triton as tk  # noqa: E402
from aitimestepper.ops.triton import fused, pairwise  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PHYSICS = (1.0, 0.01, 0.0, 0.0, 0.0, 0.0)  # G, softening, no field
TARGETS = {  # measurement name -> the goal in float32
    "acceleration": h.Target("Triton acceleration, N = 131072", ">=", 1.2e12, "pair interactions/s"),
    "step_n4": h.Target("Triton fused step, N = 4, B = 2^20, 100 steps", ">=", 8e10, "system-steps/s"),
    "step_n64": h.Target("Triton fused step, N = 64, B = 16384", ">=", 3e8, "system-steps/s"),
}


def timeit(fn, repeats: int) -> dict:
    timing = h.measure(fn, device=DEVICE, repeats=repeats, min_repeats=min(3, repeats), budget_s=5.0)
    return {"timing": timing}


def _system(B, N, D, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    pos = torch.randn(B, N, D, generator=g, dtype=dtype).to(DEVICE)
    vel = (0.1 * torch.randn(B, N, D, generator=g, dtype=dtype)).to(DEVICE)
    mass = torch.full((B, N), 1.0 / N, dtype=dtype, device=DEVICE)
    dt = torch.full((B,), 1e-3, dtype=dtype, device=DEVICE)
    return pos, vel, mass, dt


def bench_pairwise(kind, B, N, D, dtype, repeats):
    pos, vel, mass, _ = _system(B, N, D, dtype)
    out = torch.empty_like(pos)
    energy = torch.empty(B, dtype=dtype, device=DEVICE)
    fn = {
        "acceleration": lambda: tk.acceleration(pos, mass, out, PHYSICS),
        "potential": lambda: tk.potential_energy(pos, mass, energy, PHYSICS),
        "vjp": lambda: tk.acceleration_vjp(pos, mass, vel, out, PHYSICS),
    }[kind]
    r = timeit(fn, repeats)
    rate = B * N * (N - 1) / r["timing"].median_s
    r["metrics"] = {"pair_interactions_per_s": rate, "gflops_at_20": 20 * rate / 1e9}
    r["primary"] = "pair_interactions_per_s"
    tuned = {"acceleration": "_acceleration_tuned", "potential": "_potential_tuned", "vjp": "_vjp_tuned"}[kind]
    if not pairwise._launch.INTERPRET and pairwise._AUTOTUNE:
        r["notes"] = [f"autotuned config: {getattr(pairwise, tuned).best_config}"]
    return r


def bench_pairwise_configs(B, N, D, dtype, repeats):
    """Every GPU tile configuration of the acceleration kernel, untuned: what autotune chooses from."""
    pos, _, mass, _ = _system(B, N, D, dtype)
    out = torch.empty_like(pos)
    phys = pairwise._launch.unpack_physics(PHYSICS)
    rows = {}
    for cfg in pairwise._GPU_CONFIGS:
        bi, bj, w = cfg.kwargs["BLOCK_I"], cfg.kwargs["BLOCK_J"], cfg.num_warps

        def run():
            pairwise._acceleration_kernel[(B, -(-N // bi))](pos, mass, out, N, *phys.scalars(), D=D,
                                                            HAS_FIELD=False, BLOCK_I=bi, BLOCK_J=bj, num_warps=w)

        rows[f"{bi}x{bj}w{w}"] = B * N * (N - 1) / timeit(run, repeats)["timing"].median_s
    best = max(rows, key=rows.get)
    return {"metrics": {"pair_interactions_per_s": rows[best], **{f"rate_{k}": v for k, v in rows.items()}},
            "primary": "pair_interactions_per_s", "notes": [f"best tile {best}"]}


def bench_step(B, N, D, dtype, steps, integrator, repeats, layout=None, trajectory=False):
    pos, vel, mass, dt = _system(B, N, D, dtype)
    out_pos, out_vel = torch.empty_like(pos), torch.empty_like(vel)
    index = {"leapfrog": 0, "yoshida4": 1}[integrator]
    S = steps * (3 if index else 1)
    traj = torch.empty((S + 1, 3, B, N, D), dtype=dtype, device=DEVICE) if trajectory else None
    if layout is None:
        fn = lambda: tk.step(pos, vel, mass, dt, out_pos, out_vel, traj, steps, index, PHYSICS)  # noqa: E731
    else:
        unroll, NP, block_b, warps = layout
        nsub, c = fused._weights3(index)
        phys = fused._launch.unpack_physics(PHYSICS)

        def fn():
            fused._step_kernel[(-(-B // block_b),)](
                pos, vel, mass, dt, out_pos, out_vel, traj if traj is not None else pos, B, steps,
                *phys.scalars(), *c, N=N, D=D, NP=NP, NSUB=nsub, UNROLL=unroll, HAS_FIELD=False,
                WRITE_TRAJECTORY=traj is not None, BLOCK_B=block_b, num_warps=warps)
    r = timeit(fn, repeats)
    t = r["timing"].median_s
    r["metrics"] = {"system_steps_per_s": B * steps / t,
                    "pair_interactions_per_s": B * steps * (3 if index else 1) * N * (N - 1) / t}
    r["primary"] = "system_steps_per_s"
    r["notes"] = [f"layout (UNROLL, N_PAD, BLOCK_B, num_warps) = {layout}" if layout else "default layout"]
    return r


def bench_step_backward(B, N, D, dtype, steps, integrator, repeats):
    pos, vel, mass, dt = _system(B, N, D, dtype)
    index = {"leapfrog": 0, "yoshida4": 1}[integrator]
    S = steps * (3 if index else 1)
    traj = torch.empty((S + 1, 3, B, N, D), dtype=dtype, device=DEVICE)
    tk.step(pos, vel, mass, dt, torch.empty_like(pos), torch.empty_like(vel), traj, steps, index, PHYSICS)
    outs = (torch.empty_like(pos), torch.empty_like(pos), torch.empty_like(dt))
    r = timeit(lambda: tk.step_backward(traj, mass, dt, vel, pos, *outs, steps, index, PHYSICS), repeats)
    r["metrics"] = {"system_steps_per_s": B * steps / r["timing"].median_s}
    r["primary"] = "system_steps_per_s"
    return r


def bench_reference_step(B, N, D, dtype, steps, repeats):
    pos, vel, mass, dt = _system(B, N, D, dtype)
    r = timeit(lambda: reference.step(pos, vel, mass, dt, steps=steps, softening=0.01), repeats)
    r["metrics"] = {"system_steps_per_s": B * steps / r["timing"].median_s}
    r["primary"] = "system_steps_per_s"
    return r


def plan(quick: bool):
    f32, f64 = torch.float32, torch.float64
    if quick:
        return [
            ("acceleration", bench_pairwise, ("acceleration", 1, 64, 3, f32, 2)),
            ("potential", bench_pairwise, ("potential", 1, 64, 3, f32, 2)),
            ("vjp", bench_pairwise, ("vjp", 1, 64, 3, f32, 2)),
            ("step_n4", bench_step, (64, 4, 3, f32, 2, "leapfrog", 2)),
            ("step_n64", bench_step, (2, 64, 3, f32, 2, "leapfrog", 2)),
            ("step_backward_n4", bench_step_backward, (64, 4, 3, f32, 2, "leapfrog", 2)),
            ("reference_step_n4", bench_reference_step, (64, 4, 3, f32, 2, 2)),
        ]
    big = 131072
    # Headline measurements first, so a time limit cuts the variants rather than the targets.
    return [
        ("step_n4", bench_step, (1 << 20, 4, 3, f32, 100, "leapfrog", 10)),
        ("acceleration", bench_pairwise, ("acceleration", 1, big, 3, f32, 10)),
        ("step_n64", bench_step, (16384, 64, 3, f32, 100, "leapfrog", 5)),
        ("reference_step_n4", bench_reference_step, (1 << 20, 4, 3, f32, 10, 3)),
        ("step_n4_b256w4", bench_step, (1 << 20, 4, 3, f32, 100, "leapfrog", 5, (True, 1, 256, 4))),
        ("step_n4_b64w2", bench_step, (1 << 20, 4, 3, f32, 100, "leapfrog", 5, (True, 1, 64, 2))),
        ("step_n64_w4", bench_step, (16384, 64, 3, f32, 100, "leapfrog", 3, (False, 64, 1, 4))),
        ("step_n4_yoshida", bench_step, (1 << 20, 4, 3, f32, 100, "yoshida4", 5)),
        ("acceleration_configs", bench_pairwise_configs, (1, big, 3, f32, 5)),
        ("vjp", bench_pairwise, ("vjp", 1, big, 3, f32, 10)),
        ("step_backward_n4", bench_step_backward, (1 << 18, 4, 3, f32, 20, "leapfrog", 3)),
        ("potential", bench_pairwise, ("potential", 1, big, 3, f32, 10)),
        ("acceleration_f64", bench_pairwise, ("acceleration", 1, 32768, 3, f64, 5)),
        ("step_n4_traj", bench_step, (1 << 18, 4, 3, f32, 20, "leapfrog", 5, None, True)),
        ("step_n64_w1", bench_step, (16384, 64, 3, f32, 100, "leapfrog", 3, (False, 64, 1, 1))),
        ("step_n32", bench_step, (32768, 32, 3, f32, 100, "leapfrog", 3)),
        ("step_n8", bench_step, (1 << 18, 8, 3, f32, 100, "leapfrog", 3)),
        ("step_n4_f64", bench_step, (1 << 18, 4, 3, f64, 100, "leapfrog", 3)),
        ("step_backward_n64", bench_step_backward, (4096, 64, 3, f32, 10, "leapfrog", 3)),
        ("reference_step_n64", bench_reference_step, (16384, 64, 3, f32, 2, 3)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for the interpreter)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "local" / "triton.jsonl"))
    parser.add_argument("--only", nargs="*", help="names of the measurements to run")
    args = parser.parse_args()
    ok, reason = tk.available()
    if not ok:
        sys.exit(f"Triton kernels unavailable: {reason}")
    log = h.ResultLog(args.out, suite="triton-quick" if args.quick else "triton", device=DEVICE)
    for name, fn, fargs in plan(args.quick):
        if args.only and name not in args.only:
            continue
        backend = "reference" if name.startswith("reference") else "triton"
        params = {"args": [str(a) for a in fargs], "device": DEVICE}
        try:
            result = fn(*fargs)
        except Exception as exc:  # one failing measurement must not lose the others
            log.append(case=name, backend=backend, params=params, error=f"{type(exc).__name__}: {exc}"[:500])
            print(f"{name}: ERROR {type(exc).__name__}: {exc}"[:300], flush=True)
            continue
        row = log.append(case=name, backend=backend, params=params, **result)
        value = row["metrics"][row["primary"]]
        print(f"{name}: {row['primary']} = {value:.3e}  (median {result['timing'].median_s:.3e} s)", flush=True)
        if name in TARGETS and not args.quick:
            target = log.append_target(TARGETS[name].evaluate(value))["target"]
            print(f"  target {target['name']}: {target['direction']} {target['threshold']:.2e} -> {target['status']}")


if __name__ == "__main__":
    main()
