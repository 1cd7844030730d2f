"""Shared test parameters for the ops: backends x dtypes with skips, test systems, the tolerance policy.

Every compiled backend is compared with `ops/reference.py` run in float64 (the oracle). The
tolerance is a policy, stated once here in `allowed_error` (docs/design.md, "Tests"):

- a float64 backend agrees with the float64 reference to FLOAT64_RTOL = 1e-12, norm-wise
  (||out - ref|| / ||ref||);
- a float32 backend's norm-wise error is at most FLOAT32_FACTOR = 2 times the error of the
  reference itself run in float32 on the same inputs (computed in each test), plus a floor of
  FLOAT32_FLOOR = four float32 ulp (4 * 2^-23 ~ 4.8e-7) relative. The floor exists because the
  float32 reference can be lucky: for two or three bodies its error can be a fraction of an
  ulp, and a correct kernel that rounds differently must not fail for that. The GPU kernels use
  the hardware rsqrt (about 2 ulp), cubed in 1/s^3: a correct kernel can then be several ulp
  off where the float32 reference is nearly exact (3e-7 against 5e-8 at N = 3), so one ulp is
  too tight a floor. Four ulp is still far below any real bug, which shows as 1e-4 or more.

Backends: "reference" always runs; "cpu" needs the compiled module `aitimestepper._core`;
"cuda" needs a GPU and a CUDA build; "triton" needs a GPU or the Triton interpreter. On a
machine without a GPU this file turns the interpreter on (TRITON_INTERPRET=1, unless the
variable is already set) before anything imports triton, so CI exercises the Triton kernels
on CPU tensors at small sizes; large interpreted cases skip with a reason.

Test modules import the helpers with `from conftest import ...` (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import pytest
import torch

# Before anything imports triton: triton.jit reads this when the kernels are defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import aitimestepper  # noqa: E402
from aitimestepper.ops import backends as _backends  # noqa: E402

COMPILED_BACKENDS = ("cpu", "cuda", "triton")
ALL_BACKENDS = ("reference",) + COMPILED_BACKENDS
DTYPES = (torch.float32, torch.float64)

FLOAT64_RTOL = 1e-12
FLOAT32_FACTOR = 2.0
FLOAT32_FLOOR = 4 * torch.finfo(torch.float32).eps

# The Triton interpreter costs milliseconds of NumPy per program and tile (a tenth of a second
# or more per call): cap the bodies per call it is given, and run its float32 / variant grids
# only where they exercise something the smaller grids do not.
INTERPRETED_TRITON_MAX_BODIES = 256


def pytest_configure(config):
    # The Triton interpreter (triton 3.6 with NumPy >= 1.25) warns on every scalar it indexes;
    # thousands of these per run bury the warnings that matter.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:Conversion of an array with ndim > 0 to a scalar is deprecated:DeprecationWarning",
    )


# ---------------------------------------------------------------------------------------------
# run order and a timing log that survives a timeout


def pytest_collection_modifyitems(session, config, items):
    """Tests marked `compiles` first (a stable sort, so the order is otherwise unchanged).

    Their time goes into compiling Triton kernels nothing else uses. pytest-xdist hands out
    tests about in file order, where most of them come last, so a few long tests would make the
    run's tail. Run first, they are spread over the workers while the short tests fill the
    gaps; that takes --maxschedchunk 1 (gpu_check.sh passes it), since by default xdist's first
    hand-out gives each worker a quarter of its share as one consecutive run, which can put all
    of them on one worker."""
    items.sort(key=lambda item: item.get_closest_marker("compiles") is None)


def _log_test_event(**fields) -> None:
    """With AITS_TEST_TIMINGS=path, append one JSON line per test start and phase end, flushed as
    it happens: a run cut off by a timeout (pytest's --durations then prints nothing) still says
    what ran, how long each took and what was in flight. Under pytest-xdist only the controller
    writes (its workers report every phase to it)."""
    path = os.environ.get("AITS_TEST_TIMINGS")
    if not path or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    with open(path, "a") as log:
        log.write(json.dumps({"t": round(time.time(), 3), **fields}) + "\n")


def pytest_runtest_logstart(nodeid, location):
    _log_test_event(test=nodeid, when="start")


def pytest_runtest_logreport(report):
    worker = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", None)
    _log_test_event(test=report.nodeid, when=report.when, outcome=report.outcome,
                    seconds=round(report.duration, 3), worker=worker)


# ---------------------------------------------------------------------------------------------
# backends


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def backend_skip_reason(backend: str) -> Optional[str]:
    """Why `backend` cannot run on this machine, or None when it can."""
    core = _backends._core
    if backend == "reference":
        return None
    if backend == "cpu":
        if core is None:
            return f"cpu backend: the compiled module aitimestepper._core is not importable ({_backends._core_import_error})"
        return None
    if backend == "cuda":
        if not torch.cuda.is_available():
            return "cuda backend: no CUDA GPU on this machine (runs on a GPU machine)"
        if core is None or not hasattr(core, "cuda_acceleration"):
            return "cuda backend: aitimestepper._core was built without the CUDA kernels"
        if core.cuda_device_count() == 0:
            return "cuda backend: the CUDA runtime in _core sees no device"
        return None
    if backend == "triton":
        if not _triton_importable():
            return "triton backend: the triton package is not installed"
        from aitimestepper.ops.triton import mode

        if mode() is None:
            return "triton backend: no GPU and TRITON_INTERPRET is not set"
        return None
    raise ValueError(f"unknown backend {backend!r}")


def require_backend(backend: str) -> None:
    reason = backend_skip_reason(backend)
    if reason is not None:
        pytest.skip(reason)


def device_for(backend: str) -> torch.device:
    """Where a backend's inputs live: CUDA for cuda (and triton on a GPU), else the CPU."""
    from aitimestepper.ops.triton import mode

    if backend == "cuda" or (backend == "triton" and mode() == "gpu"):
        return torch.device("cuda")
    return torch.device("cpu")


def is_interpreted(backend: str) -> bool:
    from aitimestepper.ops.triton import mode

    return backend == "triton" and mode() == "interpreter"


def skip_if_too_large_for_interpreter(backend: str, N: int, batch_shape: Sequence[int] = ()) -> None:
    bodies = N * math.prod(batch_shape)
    if is_interpreted(backend) and bodies > INTERPRETED_TRITON_MAX_BODIES:
        pytest.skip(f"triton interpreter on CPU: {bodies} bodies per call > {INTERPRETED_TRITON_MAX_BODIES} "
                    "is too slow here; runs on a GPU")


def skip_float32_in_interpreter(backend: str, dtype: torch.dtype) -> None:
    """For grids whose float32 cases add nothing the shape grid's float32 cases do not cover."""
    if is_interpreted(backend) and dtype == torch.float32:
        pytest.skip("triton interpreter on CPU: float32 is covered by the shape grid here; "
                    "this grid runs in both dtypes on a GPU")


@pytest.fixture(params=COMPILED_BACKENDS)
def backend(request) -> str:
    """A compiled backend (cpu, cuda, triton), skipped with a reason where it cannot run."""
    require_backend(request.param)
    return request.param


@pytest.fixture(params=ALL_BACKENDS)
def any_backend(request) -> str:
    """Every backend including the reference."""
    require_backend(request.param)
    return request.param


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


# ---------------------------------------------------------------------------------------------
# test systems


@dataclass
class System:
    """pos/vel [*batch, N, D], mass [*batch, N], all of one dtype on the CPU."""

    pos: torch.Tensor
    vel: torch.Tensor
    mass: torch.Tensor

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "System":
        return System(*(t.to(dtype=dtype, device=device) for t in (self.pos, self.vel, self.mass)))

    def double(self) -> "System":
        return self.to(torch.float64, "cpu")


def make_system(N: int, D: int, batch_shape: Sequence[int] = (), *, dtype: torch.dtype = torch.float64,
                seed: int = 0, vel_scale: float = 0.1) -> System:
    """A well-separated random system in the box [-0.5, 0.5]^D, total mass about 1.

    Bodies sit on distinct sites of a lattice of spacing h, jittered by at most 0.3 h, so no two
    are closer than 0.4 h: unsoftened gravity stays tame and the few steps a test takes do not
    amplify round-off (the float64 comparisons can then be held to 1e-12). Values are rounded
    to `dtype`, so the float64 oracle sees exactly what a float32 backend sees.
    """
    g = torch.Generator().manual_seed(seed)
    B = math.prod(batch_shape)
    side = 1
    while side**D < N:
        side += 1
    h = 1.0 / side
    axes = [torch.arange(side, dtype=torch.float64)] * D
    sites = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, D)
    chosen = torch.stack([torch.randperm(sites.shape[0], generator=g)[:N] for _ in range(B)])
    jitter = 0.6 * (torch.rand(B, N, D, generator=g, dtype=torch.float64) - 0.5)
    pos = (sites[chosen] + 0.5 + jitter) * h - 0.5
    vel = vel_scale * torch.randn(B, N, D, generator=g, dtype=torch.float64)
    mass = (0.5 + torch.rand(B, N, generator=g, dtype=torch.float64)) / N
    shape = (*batch_shape, N)
    return System(pos.reshape(*shape, D), vel.reshape(*shape, D), mass.reshape(shape)).to(dtype)


