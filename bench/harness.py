"""The shared benchmark harness: time a callable honestly, record the result with provenance.

Every script in bench/ measures the same way so that numbers from different scripts, machines
and commits can be compared:

- warm-up calls first (module load, Triton JIT, allocator growth stay out of the numbers);
- device synchronization: CUDA events around the timed region on a GPU, a host clock on the
  CPU (no synchronization needed there);
- calls per repeat calibrated so that one repeat lasts long enough for the clock, then the
  median and the spread (quartiles and min/max) over the repeats, within a time budget;
- the process CPU time over the wall time of the timed region (`cpu_util`): on the CPU this
  shows how many threads really worked, which is how a thread setting is verified;
- JSON-lines rows that carry their own provenance: device name, commit, versions, threads,
  load average and a UTC timestamp.

API (all in this module; the scripts beside it import it as `import harness as h`)::

    import harness as h

    log = h.ResultLog("bench/results/local/training.jsonl", suite="training")
    timing = h.measure(lambda: train_step(batch), device=device, budget_s=5.0)
    row = log.append(case="retrain_iteration", backend="cpu", params={"N": 3, "B": 64},
                     timing=timing, metrics={"iterations_per_s": 1.0 / timing.median_s},
                     primary="iterations_per_s")
    target = h.Target("retrain iterations/s", ">=", 100.0).evaluate(row["metrics"]["iterations_per_s"])
    log.append_target(target)
    print(h.format_table([row], h.DEFAULT_COLUMNS))

`measure(fn, device=..., setup=..., warmup=..., repeats=..., budget_s=...)`: time `fn()`
(or `fn(setup())` when `setup` is given: setup runs untimed before every call, e.g. a forward
pass before timing its backward). Returns a `Timing` (seconds per call: median, q1, q3, min,
max; repeats; calls per repeat; cpu_util; method).

`Rotation(make, set_bytes, device)`: cycles through enough copies of an input set that
repeated calls do not all run from a warm cache (`next()` gives the next set).

`provenance(device)`: the dict stored with every row. `AITS_BENCH_COMMIT` and
`AITS_BENCH_SOURCE_DIGEST` in the environment name the source where git is not available
(the GPU machine receives a copy of the tree, not the repository).

`ResultLog(path, suite, run_id=None, device=None)`: appends rows; `append(...)` builds a row
(see `make_row`) and writes it at once, so a run that is killed keeps what it measured.
`read_rows(path, run_id=None)` reads them back.

`Target(name, direction, threshold, unit="")`: `evaluate(achieved)` gives a dict with target,
achieved, ratio = achieved / threshold and status PASS / MISS (or N/A when achieved is None).

`format_table(rows, columns)`: a plain-text table; `columns` are (header, getter) pairs.

Row schema (one JSON object per line): schema, run_id, suite, case, backend, params (dict),
timing (dict, see Timing.as_dict) or null, metrics (dict), primary (name of the headline
metric), notes (list of str), error / skipped (str, when the case did not run), provenance.
Target rows have case "target" and a "target" dict instead of timing/metrics.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

SCHEMA_VERSION = 1

# ------------------------------------------------------------------------------------------------
# timing


@dataclass
class Timing:
    """Seconds per call over the repeats of one measurement."""

    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    max_s: float
    repeats: int
    calls_per_repeat: int
    cpu_util: Optional[float]  # process CPU seconds / wall seconds in the timed region (CPU only)
    method: str  # "cuda_events" or "perf_counter"
    samples_s: list[float] = field(default_factory=list)

    @property
    def iqr_rel(self) -> float:
        """Interquartile range relative to the median: the spread shown in tables."""
        return (self.q3_s - self.q1_s) / self.median_s if self.median_s > 0 else float("nan")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["iqr_rel"] = self.iqr_rel
        return d


def _quartiles(samples: Sequence[float]) -> tuple[float, float, float]:
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q = statistics.quantiles(samples, n=4, method="inclusive")
    return q[0], statistics.median(samples), q[2]


def _as_device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cpu")
    return device if isinstance(device, torch.device) else torch.device(device)


def synchronize(device: Any) -> None:
    """Wait for queued work on `device` (a no-op on the CPU)."""
    device = _as_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Times a block of calls: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.method = "cuda_events" if self.cuda else "perf_counter"
        self.cpu_seconds = 0.0
        self.wall_seconds = 0.0

    def run(self, block: Callable[[], None]) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            with torch.cuda.device(self.device):
                start.record()
                block()
                end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        cpu0, wall0 = time.process_time(), time.perf_counter()
        block()
        wall = time.perf_counter() - wall0
        self.cpu_seconds += time.process_time() - cpu0
        self.wall_seconds += wall
        return wall


def measure(
    fn: Callable[..., Any],
    *,
    device: Any = None,
    setup: Optional[Callable[[], Any]] = None,
    warmup: int = 2,
    repeats: int = 7,
    min_repeats: int = 3,
    repeat_s: Optional[float] = None,
    budget_s: float = 10.0,
    max_calls_per_repeat: int = 10_000,
) -> Timing:
    """Time `fn()` (or `fn(setup())`) and return seconds per call.

    warmup: untimed calls first (fewer when one call takes over budget_s / 4); the last one
      also calibrates how many calls make one repeat last `repeat_s` (default 20 ms on a GPU,
      50 ms on the CPU: far above the clock's resolution and the launch jitter).
    repeats / min_repeats / budget_s: repeat until `repeats` samples, but stop after
      `budget_s` seconds of timed work once `min_repeats` are in.
    setup: when given, runs before every call, untimed (synchronized before the clock starts),
      and its result is passed to fn; then every repeat is a single call.
    """
    device = _as_device(device)
    clock = _Clock(device)
    if repeat_s is None:
        repeat_s = 0.02 if clock.cuda else 0.05

    def one_call() -> None:
        if setup is not None:
            arg = setup()
            synchronize(device)
            return arg
        return None

    last = None
    for _ in range(max(warmup, 1)):
        arg = one_call()
        synchronize(device)
        t0 = time.perf_counter()
        fn(arg) if setup is not None else fn()
        synchronize(device)
        last = time.perf_counter() - t0
        if last > budget_s / 4:  # a call this long has warmed up in its own first part
            break

    calls = 1
    if setup is None and last is not None:
        calls = int(min(max_calls_per_repeat, max(1, math.ceil(repeat_s / max(last, 1e-9)))))

    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeats:
        if len(samples) >= min_repeats and time.perf_counter() - started > budget_s:
            break
        if setup is not None:
            arg = one_call()
            samples.append(clock.run(lambda: fn(arg)))
        else:
            def block() -> None:
                for _ in range(calls):
                    fn()

            samples.append(clock.run(block) / calls)

    q1, med, q3 = _quartiles(samples)
    cpu_util = None
    if not clock.cuda and clock.wall_seconds > 0:
        cpu_util = clock.cpu_seconds / clock.wall_seconds
    return Timing(
        median_s=med, q1_s=q1, q3_s=q3, min_s=min(samples), max_s=max(samples),
        repeats=len(samples), calls_per_repeat=calls, cpu_util=cpu_util, method=clock.method,
        samples_s=samples,
    )


# ------------------------------------------------------------------------------------------------
# cache-aware input rotation


def last_level_cache_bytes(device: Any) -> int:
    """L2 size of a GPU, or the largest CPU cache listed in sysfs (32 MiB if unknown)."""
    device = _as_device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 50 * 2**20))
    largest = 0
    cache_dir = Path("/sys/devices/system/cpu/cpu0/cache")
    for size_file in cache_dir.glob("index*/size"):
        text = size_file.read_text().strip()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        try:
            largest = max(largest, int(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return largest or 32 * 2**20


class Rotation:
    """Cycle through copies of one input set so consecutive calls do not reuse a warm cache.

    The number of copies is enough to cover twice the last-level cache, at most `max_sets`
    and at most `max_bytes` in total; an input set larger than the cache gets one copy.
    `make(i)` builds copy i (use i as the seed so that copies differ).
    """

    def __init__(self, make: Callable[[int], Any], set_bytes: int, device: Any, *,
                 max_sets: int = 16, max_bytes: int = 2**30) -> None:
        cache = last_level_cache_bytes(device)
        wanted = math.ceil(2 * cache / max(set_bytes, 1)) if set_bytes < 2 * cache else 1
        by_memory = max(1, max_bytes // max(set_bytes, 1))
        self.count = int(max(1, min(wanted, max_sets, by_memory)))
        self.sets = [make(i) for i in range(self.count)]
        self._index = 0

    def next(self) -> Any:
        item = self.sets[self._index]
        self._index = (self._index + 1) % self.count
        return item


# ------------------------------------------------------------------------------------------------
# provenance


def _git(args: list[str], cwd: Path) -> Optional[str]:
    # Read-only queries only; --no-optional-locks keeps `status` from refreshing the index.
    try:
        out = subprocess.run(["git", "--no-optional-locks", *args], cwd=cwd, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_revision() -> dict:
    """Commit and dirty flag of the checkout this package runs from (or of the cwd)."""
    info: dict[str, Any] = {
        "commit": os.environ.get("AITS_BENCH_COMMIT") or None,
        "source_digest": os.environ.get("AITS_BENCH_SOURCE_DIGEST") or None,
    }
    package_dir = Path(__file__).resolve().parent
    for where in (package_dir, Path.cwd()):
        commit = _git(["rev-parse", "HEAD"], where)
        if commit:
            info["commit"] = info["commit"] or commit
            status = _git(["status", "--porcelain", "--untracked-files=no"], where)
            info["dirty"] = bool(status) if status is not None else None
            info["git_dir"] = str(where)
            break
    if info["commit"] is None:
        info["commit"] = "unknown"
    return info


def device_name(device: Any) -> str:
    device = _as_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} logical CPUs)"


def _versions() -> dict:
    versions: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "numpy", "rebound"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except Exception:
            versions[name] = None
    try:
        import aitimestepper

        versions["aitimestepper"] = aitimestepper.__version__
        versions["build_info"] = aitimestepper.build_info()
    except Exception as error:  # a broken build must not stop the recording of what ran
        versions["build_info"] = {"error": repr(error)}
    return versions


def thread_info() -> dict:
    """What each thread pool was told: torch's intra-op pool, OpenMP's environment, _core's view."""
    info: dict[str, Any] = {
        "torch_num_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
    }
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    info["affinity_cpus"] = affinity
    try:
        from aitimestepper.ops.backends import _core

        if _core is not None:
            info["core_openmp_max_threads"] = _core.build_info().get("openmp_max_threads")
    except Exception:
        pass
    return info


_STATIC_PROVENANCE: dict[str, dict] = {}


def provenance(device: Any = None) -> dict:
    """Where and with what a number was measured; cached per device except for the live parts."""
    device = _as_device(device)
    key = str(device)
    if key not in _STATIC_PROVENANCE:
        static = {
            "device": str(device),
            "device_name": device_name(device),
            "host": socket.gethostname(),
            "platform": platform.platform(),
            **source_revision(),
            "versions": _versions(),
        }
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            static["gpu"] = {
                "multiprocessors": props.multi_processor_count,
                "memory_bytes": props.total_memory,
                "capability": f"{props.major}.{props.minor}",
                "l2_bytes": getattr(props, "L2_cache_size", None),
            }
        _STATIC_PROVENANCE[key] = static
    live = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": thread_info(),
    }
    try:
        live["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return {**_STATIC_PROVENANCE[key], **live}


# ------------------------------------------------------------------------------------------------
# rows and the results file


def new_run_id() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def _json_safe(value: Any) -> Any:
    """Strict JSON: non-finite floats become null (a NaN rate means the case went wrong)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def make_row(*, suite: str, run_id: str, case: str, backend: Optional[str] = None,
             params: Optional[dict] = None, timing: Optional[Timing] = None,
             metrics: Optional[dict] = None, primary: Optional[str] = None,
             notes: Iterable[str] = (), error: Optional[str] = None,
             skipped: Optional[str] = None, device: Any = None, **extra: Any) -> dict:
    row = {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "suite": suite,
        "case": case,
        "backend": backend,
        "params": params or {},
        "timing": timing.as_dict() if timing is not None else None,
        "metrics": metrics or {},
        "primary": primary,
        "notes": list(notes),
    }
    if error is not None:
        row["error"] = error
    if skipped is not None:
        row["skipped"] = skipped
    row.update(extra)
    row["provenance"] = provenance(device)
    return _json_safe(row)


class ResultLog:
    """Appends rows of one run to a JSON-lines file (created with its folder if needed)."""

    def __init__(self, path: str | os.PathLike, *, suite: str, run_id: Optional[str] = None,
                 device: Any = None) -> None:
        self.path = Path(path)
        self.suite = suite
        self.run_id = run_id or new_run_id()
        self.device = device
        self.rows: list[dict] = []

    def write(self, row: dict) -> dict:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row, allow_nan=False) + "\n")
        self.rows.append(row)
        return row

    def append(self, *, case: str, **fields: Any) -> dict:
        fields.setdefault("device", self.device)
        return self.write(make_row(suite=self.suite, run_id=self.run_id, case=case, **fields))

    def append_target(self, target: dict, **fields: Any) -> dict:
        fields.setdefault("device", self.device)
        return self.write(make_row(suite=self.suite, run_id=self.run_id, case="target",
                                   target=target, **fields))


def read_rows(path: str | os.PathLike, run_id: Optional[str] = None) -> list[dict]:
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if run_id is None or row.get("run_id") == run_id:
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# targets and tables


@dataclass
class Target:
    """A goal such as ">= 2e9 pair interactions/s" or "<= 3x the forward"."""

    name: str
    direction: str  # ">=" or "<="
    threshold: Optional[float]
    unit: str = ""

    def evaluate(self, achieved: Optional[float], note: str = "") -> dict:
        if self.direction not in (">=", "<="):
            raise ValueError(f"direction must be '>=' or '<=', got {self.direction!r}")
        result = {"name": self.name, "direction": self.direction, "threshold": self.threshold,
                  "unit": self.unit, "achieved": achieved, "ratio": None, "status": "N/A",
                  "note": note}
        if achieved is None or self.threshold is None or not math.isfinite(achieved):
            return result
        result["ratio"] = achieved / self.threshold if self.threshold else float("inf")
        ok = achieved >= self.threshold if self.direction == ">=" else achieved <= self.threshold
        result["status"] = "PASS" if ok else "MISS"
        return result


def si(value: Optional[float], digits: int = 3) -> str:
    """1.23e9-style numbers for tables; '-' for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if value == 0:
        return "0"
    if 1e-2 <= abs(value) < 1e3:
        return f"{value:.{digits}g}"
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def seconds(value: Optional[float]) -> str:
    if value is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, Callable[[dict], Any]]]) -> str:
    """Fixed-width text table; each column is (header, row -> value)."""
    cells = [[str(header) for header, _ in columns]]
    for row in rows:
        line = []
        for _, getter in columns:
            try:
                value = getter(row)
            except (KeyError, TypeError, IndexError):
                value = None
            line.append("-" if value is None else str(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = []
    for index, line in enumerate(cells):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _spread(row: dict) -> Optional[str]:
    t = row.get("timing")
    if not t or t.get("iqr_rel") is None:
        return None
    return f"{100 * t['iqr_rel']:.0f}%"


DEFAULT_COLUMNS: list[tuple[str, Callable[[dict], Any]]] = [
    ("case", lambda r: r["case"]),
    ("backend", lambda r: r.get("backend")),
    ("time", lambda r: seconds(r["timing"]["median_s"]) if r.get("timing") else r.get("skipped") or r.get("error")),
    ("IQR", _spread),
    ("metric", lambda r: r.get("primary")),
    ("value", lambda r: si(r["metrics"].get(r["primary"])) if r.get("primary") else None),
]

TARGET_COLUMNS: list[tuple[str, Callable[[dict], Any]]] = [
    ("target", lambda r: r["target"]["name"]),
    ("goal", lambda r: f"{r['target']['direction']} {si(r['target']['threshold'])} {r['target']['unit']}".strip()),
    ("achieved", lambda r: si(r["target"]["achieved"])),
    ("ratio", lambda r: si(r["target"]["ratio"])),
    ("status", lambda r: r["target"]["status"]),
    ("note", lambda r: r["target"].get("note") or None),
]
