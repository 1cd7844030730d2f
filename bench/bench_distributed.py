#!/usr/bin/env python3
"""torchrun on one machine: ensemble simulation and training on 2 ranks against 1, same work.

Every case runs the `aitimestepper` command as a user would, once as one process and once under
`torchrun --nproc-per-node 2`, each process on one thread (`--threads 1`), alternating for
--rounds rounds; the median of each is reported.

- simulate: B Kepler systems (B = 4096 and 16384) for a fixed number of steps, with a fixed dt
  and with the learned dt (a quickstart-sized network [64, 64] trained here first). Throughput
  is B x steps over the stepping loop's wall time (`wall_time_s`, the slowest rank's); the
  process's whole wall time, start-up included, is recorded beside it, and one rank's loop time
  on B/2 systems (what each of two ranks has to do) gives the bound. Target (issue 14): 2 ranks
  >= 1.8x 1 rank.
- train: 64 orbits, a small network [16, 16]: the median epoch time (metrics.jsonl) on 1 and 2
  ranks.
- allreduce: under torchrun, one retrain iteration of that run (the gate on this rank's 32
  orbits, the band loss's backward, the gradient all-reduce, Adam), with the small network and
  with the default one, against the two collectives in it alone (the gradient all-reduce and
  the decision all-reduce): their share of the iteration.

    python bench/bench_distributed.py [--rounds 3] [--systems 4096 16384] [--out bench/results/cpu-2core.jsonl]

The machine must be otherwise idle: two ranks on two cores leave nothing for anything else.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import harness as h  # noqa: E402

TRAIN_FLAGS = ["--num-orbits", "64", "--num-particles", "3", "--hidden-dims", "16", "16", "--dropout", "0",
               "--n-steps", "3", "--steps-per-epoch", "2", "--replay-steps", "10", "--replay-batch-size", "256",
               "--min-replay-size", "8", "--lr", "1e-3", "--weight-decay", "0", "--energy-threshold", "1e-3",
               "--E_upper", "1e-4", "--E_lower", "1e-6", "--on-retrain-cap", "halve", "--seed", "1"]


def launch(ranks: int, program: list[str]) -> list[str]:
    """`program` (["-m", module, ...] or [script, ...]) as one process or under torchrun."""
    if ranks == 1:
        return [sys.executable, *program]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *program]


def command(ranks: int, args: list[str]) -> list[str]:
    """The aitimestepper command with `args` on `ranks` ranks."""
    return launch(ranks, ["-m", "aitimestepper", *args])


def run(cmd: list[str], cwd: Path) -> tuple[str, float]:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return done.stdout, elapsed


def simulate_case(work: Path, mode_flags: list[str], systems: int, steps: int, rounds: int) -> dict:
    """Loop and whole-process throughput (system-steps/s) on 1 and 2 ranks, and the loop time of
    1 rank on half the systems (what each of 2 ranks has to do: the bound without any cost of
    running two processes side by side)."""
    def flags(count: int) -> list[str]:
        return ["simulate", *mode_flags, "--num-orbits", str(count), "--steps", str(steps), "--e-min", "0.3",
                "--e-max", "0.7", "--seed", "5", "--threads", "1"]

    samples: dict[str, list[float]] = {"1": [], "2": [], "1_process": [], "2_process": [], "half_loop_s": []}
    for _ in range(rounds):
        for ranks in (1, 2):
            out, elapsed = run(command(ranks, flags(systems)), work)
            records = [json.loads(line) for line in out.splitlines()]
            assert len(records) == systems
            samples[str(ranks)].append(systems * steps / records[0]["wall_time_s"])
            samples[f"{ranks}_process"].append(systems * steps / elapsed)
        out, _ = run(command(1, flags(systems // 2)), work)
        samples["half_loop_s"].append(json.loads(out.splitlines()[0])["wall_time_s"])
    return {key: statistics.median(values) for key, values in samples.items()}


def train_case(work: Path, epochs: int, rounds: int) -> dict[int, float]:
    times: dict[int, list[float]] = {1: [], 2: []}
    for round_ in range(rounds):
        for ranks in (1, 2):
            folder = work / f"train-{ranks}-{round_}"
            run(command(ranks, ["train", *TRAIN_FLAGS, "--epochs", str(epochs), "--threads", "1",
                                "--output-dir", str(folder), "--checkpoint-every", str(epochs)]), work)
            epochs_seen = [json.loads(line) for line in (folder / "run/metrics.jsonl").read_text().splitlines()]
            epoch_times = [r["epoch_time_s"] for r in epochs_seen if "epoch_time_s" in r][1:]  # the first warms up
            times[ranks].append(statistics.median(epoch_times))
    return {ranks: statistics.median(values) for ranks, values in times.items()}


def _time_collectively(fn, calls: int = 10, repeats: int = 30) -> float:
    """Median seconds per call; every rank makes the same calls (each may hold a collective)."""
    for _ in range(calls * 2):
        fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - started) / calls)
    return statistics.median(samples)


def allreduce_worker(out: str) -> None:
    """Under torchrun: a retrain iteration of the 64-orbit run (small network, then the default
    one) beside the collectives in it; rank 0 writes the seconds per call."""
    import torch

    from aitimestepper import distributed
    from aitimestepper.cli import configs_for
    from aitimestepper.training import part1
    from aitimestepper.training.loop import setup

    report = {}
    for network, hidden in (("small", ["16", "16"]), ("default", ["200", "1000", "1000", "200"])):
        flags = [*TRAIN_FLAGS, "--threads", "1", "--output-dir", tempfile.mkdtemp(), "--hidden-dims", *hidden]
        cfg, _ = configs_for("train", ["train", *flags])
        trainer = setup(cfg).trainer
        trainer.refresh_inputs()
        group = trainer.group
        everyone = list(range(trainer.total))

        def iteration() -> None:
            gate, _ = part1.judge(trainer)
            part1.retrain(trainer, gate, everyone)

        gradient = torch.zeros(sum(p.numel() for p in trainer.model.parameters()), dtype=torch.float64)
        decision = torch.zeros(5, trainer.total, dtype=torch.float64)
        calls = 10 if network == "small" else 2
        report[network] = {"parameters": gradient.numel(), "orbits_per_rank": len(trainer.shard),
                           "iteration": _time_collectively(iteration, calls),
                           "gradient_allreduce": _time_collectively(lambda: group.all_sum(gradient), calls),
                           "decision_allreduce": _time_collectively(lambda: group.all_sum(decision), calls)}
    if group.rank == 0:
        Path(out).write_text(json.dumps({"ranks": group.size, **report}))
    distributed.leave()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--systems", type=int, nargs="+", default=[4096, 16384],
                        help="ensemble sizes B (each case runs B x system-steps of about the same work)")
    parser.add_argument("--fixed-work", type=float, default=3.2e7, help="system-steps per fixed-dt run")
    parser.add_argument("--learned-work", type=float, default=3.2e6, help="system-steps per learned-dt run")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", default=str(HERE / "results" / "cpu-2core.jsonl"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        allreduce_worker(args.worker)
        return 0

    log = h.ResultLog(args.out, suite="distributed")
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        run([sys.executable, "-m", "aitimestepper", "train", "--config", str(HERE.parent / "configs/quickstart.toml"),
             "--epochs", "20", "--output-dir", str(work), "--threads", "1"], work)
        model = work / "quickstart"
        for mode, mode_flags, work_steps in (
                ("fixed", ["--integrator-mode", "analytic", "--dt", "1e-3"], args.fixed_work),
                ("learned", ["--integrator-mode", "ml", "--model-path", str(model)], args.learned_work)):
            for systems in args.systems:
                steps = max(1, round(work_steps / systems))
                result = simulate_case(work, mode_flags, systems, steps, args.rounds)
                speedup = result["2"] / result["1"]
                bound = systems * steps / result["half_loop_s"]  # 2 ranks with no cost of being two
                params = {"mode": mode, "systems": systems, "steps": steps, "N": 2, "threads_per_rank": 1,
                          "rounds": args.rounds}
                log.append(case=f"simulate_{mode}_2ranks_vs_1", backend="cpu", params=params,
                           metrics={"one_rank_system_steps_per_s": result["1"],
                                    "two_ranks_system_steps_per_s": result["2"], "speedup": speedup,
                                    "two_ranks_bound_system_steps_per_s": bound, "fraction_of_bound": result["2"] / bound,
                                    "one_rank_whole_process_system_steps_per_s": result["1_process"],
                                    "two_ranks_whole_process_system_steps_per_s": result["2_process"]},
                           primary="speedup")
                target = h.Target(f"simulate ({mode} dt, B = {systems}) 2 ranks / 1 rank", ">=", 1.8).evaluate(speedup)
                log.append_target(target, backend="cpu")
                lines.append(f"simulate {mode:7s} B={systems} steps={steps}: 1 rank {result['1']:.3g}, 2 ranks "
                             f"{result['2']:.3g} system-steps/s (loop): x{speedup:.2f} [{target['status']} >= 1.8]; "
                             f"{100 * result['2'] / bound:.0f}% of 1 rank's speed on B/2 systems; whole process "
                             f"x{result['2_process'] / result['1_process']:.2f}")

        epoch = train_case(work, args.epochs, args.rounds)
        log.append(case="train_64_orbits_2ranks_vs_1", backend="cpu",
                   params={"orbits": 64, "hidden_dims": [16, 16], "N": 3, "epochs": args.epochs, "threads_per_rank": 1},
                   metrics={"one_rank_epoch_s": epoch[1], "two_ranks_epoch_s": epoch[2], "speedup": epoch[1] / epoch[2]},
                   primary="speedup")
        lines.append(f"train 64 orbits [16, 16]: epoch {epoch[1] * 1e3:.1f} ms on 1 rank, {epoch[2] * 1e3:.1f} ms on 2 "
                     f"ranks (x{epoch[1] / epoch[2]:.2f})")

        report = work / "allreduce.json"
        run(launch(2, [str(Path(__file__).resolve()), "--worker", str(report)]), work)
        for network, t in json.loads(report.read_text()).items():
            if network == "ranks":
                continue
            share = (t["gradient_allreduce"] + t["decision_allreduce"]) / t["iteration"]
            log.append(case=f"retrain_iteration_collectives_2ranks_{network}_net", backend="cpu",
                       params={"orbits": 64, "orbits_per_rank": t["orbits_per_rank"], "N": 3,
                               "parameters": t["parameters"], "threads_per_rank": 1},
                       metrics={"iteration_s": t["iteration"], "gradient_allreduce_s": t["gradient_allreduce"],
                                "decision_allreduce_s": t["decision_allreduce"], "collective_share": share,
                                "gradient_bytes": 8 * t["parameters"]},
                       primary="collective_share")
            lines.append(f"retrain iteration, {network} network, 2 ranks x {t['orbits_per_rank']} orbits: "
                         f"{t['iteration'] * 1e6:.0f} us; gradient all-reduce ({t['parameters']} float64) "
                         f"{t['gradient_allreduce'] * 1e6:.0f} us, decision all-reduce "
                         f"{t['decision_allreduce'] * 1e6:.0f} us: {100 * share:.0f}% of the iteration")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