def kepler_system(eccentricities: Sequence[float], *, a: float = 1.0, m: float = 0.5, G: float = 1.0,
                  D: int = 2) -> System:
    """Two equal masses m at pericentre, one system per eccentricity: [B, 2, D].

    Separation r_p = a(1 - e), relative speed v_p = sqrt(G 2m (1 + e) / (a (1 - e))); body 0 at
    (-r_p/2, 0) moving +y with v_p/2, body 1 opposite. The centre of mass rests at the origin.
    """
    B = len(eccentricities)
    pos = torch.zeros(B, 2, D, dtype=torch.float64)
    vel = torch.zeros(B, 2, D, dtype=torch.float64)
    for k, e in enumerate(eccentricities):
        r_p = a * (1.0 - e)
        v_p = math.sqrt(G * 2.0 * m * (1.0 + e) / (a * (1.0 - e)))
        pos[k, 0, 0], pos[k, 1, 0] = -r_p / 2, r_p / 2
        vel[k, 0, 1], vel[k, 1, 1] = v_p / 2, -v_p / 2
    return System(pos, vel, torch.full((B, 2), m, dtype=torch.float64))


def kepler_period(*, a: float = 1.0, m: float = 0.5, G: float = 1.0) -> float:
    """T = 2 pi sqrt(a^3 / (G 2m))."""
    return 2.0 * math.pi * math.sqrt(a**3 / (G * 2.0 * m))


