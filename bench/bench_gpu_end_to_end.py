#!/usr/bin/env python3
"""The main job on a GPU, end to end, each figure beside its parts measured in the same run
(issue 15). Cases, on each device asked for (`--devices`, default cuda where usable, else cpu):

- `ensemble`: learned-dt simulation (`ml`, symmetric rule) of B systems, quickstart network
  [64, 64], N = 3, D = 2, float32, B = 65536: system-steps/s, against the bound set by the
  network's forward alone plus the fused single step (`ops.step`, steps=1) alone on the same
  batch, B / (t_forward + t_step). Target: >= 50% of the bound, and >= 100x the same ensemble on
  the 2-core CPU (its row: `bench/results/cpu-2core.jsonl`, from this script with
  `--devices cpu --cases ensemble`). Measured three ways: the CUDA graphs (the default), the
  step-by-step loop, and the graphs with `--compile` (features + network compiled by
  torch.compile); the targets take the faster of the first and the last, as the issue says.
- `single`: one system, the same network, time per learned step against the bare network
  forward (one row, eager) on the device; launches per step (torch.profiler: kernels per step,
  and host launches per step with the graphs). Target: <= 3x the forward.
- `training`: one retrain iteration (the gate + one Adam step, as Part 1 runs it on a failing
  orbit) against the network's own forward + backward + Adam, default network, float64 and
  float32 (target <= 1.25x); and the small network [64, 64], N = 3, 64 orbits: time per retrain
  iteration (beside the same case on the CPU when `cpu` is among the devices).

Simulation times per step come from the difference of two runs of different length (the
slope): a run's set-up and its CUDA graph capture (tens of ms) are outside the figure, and
reported as `run_overhead_s`. On CUDA every timed call ends with a device synchronization (the
retrain iteration has its own: the accept decision), so the network-only baseline gets one too.

`--quick` runs tiny sizes (B = 64 ensembles, short budgets): the no-GPU dry check runs the
whole script that way on the CPU. Rows (JSON lines, bench/harness.py schema) go to
`<out>/end_to_end.jsonl`, a table to `<out>/end-to-end-table.txt`.

    python bench/bench_gpu_end_to_end.py [--devices cuda cpu] [--cases ensemble single training]
        [--quick] [--budget 2] [--out DIR] [--tf32]
"""
from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

import torch

from _product_bench import DEFAULT_NET, RESULTS, SMALL_NET, config, h, measure_paired, network_only
from aitimestepper import ops
from aitimestepper.initial_conditions import make_systems
from aitimestepper.ops import backends
from aitimestepper.simulate import CHECK_EVERY, Simulator
from aitimestepper.training.loop import checkpoint_payload, setup

REPO = Path(__file__).resolve().parents[1]
CPU_REFERENCE = REPO / "bench" / "results" / "cpu-2core.jsonl"
ENSEMBLE_CASE = "ensemble_ml_N3_D2_float32"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _synchronized(fn, device: str):
    """fn followed by a device sync: on CUDA a host clock then sees the work, not its launch."""
    if not device.startswith("cuda"):
        return fn

    def call():
        fn()
        torch.cuda.synchronize()
    return call


# ---------------------------------------------------------------------------------------------
# simulation


def _simulation(device: str, B: int, dtype: str, hidden: list[int]):
    """(make a simulator, systems): an untrained network of the given architecture (speed does
    not depend on the weights) and B random three-body systems. simulator(step_blocks, compile)
    runs `ml` with the step loop's mode and --compile as given; its step count is set per run
    (one Simulator per variant: with --compile, a new one would compile anew)."""
    base = dict(device=device, dtype=dtype, dim=2)
    run = setup(config("auto", hidden, 3, 1, **base))
    checkpoint = checkpoint_payload(run, 0, 1, "bench")

    def simulator(step_blocks: str = "auto", compile: bool = False) -> Simulator:
        sim = Simulator(config("auto", hidden, 3, B, integrator_mode="ml", compile=compile, **base), checkpoint)
        sim.step_blocks = step_blocks
        return sim

    systems = make_systems(config("auto", hidden, 3, B, **base), torch.Generator().manual_seed(7))
    return simulator, systems


