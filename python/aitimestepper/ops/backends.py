"""The backend table: which kernels run an op, and what this machine can use.

Every compiled backend provides the five kernels of docs/kernel-contract.md on flattened,
contiguous tensors (pos/vel [B, N, D], mass [B, N], dt [B]) and writes into preallocated
outputs. `cpu` and `cuda` call the pybind11 module `_core` with raw pointers; `triton` calls
the Triton kernels in ops/triton/ (imported only when first used). The `reference` backend is
not in this table: the public ops call ops/reference.py directly and let autograd do the rest.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from ..errors import BackendUnavailableError, InputError

try:  # The compiled module is part of every install; a source checkout without a build lacks it.
    from .. import _core
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    _core = None
    _core_import_error: Optional[ImportError] = error
else:
    _core_import_error = None


class CompiledBackend:
    """The `cpu_*` or `cuda_*` functions of `_core`, called with data pointers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._prefix = name + "_"

    def _call(self, kernel: str, like: torch.Tensor, *args: object) -> None:
        """Run `<prefix><kernel>(*args)`; CUDA kernels go on torch's current stream of `like`'s device."""
        function = getattr(_core, self._prefix + kernel)
        if self.name == "cuda":
            with torch.cuda.device(like.device):
                function(*args, torch.cuda.current_stream(like.device).cuda_stream)
        else:
            function(*args)

    def acceleration(self, pos, mass, out, physics) -> None:
        B, N, D = pos.shape
        self._call("acceleration", pos, pos.data_ptr(), mass.data_ptr(), out.data_ptr(), B, N, D,
                   tuple(physics), pos.dtype == torch.float64)

    def potential_energy(self, pos, mass, out, physics) -> None:
        B, N, D = pos.shape
        self._call("potential_energy", pos, pos.data_ptr(), mass.data_ptr(), out.data_ptr(), B, N, D,
                   tuple(physics), pos.dtype == torch.float64)

    def acceleration_vjp(self, pos, mass, grad_acc, out, physics) -> None:
        B, N, D = pos.shape
        self._call("acceleration_vjp", pos, pos.data_ptr(), mass.data_ptr(), grad_acc.data_ptr(),
                   out.data_ptr(), B, N, D, tuple(physics), pos.dtype == torch.float64)

    def step(self, pos, vel, mass, dt, out_pos, out_vel, trajectory, steps, integrator, physics) -> None:
        B, N, D = pos.shape
        self._call("step", pos, pos.data_ptr(), vel.data_ptr(), mass.data_ptr(), dt.data_ptr(),
                   out_pos.data_ptr(), out_vel.data_ptr(),
                   trajectory.data_ptr() if trajectory is not None else 0,
                   B, N, D, steps, integrator, tuple(physics), pos.dtype == torch.float64)

    def step_backward(self, trajectory, mass, dt, grad_pos, grad_vel, out_grad_pos, out_grad_vel,
                      out_grad_dt, steps, integrator, physics) -> None:
        B, N, D = grad_pos.shape
        self._call("step_backward", grad_pos, trajectory.data_ptr(), mass.data_ptr(), dt.data_ptr(),
                   grad_pos.data_ptr(), grad_vel.data_ptr(), out_grad_pos.data_ptr(),
                   out_grad_vel.data_ptr(), out_grad_dt.data_ptr(), B, N, D, steps, integrator,
                   tuple(physics), grad_pos.dtype == torch.float64)


def call_cuda(function, device: torch.device, *args: object) -> None:
    """Call a `_core.cuda_*` function with torch's current stream of `device` as its last argument
    (read at each call: a CUDA graph captures from its own stream), with `device` current."""
    if device.index != torch.cuda.current_device():
        with torch.cuda.device(device):
            function(*args, torch.cuda.current_stream(device).cuda_stream)
    else:
        function(*args, torch.cuda.current_stream(device).cuda_stream)


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _triton_interpreted() -> bool:
    from .triton import interpreter_requested

    return interpreter_requested()


@functools.lru_cache(maxsize=None)
def cuda_kernels_usable() -> bool:
    return (
        _core is not None
        and hasattr(_core, "cuda_acceleration")
        and _core.cuda_device_count() > 0
        and torch.cuda.is_available()
    )


@functools.lru_cache(maxsize=None)
def _triton_module():
    from . import triton as triton_kernels

    return triton_kernels


def available_backends() -> list[str]:
    """Backends usable on this machine, in order of preference after `reference`."""
    names = ["reference"]
    if _core is not None:
        names.append("cpu")
    if cuda_kernels_usable():
        names.append("cuda")
    if _triton_importable() and (torch.cuda.is_available() or _triton_interpreted()):
        names.append("triton")
    return names


def resolve(backend: str, device: torch.device) -> str:
    """Turn `auto` into a concrete name and check that the backend can run on `device`."""
    if backend == "auto":
        if device.type == "cuda":
            if cuda_kernels_usable():
                return "cuda"
            raise BackendUnavailableError(
                "tensors are on CUDA but the CUDA kernels are not usable here "
                f"(built with CUDA: {bool(_core is not None and hasattr(_core, 'cuda_acceleration'))}); "
                "pass backend='triton' or backend='reference'"
            )
        if device.type == "cpu":
            if _core is None:
                raise BackendUnavailableError(f"the compiled module failed to import: {_core_import_error}")
            return "cpu"
        raise InputError(f"no backend runs on device type {device.type!r}")
    if backend == "cpu":
        if device.type != "cpu":
            raise InputError(f"backend 'cpu' needs CPU tensors, got tensors on {device}")
        if _core is None:
            raise BackendUnavailableError(f"the compiled module failed to import: {_core_import_error}")
    elif backend == "cuda":
        if device.type != "cuda":
            raise InputError(f"backend 'cuda' needs CUDA tensors, got tensors on {device}")
        if not cuda_kernels_usable():
            raise BackendUnavailableError("backend 'cuda' is not usable here (no CUDA build or no GPU)")
    elif backend == "triton":
        if not _triton_importable():
            raise BackendUnavailableError("backend 'triton' needs the triton package (pip install aitimestepper[triton])")
        if device.type == "cpu" and not _triton_interpreted():
            raise BackendUnavailableError(
                "backend 'triton' runs on CPU tensors only under the interpreter: set TRITON_INTERPRET=1 before importing triton"
            )
    return backend


_COMPILED = {"cpu": CompiledBackend("cpu"), "cuda": CompiledBackend("cuda")}


def kernels(backend: str):
    """The kernel table for a concrete backend name (`cpu`, `cuda` or `triton`)."""
    if backend == "triton":
        return _triton_module()
    return _COMPILED[backend]


def build_info() -> dict:
    """What the compiled module contains, plus what this process can use."""
    info = dict(_core.build_info()) if _core is not None else {"error": str(_core_import_error)}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    info["torch"] = torch.__version__
    info["backends"] = available_backends()
    return info