def tidal_field(D: int) -> aitimestepper.TidalField:
    """A point mass outside the unit box, strong enough that its pull is a few % of the self-gravity."""
    return aitimestepper.TidalField(mass=3.0, position=(2.0, -1.5, 1.0)[:D])


# ---------------------------------------------------------------------------------------------
# the tolerance policy


def relative_error(actual: torch.Tensor, oracle: torch.Tensor) -> float:
    """||actual - oracle|| / ||oracle||, in float64 on the CPU (absolute when the oracle is 0)."""
    a = actual.detach().to("cpu", torch.float64)
    o = oracle.detach().to("cpu", torch.float64)
    scale = o.norm().item()
    diff = (a - o).norm().item()
    return diff / scale if scale > 0 else diff


def allowed_error(dtype: torch.dtype, reference32_error: Optional[float] = None) -> float:
    """The largest norm-wise relative error a backend may show against the float64 reference."""
    if dtype == torch.float64:
        return FLOAT64_RTOL
    if dtype == torch.float32:
        if reference32_error is None:
            raise ValueError("a float32 comparison needs the error of the reference run in float32")
        return FLOAT32_FACTOR * reference32_error + FLOAT32_FLOOR
    raise ValueError(f"no tolerance policy for {dtype}")


def assert_matches_reference(actual: torch.Tensor, oracle: torch.Tensor,
                             reference32: Optional[torch.Tensor] = None, *, what: str = "") -> None:
    """Check `actual` (a backend's output) against `oracle` (reference, float64) under the policy.

    `reference32` is the reference backend's output on the same float32 inputs; it is required
    when `actual` is float32 and sets that case's tolerance.
    """
    assert tuple(actual.shape) == tuple(oracle.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(oracle.shape)}"
    assert bool(torch.isfinite(actual).all()), f"{what}: non-finite values in the backend's output"
    error = relative_error(actual, oracle)
    reference32_error = relative_error(reference32, oracle) if reference32 is not None else None
    bound = allowed_error(actual.dtype, reference32_error)
    detail = f", reference float32 error {reference32_error:.3e}" if reference32_error is not None else ""
    assert error <= bound, f"{what}: {actual.dtype} relative error {error:.3e} > allowed {bound:.3e}{detail}"