def _per_step(simulator_for, systems, device: str, short: int, long: int, budget: float, step_blocks: str,
              compile: bool = False) -> dict:
    """Seconds per step from the slope between runs of `short` and `long` steps, and the run's
    fixed cost (set-up, capture) from the intercept."""
    timings = {}
    sim = simulator_for(step_blocks, compile)
    for steps in (short, long):
        sim.cfg = sim.cfg.replace(steps=steps)
        taken = int(sim.run(systems, None, None)["steps"].max())  # untimed: warm-up, and the check below
        if taken != steps:  # every system stopped early (diverged): the slope would be meaningless
            raise RuntimeError(f"the {steps}-step run stopped after {taken} steps")
        timings[steps] = h.measure(lambda sim=sim: sim.run(systems, None, None), device=device, warmup=1,
                                   repeats=5, min_repeats=3, budget_s=budget)
        blocks = sim.blocks_run
    per_step = (timings[long].median_s - timings[short].median_s) / (long - short)
    return {"step_s": per_step, "run_overhead_s": timings[short].median_s - short * per_step,
            "short_run": timings[short], "long_run": timings[long], "blocks_in_long_run": blocks}


def _model_forward(simulator_for, B: int, device: str, dtype):
    """The network and its dt head alone on B rows, as the loop calls it (inference mode)."""
    sim = simulator_for()
    inputs = torch.rand(B, sim.featurizer.input_dim, dtype=dtype, device=device)
    tau = torch.rand(B, dtype=dtype, device=device) + 0.5
    model_dt = sim.model.bind_dt(B, dtype, device)

    def forward():
        with torch.inference_mode():
            model_dt(inputs, tau)
    return forward


def ensemble_case(log, device: str, args, lines: list[str]) -> None:
    B = 64 if args.quick else args.ensemble_batch
    dtype = torch.float32
    simulator_for, systems = _simulation(device, B, "float32", SMALL_NET)
    short, long = (2 * CHECK_EVERY, 6 * CHECK_EVERY) if args.quick else (2 * CHECK_EVERY, 2 * CHECK_EVERY + args.long_steps)
    if device == "cpu" and not args.quick:
        long = 2 * CHECK_EVERY + 4 * CHECK_EVERY  # ~50 ms per step at B = 65536 on 2 cores
    graphed = _per_step(simulator_for, systems, device, short, long, args.budget, "auto")
    eager = _per_step(simulator_for, systems, device, short, long, args.budget, "per-step") \
        if device.startswith("cuda") else None
    compiled = _per_step(simulator_for, systems, device, short, long, args.budget, "auto", compile=True) \
        if args.compiled else None
    forward = h.measure(_model_forward(simulator_for, B, device, dtype), device=device, budget_s=args.budget)
    dt = torch.full((B,), 1e-3, dtype=dtype, device=device)

    def fused_step():
        with ops.unchecked():  # as the loop runs it: value checks on GPU tensors would sync
            ops.step(systems.pos, systems.vel, systems.mass, dt, steps=1)
    step = h.measure(fused_step, device=device, budget_s=args.budget)
    bound_s = forward.median_s + step.median_s
    achieved = B / graphed["step_s"]
    bound = B / bound_s
    metrics = {"system_steps_per_s": achieved, "bound_system_steps_per_s": bound, "ratio_to_bound": achieved / bound,
               "step_s": graphed["step_s"], "forward_s": forward.median_s, "fused_step_s": step.median_s,
               "run_overhead_s": graphed["run_overhead_s"], "blocks_in_long_run": graphed["blocks_in_long_run"]}
    if eager is not None:
        metrics.update({"per_step_loop_system_steps_per_s": B / eager["step_s"], "graph_speedup": eager["step_s"] /
                        graphed["step_s"], "per_step_loop_run_overhead_s": eager["run_overhead_s"]})
    if compiled is not None:
        metrics.update({"compiled_system_steps_per_s": B / compiled["step_s"],
                        "compiled_ratio_to_bound": B / compiled["step_s"] / bound,
                        "compiled_run_overhead_s": compiled["run_overhead_s"]})
    cpu = _cpu_reference(args.cpu_reference, B) if device.startswith("cuda") else None
    if cpu is not None:
        metrics["cpu_2core_system_steps_per_s"] = cpu
        metrics["speedup_vs_cpu_2core"] = achieved / cpu
    case = ENSEMBLE_CASE if not args.quick else "ensemble_ml_N3_D2_float32_quick"
    log.append(case=case, backend=_backend(device), timing=graphed["long_run"], metrics=metrics,
               params={"N": 3, "D": 2, "B": B, "dtype": "float32", "hidden_dims": SMALL_NET, "steps": [short, long],
                       "step_rule": "symmetric", "threads": torch.get_num_threads()},
               primary="system_steps_per_s")
    line = (f"{device:5s} ensemble B={B}: {achieved:.3g} system-steps/s (step {graphed['step_s'] * 1e6:.1f} us), bound "
            f"{bound:.3g} (forward {forward.median_s * 1e6:.1f} us + fused step {step.median_s * 1e6:.1f} us): "
            f"ratio {achieved / bound:.2f}")
    if eager is not None:
        line += f"; step-by-step loop {B / eager['step_s']:.3g} ({metrics['graph_speedup']:.2f}x slower)"
    if compiled is not None:
        line += (f"; with --compile {metrics['compiled_system_steps_per_s']:.3g} "
                 f"(ratio {metrics['compiled_ratio_to_bound']:.2f})")
    if device.startswith("cuda") and not args.quick:
        # The rule: the graph or the compiled variant, whichever measures faster.
        best, variant = achieved, "CUDA graph"
        if compiled is not None and metrics["compiled_system_steps_per_s"] > best:
            best, variant = metrics["compiled_system_steps_per_s"], "CUDA graph + --compile"
        evaluated = h.Target("ensemble learned-dt / (forward + fused step) bound", ">=", 0.5).evaluate(
            best / bound, note=variant)
        log.append_target(evaluated, backend=_backend(device))
        line += f" [{evaluated['status']}, {variant}]"
        if cpu is not None:
            evaluated = h.Target("ensemble learned-dt / 2-core CPU", ">=", 100.0).evaluate(best / cpu, note=variant)
            log.append_target(evaluated, backend=_backend(device))
            line += f"; {best / cpu:.0f}x the 2-core CPU [{evaluated['status']}]"
        else:
            line += "; no 2-core CPU row to compare with"
    lines.append(line)


