"""Where the time of two GPU measurements goes, by kernel (torch.profiler): the energy-error
backward at N = 64 (the Triton launch loop's VJP and boundary kernels) and one `step` call at
N = 4, B = 2^20 (host time of the ops layer and launch vs the kernel).

    python bench/profile_gpu.py [--out DIR] [--backends triton,cuda]

Prints the kernel tables and writes them to DIR/profile_gpu.txt. A diagnostic beside
bench/bench_kernels.py (whose rows are the measurements of record), not a benchmark.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from aitimestepper import ops  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_kernels import make_state  # noqa: E402


def _energy_error_fn(s, backend: str, steps: int):
    leaves = {"dt": s.dt.clone().requires_grad_(), "pos": s.pos.clone().requires_grad_(),
              "vel": s.vel.clone().requires_grad_()}
    with torch.no_grad():
        e0 = ops.total_energy(s.pos, s.vel, s.mass, backend=backend)

    def run() -> torch.Tensor:
        p1, v1 = ops.step(leaves["pos"], leaves["vel"], s.mass, leaves["dt"], steps=steps, backend=backend)
        return ((ops.total_energy(p1, v1, s.mass, backend=backend) - e0) / e0).abs().sum()

    return run


def _table(prof, rows: int = 14) -> str:
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60)


def profile_backward(backend: str, N: int, B: int, steps: int, out: list[str]) -> None:
    s = make_state(B, N, 3, "float32", torch.device("cuda"), 0)
    with ops.unchecked():
        run = _energy_error_fn(s, backend, steps)
        for _ in range(3):  # compile, autotune, warm
            run().backward()
        torch.cuda.synchronize()
        loss = run()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            loss.backward()
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    out.append(f"\n## backward {backend} N={N} B={B} steps={steps}: "
               f"{wall * 1e3:.2f} ms wall under the profiler\n{_table(prof)}")


def profile_one_step(backend: str, out: list[str], calls: int = 200) -> None:
    s = make_state(2**20, 4, 3, "float32", torch.device("cuda"), 0)
    with ops.unchecked():
        for _ in range(5):
            ops.step(s.pos, s.vel, s.mass, s.dt, backend=backend)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            ops.step(s.pos, s.vel, s.mass, s.dt, backend=backend)
        host = (time.perf_counter() - t0) / calls  # host time per call while the queue fills
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / calls
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                ops.step(s.pos, s.vel, s.mass, s.dt, backend=backend)
            torch.cuda.synchronize()
    out.append(f"\n## one step {backend} N=4 B=2^20: host {host * 1e6:.1f} us per call to enqueue, "
               f"{wall * 1e6:.1f} us per call overall ({calls} calls)\n{_table(prof, 8)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--backends", default="triton,cuda")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: nothing to profile")
        return 0
    backends = args.backends.split(",")
    out: list[str] = [f"device {torch.cuda.get_device_name()}"]
    for backend in backends:
        try:
            profile_one_step(backend, out)
        except Exception as exc:  # a diagnostic: report and go on
            out.append(f"\n## one step {backend}: failed: {exc!r}")
    for backend in backends:
        try:
            profile_backward(backend, 64, 16384, 10, out)
        except Exception as exc:  # a diagnostic: report and go on
            out.append(f"\n## backward {backend}: failed: {exc!r}")
    text = "\n".join(out)
    print(text)
    if args.out:
        pathlib.Path(args.out, "profile_gpu.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
