"""What the build says about itself: build_info(), backends(), the compiled module, `aitimestepper info`."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

import aitimestepper
from aitimestepper.ops import backends as backend_table
from conftest import backend_skip_reason, device_for, require_backend

CORE_KEYS = {"version", "compiler", "openmp", "openmp_max_threads", "cuda", "cuda_runtime_version", "cuda_architectures"}


def test_build_info_describes_the_compiled_module():
    require_backend("cpu")
    info = aitimestepper.build_info()
    assert CORE_KEYS <= set(info), f"missing keys: {sorted(CORE_KEYS - set(info))}"
    assert info["version"] == aitimestepper.__version__
    assert isinstance(info["openmp"], bool) and isinstance(info["cuda"], bool)
    assert isinstance(info["compiler"], str) and info["compiler"]
    if info["openmp"]:
        assert isinstance(info["openmp_max_threads"], int) and info["openmp_max_threads"] >= 1
    # cuda says whether the CUDA kernels are compiled in, and the module then binds them.
    assert info["cuda"] == hasattr(backend_table._core, "cuda_acceleration")


def test_build_info_adds_what_this_process_can_use():
    info = aitimestepper.build_info()
    assert info["torch"] == torch.__version__
    assert info["backends"] == aitimestepper.backends()
    try:
        import triton
    except Exception:
        assert info["triton"] is None
    else:
        assert info["triton"] == triton.__version__
    if backend_table._core is None:
        assert "error" in info, "without the compiled module build_info must say why"


def test_cuda_device_count_never_raises():
    require_backend("cpu")
    count = backend_table._core.cuda_device_count()
    assert isinstance(count, int) and count >= 0
    if not torch.cuda.is_available():
        assert count == 0


def test_backends_lists_exactly_what_can_run_here():
    names = aitimestepper.backends()
    assert names[0] == "reference"
    assert len(names) == len(set(names))
    assert set(names) <= {"reference", "cpu", "cuda", "triton"}
    for name in ("cpu", "cuda", "triton"):
        assert (name in names) == (backend_skip_reason(name) is None), (
            f"backends() {'lists' if name in names else 'omits'} {name!r}; the tests' reason: {backend_skip_reason(name)}")


def test_every_listed_backend_runs():
    pos = torch.tensor([[-0.5, 0.0], [0.5, 0.0]], dtype=torch.float64)
    mass = torch.ones(2, dtype=torch.float64)
    for name in aitimestepper.backends():
        device = device_for(name)
        acc = aitimestepper.ops.acceleration(pos.to(device), mass.to(device), backend=name).cpu()
        torch.testing.assert_close(acc, torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64), rtol=1e-15, atol=0.0)


def test_cli_info_prints_the_build_info():
    # The child inherits this environment (PYTHONPATH, TRITON_INTERPRET), so it sees the same package.
    result = subprocess.run([sys.executable, "-m", "aitimestepper", "info"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == json.loads(json.dumps(aitimestepper.build_info(), default=str))