def _cpu_reference(path: str, B: int):
    """system-steps/s of the ensemble case on the 2-core CPU, from its results file (its fastest row)."""
    best = None
    for row in h.read_rows(path):
        if row.get("case") == ENSEMBLE_CASE and row.get("params", {}).get("B") == B and row.get("backend") == "cpu":
            rate = row["metrics"]["system_steps_per_s"]
            best = rate if best is None else max(best, rate)  # the fastest CPU run: the strictest comparison
    return best


def _launches_per_step(simulator_for, systems, device: str, step_blocks: str, compile: bool = False) -> dict:
    """From torch.profiler, the slope between runs of 4 and 12 blocks (the steady state: set-up,
    the eager first block and the graph's warm-up block cancel): GPU kernels (and copies and
    memsets) per step, host kernel launches and graph launches per step (CPU: aten ops)."""
    from torch.profiler import ProfilerActivity, profile

    sim = simulator_for(step_blocks, compile)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    counted = {}
    for steps in (4 * CHECK_EVERY, 12 * CHECK_EVERY):
        sim.cfg = sim.cfg.replace(steps=steps)
        sim.run(systems, None, None)  # warm
        with profile(activities=activities) as prof:
            sim.run(systems, None, None)
            _sync(device)
        counts = {"kernels": 0, "launch_calls": 0, "graph_launches": 0, "aten_ops": 0}
        for event in prof.events():
            name = event.name
            if event.device_type == torch.autograd.DeviceType.CUDA:
                counts["kernels"] += 1
            elif name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"):
                counts["launch_calls"] += 1
            elif name in ("cudaGraphLaunch", "cuGraphLaunch"):
                counts["graph_launches"] += 1
            elif name.startswith("aten::"):
                counts["aten_ops"] += 1
        counted[steps] = counts
    short, long = sorted(counted)
    return {f"{key}_per_step": (counted[long][key] - counted[short][key]) / (long - short) for key in counted[long]}


