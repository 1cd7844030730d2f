"""The benchmarks record what they measured: structure and bookkeeping, never speed.

The repository's tuning harness (bench/harness.py, bench/bench_kernels.py) and the installed
package's quick table behind `aitimestepper bench` (aitimestepper.bench.kernels)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from aitimestepper.bench import kernels as quick
from aitimestepper.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_kernels as kernels  # noqa: E402
import harness as h  # noqa: E402


def test_measure_counts_calls_and_orders_quantiles():
    calls = []
    timing = h.measure(lambda: calls.append(1), warmup=2, repeats=5, budget_s=1.0, repeat_s=1e-4)
    assert timing.repeats == 5
    assert len(calls) == 2 + 5 * timing.calls_per_repeat
    assert timing.min_s <= timing.q1_s <= timing.median_s <= timing.q3_s <= timing.max_s
    assert timing.method == "perf_counter"


def test_measure_with_setup_passes_its_result_untimed():
    seen = []
    timing = h.measure(seen.append, setup=lambda: len(seen), warmup=1, repeats=3, budget_s=1.0)
    assert timing.calls_per_repeat == 1
    assert seen == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "direction, threshold, achieved, status",
    [(">=", 2.0, 3.0, "PASS"), (">=", 2.0, 1.0, "MISS"), ("<=", 3.0, 2.0, "PASS"), ("<=", 3.0, 4.0, "MISS"),
     (">=", 2.0, None, "N/A"), (">=", None, 1.0, "N/A")],
)
def test_target_status_and_ratio(direction, threshold, achieved, status):
    result = h.Target("t", direction, threshold).evaluate(achieved)
    assert result["status"] == status
    if status != "N/A":
        assert result["ratio"] == pytest.approx(achieved / threshold)


def test_result_log_round_trip_with_provenance(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    log = h.ResultLog(path, suite="unit")
    timing = h.measure(lambda: None, warmup=1, repeats=3, budget_s=0.5)
    log.append(case="noop", backend="reference", params={"N": 2}, timing=timing,
               metrics={"calls_per_s": float("inf")}, primary="calls_per_s")
    log.append_target(h.Target("goal", ">=", 1.0).evaluate(2.0))
    other = h.ResultLog(path, suite="unit")
    other.append(case="other")
    rows = h.read_rows(path, log.run_id)
    assert [r["case"] for r in rows] == ["noop", "target"]
    assert rows[0]["metrics"]["calls_per_s"] is None  # strict JSON: inf becomes null
    for key in ("device_name", "commit", "versions", "threads", "timestamp"):
        assert key in rows[0]["provenance"]
    for line in path.read_text().splitlines():
        json.loads(line)
    table = h.format_table(rows[:1], h.DEFAULT_COLUMNS)
    assert "noop" in table and "reference" in table


def test_rotation_makes_distinct_copies_and_cycles():
    rotation = h.Rotation(lambda i: i, set_bytes=1, device="cpu", max_sets=4)
    assert rotation.count == 4
    assert [rotation.next() for _ in range(6)] == [0, 1, 2, 3, 0, 1]
    assert h.Rotation(lambda i: i, set_bytes=2**40, device="cpu").count == 1


def test_plans_name_the_target_sizes():
    cpu = kernels.cpu_plan(1, quick=False, rebound=True)
    assert any(c.kind == "step" and c.N == 3 and c.B == 4096 and c.dtype == "float64" for c in cpu)
    assert any(c.kind == "rebound" and c.N == 64 for c in cpu)
    two = kernels.cpu_plan(2, quick=False, rebound=True)
    assert any(c.kind == "acceleration" and c.N == 4096 and c.backend == "cpu" for c in two)
    gpu = kernels.gpu_plan(quick=False, dry=False)
    assert {c.N for c in gpu if c.kind == "acceleration" and c.backend == "cuda"} == {131072, 262144}
    assert any(c.kind == "step" and c.N == 4 and c.B == 2**20 and c.steps == 100 for c in gpu)
    assert all(c.N <= 16384 for c in gpu if c.kind == "acceleration" and c.backend == "reference")


def test_gpu_targets_read_the_default_rows():
    def row(fraction):
        params = dict(device="cuda", dtype="float32", N=4, B=2**20, D=3, threads=None, steps=1,
                      integrator="leapfrog", checked=False, raw=False)
        return {"case": "step1", "backend": "cuda", "params": params, "timing": {"median_s": 1.0},
                "metrics": {"bytes_per_s": fraction * 4e12, "copy_bytes_per_s": 4e12,
                            "fraction_of_copy": fraction}}

    targets = kernels.gpu_targets([row(0.8)], quick=False, dry=False)
    one_step = next(t for t in targets if t["name"].startswith("one step cuda"))
    assert one_step["status"] == "PASS" and one_step["achieved"] == pytest.approx(0.8)
    missing = next(t for t in targets if t["name"].startswith("one step triton"))
    assert missing["status"] == "N/A"


def test_quick_bench_prints_only_unless_given_a_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["bench", "--quick", "--backends", "reference", "--min-run-time", "0.01", "--device", "cpu"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "N (N - 1)" in out and "acceleration" in out and "reference" in out
    assert list(tmp_path.iterdir()) == [], "without --output nothing is written"

    target = tmp_path / "sub" / "rows.jsonl"
    assert cli_main(argv + ["--output", str(target)]) == 0
    assert list(tmp_path.iterdir()) == [tmp_path / "sub"]
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert {r["op"] for r in rows} == {"acceleration", "step"}
    for r in rows:
        assert r["backend"] in ("reference", "rebound")
        assert r["median_s"] > 0 and r["pair_interactions_per_s"] > 0
        assert {"device_name", "versions", "build_info"} <= set(r["machine"])
        assert r["pair_convention"] == quick.PAIR_CONVENTION


def test_quick_bench_counts_ordered_pairs():
    rates = quick._rates(quick.Case("step", N=4, B=10, steps=3), seconds=2.0)
    assert rates["pair_interactions_per_s"] == 10 * 4 * 3 * 3 / 2.0
    assert rates["system_steps_per_s"] == 10 * 3 / 2.0


def test_quick_bench_rejects_an_unavailable_backend(capsys):
    assert quick.main(["--backends", "nonesuch", "--device", "cpu"]) == 2
    assert "nonesuch" in capsys.readouterr().err


def test_test_timing_summary_names_the_slow_and_the_unfinished(tmp_path):
    """bench/test_timings.py reads the log tests/conftest.py writes (AITS_TEST_TIMINGS), also one
    a timeout cut off mid-line."""
    import subprocess
    import sys
    from pathlib import Path

    events = [
        dict(t=0.0, test="t.py::a[1]", when="start"),
        dict(t=0.1, test="t.py::b", when="start"),
        dict(t=0.1, test="t.py::a[1]", when="setup", outcome="passed", seconds=0.1),
        dict(t=5.0, test="t.py::a[1]", when="call", outcome="passed", seconds=4.9),
        dict(t=5.0, test="t.py::a[1]", when="teardown", outcome="passed", seconds=0.0),
        dict(t=5.1, test="t.py::b", when="setup", outcome="skipped", seconds=0.0),
        dict(t=5.1, test="t.py::b", when="teardown", outcome="passed", seconds=0.0),
        dict(t=6.0, test="t.py::a[2]", when="start"),
    ]
    log = tmp_path / "timings.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"t": 7.0, "test": "t.py::c", "wh')
    script = Path(__file__).resolve().parents[1] / "bench" / "test_timings.py"
    out = subprocess.run([sys.executable, str(script), str(log), "--top", "2"], capture_output=True,
                         text=True, check=True).stdout
    assert "2 tests finished (1 passed, 1 skipped)" in out
    assert "1 still running" in out and "t.py::a[2]" in out
    assert "5.00  t.py::a[1]" in out  # setup + call + teardown
    assert "5.0  t.py::a" in out  # per function
