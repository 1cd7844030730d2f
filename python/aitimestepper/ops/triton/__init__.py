"""Triton backend: the five kernels of docs/kernel-contract.md as Python functions on tensors.

    acceleration(pos, mass, out, physics)
    potential_energy(pos, mass, out, physics)
    acceleration_vjp(pos, mass, grad_acc, out, physics)
    step(pos, vel, mass, dt, out_pos, out_vel, trajectory_or_None, steps, integrator_index, physics)
    step_backward(trajectory, mass, dt, grad_pos, grad_vel, out_grad_pos, out_grad_vel, out_grad_dt,
                  steps, integrator_index, physics)

Tensors are contiguous, of one dtype (float32 or float64), with the contract's shapes; outputs
are preallocated by the ops layer and written in place. physics = (G, softening, field_mass, Rx,
Ry, Rz). They run on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1.

Importing this package does not import triton: the kernel modules load on the first call, so a
machine without triton can import aitimestepper, and TRITON_INTERPRET=1 (which triton reads when
the kernels are defined) only has to be set before that first call. `available()` says whether
the kernels can run here and, if not, why; `mode()` is the one place that decides between
Triton's interpreter and the GPU (everything else, tests included, asks it).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

__all__ = ["acceleration", "potential_energy", "acceleration_vjp", "step", "step_backward", "available",
           "mode", "interpreter_requested"]


def interpreter_requested() -> bool:
    """Whether TRITON_INTERPRET asks for Triton's interpreter (read as triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def mode() -> Optional[str]:
    """Where the Triton kernels run in this process: "interpreter" when TRITON_INTERPRET asks for
    it (on CPU tensors, GPU or not), "gpu" on a CUDA GPU otherwise, None when neither."""
    import torch

    if interpreter_requested():
        return "interpreter"
    return "gpu" if torch.cuda.is_available() else None


def available() -> tuple[bool, str]:
    """(True, "") when the Triton kernels can run here, else (False, the reason)."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install 'aitimestepper[triton]')"
    if mode() is not None:
        return True, ""
    return False, "no CUDA GPU, and TRITON_INTERPRET=1 was not set before triton was first imported"


def acceleration(pos, mass, out, physics) -> None:
    """out[B, N, D] = softened gravity (+ tidal field) at pos[B, N, D], masses mass[B, N]."""
    from . import pairwise

    pairwise.acceleration(pos, mass, out, physics)


def potential_energy(pos, mass, out, physics) -> None:
    """out[B] = -G sum_{i<j} m_i m_j / s_ij (+ sum_i m_i Phi(x_i)); deterministic reduction."""
    from . import pairwise

    pairwise.potential_energy(pos, mass, out, physics)


def acceleration_vjp(pos, mass, grad_acc, out, physics) -> None:
    """out[B, N, D] = (d acceleration / d pos)^T grad_acc (pair terms and tidal field)."""
    from . import pairwise

    pairwise.acceleration_vjp(pos, mass, grad_acc, out, physics)


def step(pos, vel, mass, dt, out_pos, out_vel, trajectory, steps, integrator_index, physics) -> None:
    """`steps` steps of the integrator (0 leapfrog, 1 yoshida4) with per-system dt[B]; records
    trajectory[S+1, 3, B, N, D] (x, v, a at every substep boundary) when it is not None."""
    from . import integrate

    integrate.step(pos, vel, mass, dt, out_pos, out_vel, trajectory, steps, integrator_index, physics)


def step_backward(trajectory, mass, dt, grad_pos, grad_vel, out_grad_pos, out_grad_vel, out_grad_dt,
                  steps, integrator_index, physics) -> None:
    """Adjoint of `step` (docs/kernel-contract.md): gradients w.r.t. initial pos, vel and dt."""
    from . import integrate

    integrate.step_backward(trajectory, mass, dt, grad_pos, grad_vel, out_grad_pos, out_grad_vel,
                            out_grad_dt, steps, integrator_index, physics)