def single_case(log, device: str, args, lines: list[str]) -> None:
    dtype = torch.float32
    simulator_for, systems = _simulation(device, 1, "float32", SMALL_NET)
    short, long = (2 * CHECK_EVERY, 6 * CHECK_EVERY) if args.quick else (2 * CHECK_EVERY, 2 * CHECK_EVERY + 640)
    graphed = _per_step(simulator_for, systems, device, short, long, args.budget, "auto")
    eager = _per_step(simulator_for, systems, device, short, long, args.budget, "per-step")
    compiled = _per_step(simulator_for, systems, device, short, long, args.budget, "auto", compile=True) \
        if args.compiled else None
    forward = h.measure(_model_forward(simulator_for, 1, device, dtype), device=device, budget_s=args.budget)
    ratio = graphed["step_s"] / forward.median_s
    metrics = {"step_s": graphed["step_s"], "forward_s": forward.median_s, "ratio_to_forward": ratio,
               "per_step_loop_step_s": eager["step_s"], "per_step_loop_ratio_to_forward": eager["step_s"] /
               forward.median_s, "run_overhead_s": graphed["run_overhead_s"]}
    if compiled is not None:
        metrics.update({"compiled_step_s": compiled["step_s"], "compiled_ratio_to_forward":
                        compiled["step_s"] / forward.median_s, "compiled_run_overhead_s": compiled["run_overhead_s"]})
    try:
        variants = [("graphed", "auto", False), ("per_step_loop", "per-step", False)]
        if compiled is not None and device.startswith("cuda"):
            variants.append(("compiled", "auto", True))
        for label, blocks, compile in variants:
            counted = _launches_per_step(simulator_for, systems, device, blocks, compile)
            metrics.update({f"{label}_{key}": value for key, value in counted.items()})
    except Exception as error:  # the profiler is a diagnostic: its failure must not lose the timing
        metrics["launch_count_error"] = repr(error)
    log.append(case="single_ml_N3_D2_float32", backend=_backend(device), timing=graphed["long_run"],
               metrics=metrics, params={"N": 3, "D": 2, "B": 1, "dtype": "float32", "hidden_dims": SMALL_NET,
                                        "steps": [short, long], "threads": torch.get_num_threads()},
               primary="ratio_to_forward")
    line = (f"{device:5s} single system: step {graphed['step_s'] * 1e6:.1f} us, forward {forward.median_s * 1e6:.1f} "
            f"us: {ratio:.2f}x (step-by-step loop {eager['step_s'] * 1e6:.1f} us)")
    if compiled is not None:
        line += f"; with --compile {compiled['step_s'] * 1e6:.1f} us ({metrics['compiled_ratio_to_forward']:.2f}x)"
    if device.startswith("cuda") and "graphed_kernels_per_step" in metrics:
        line += (f"; kernels/step {metrics['graphed_kernels_per_step']:.1f}"
                 + (f" (with --compile {metrics['compiled_kernels_per_step']:.1f})"
                    if "compiled_kernels_per_step" in metrics else "")
                 + f", host launches/step: graphed {metrics['graphed_launch_calls_per_step']:.2f} kernels + "
                 f"{metrics['graphed_graph_launches_per_step']:.3f} graphs, step by step "
                 f"{metrics['per_step_loop_launch_calls_per_step']:.1f}")
    elif "graphed_aten_ops_per_step" in metrics:
        line += f"; aten ops/step {metrics['graphed_aten_ops_per_step']:.1f}"
    if device.startswith("cuda") and not args.quick:
        best, variant = ratio, "CUDA graph"
        if compiled is not None and metrics["compiled_ratio_to_forward"] < best:
            best, variant = metrics["compiled_ratio_to_forward"], "CUDA graph + --compile"
        evaluated = h.Target("single-system learned step / network forward (GPU)", "<=", 3.0).evaluate(best,
                                                                                                     note=variant)
        log.append_target(evaluated, backend=_backend(device))
        line += f" [{evaluated['status']}, {variant}]"
    lines.append(line)


# ---------------------------------------------------------------------------------------------
# training


def _retrain_iteration(trainer) -> None:
    """What Part 1 does when every orbit fails the gate: judge (one host sync), one Adam step."""
    from aitimestepper.training import part1

    gate, *_ = part1.judge(trainer)
    part1.retrain(trainer, gate, list(range(trainer.orbits.count)))


def training_case(log, device: str, args, lines: list[str]) -> None:
    cases = [("retrain_default_net_N2_B1", DEFAULT_NET, 2, 1, dtype) for dtype in ("float64", "float32")]
    cases.append(("retrain_small_net_N3_B64", SMALL_NET, 3, 64, "float64"))
    for case, hidden, N, B, dtype in cases:
        trainer = setup(config("auto", hidden, N, B, device=device, dtype=dtype, tf32=args.tf32)).trainer
        trainer.refresh_inputs()
        inputs = trainer.orbits.inputs
        paired = measure_paired(_synchronized(lambda t=trainer: _retrain_iteration(t), device),
                                _synchronized(lambda t=trainer: network_only(t.model, inputs, t.orbits.tau, t.optimizer), device),
                                budget_s=args.budget)
        metrics = {**paired.metrics(), "iteration_s": paired.target.median_s, "network_only_s": paired.baseline.median_s,
                   "iterations_per_s": 1 / paired.target.median_s}
        log.append(case=case, backend=_backend(device), timing=paired.target, metrics=metrics, primary="paired_ratio",
                   params={"N": N, "B": B, "dtype": dtype, "hidden_dims": hidden, "n_steps": 10, "tf32": args.tf32,
                           "threads": torch.get_num_threads()})
        line = (f"{device:5s} {case} {dtype}: iteration {paired.target.median_s * 1e3:.3f} ms, network only "
                f"{paired.baseline.median_s * 1e3:.3f} ms: {paired.ratio:.2f}x")
        if device.startswith("cuda") and not args.quick and hidden == DEFAULT_NET:
            evaluated = h.Target(f"retrain / network-only (default net, {dtype}, GPU)", "<=", 1.25).evaluate(paired.ratio)
            log.append_target(evaluated, backend=_backend(device))
            line += f" [{evaluated['status']}]"
        lines.append(line)


# ---------------------------------------------------------------------------------------------


def _backend(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


CASES = {"ensemble": ensemble_case, "single": single_case, "training": training_case}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=None,
                        help="default: cuda where the CUDA kernels are usable, else cpu")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--quick", action="store_true", help="tiny sizes and budgets (the no-GPU dry check)")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timing per measurement")
    parser.add_argument("--ensemble-batch", type=int, default=65536)
    parser.add_argument("--long-steps", type=int, default=40 * CHECK_EVERY,
                        help="extra steps of the long simulation run (the slope's run)")
    parser.add_argument("--tf32", action="store_true", help="TF32 matrix products for float32 training on CUDA")
    parser.add_argument("--no-compiled", dest="compiled", action="store_false",
                        help="skip the --compile variants of the simulation cases (each compiles for seconds)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cpu-reference", default=str(CPU_REFERENCE),
                        help="results file with the 2-core CPU's ensemble row")
    parser.add_argument("--out", default=str(RESULTS), help="folder for end_to_end.jsonl and the table")
    args = parser.parse_args(argv)
    if args.budget is None:
        args.budget = 0.3 if args.quick else 2.0
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cuda"] if backends.cuda_kernels_usable() else ["cpu"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    logs = []
    failed = False
    started = time.perf_counter()
    for device in devices:
        log = h.ResultLog(out / "end_to_end.jsonl", suite="end_to_end", device=device)
        logs.append(log)
        for name in args.cases:
            t0 = time.perf_counter()
            try:
                CASES[name](log, device, args, lines)
            except Exception as error:  # one case's failure must not lose the others
                failed = True
                traceback.print_exc()
                log.append(case=name, backend=_backend(device), error=repr(error))
                lines.append(f"{device:5s} {name}: FAILED {error!r}")
            print(f"[{device} {name}: {time.perf_counter() - t0:.1f} s]", flush=True)
    header = f"end-to-end benchmark ({', '.join(devices)}; {time.perf_counter() - started:.0f} s)"
    if any(d.startswith("cuda") for d in devices):
        header += f" on {torch.cuda.get_device_name()}"
    text = "\n".join([header, *lines])
    print(text)
    (out / "end-to-end-table.txt").write_text(text + "\n")
    targets = [row for log in logs for row in log.rows if row["case"] == "target"]
    if targets:
        print(h.format_table(targets, h.TARGET_COLUMNS))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
