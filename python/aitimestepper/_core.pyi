"""Type stubs of aitimestepper._core, the compiled kernels (csrc/module.cpp).

Pointers are Python ints (tensor.data_ptr()); shapes and semantics are those of
docs/kernel-contract.md. The cuda_* functions exist only in a CUDA build and take torch's
current stream (torch.cuda.current_stream().cuda_stream) last.
"""
from typing import Any

def build_info() -> dict[str, Any]:
    """What this build of the compiled module contains."""

def cpu_acceleration(
    pos: int, mass: int, out_acc: int, B: int, N: int, D: int, physics: tuple[float, ...],
    double_precision: bool,
) -> None:
    """Softened gravity (+ tidal field): out_acc[B,N,D]."""

def cpu_acceleration_vjp(
    pos: int, mass: int, grad_acc: int, out_grad_pos: int, B: int, N: int, D: int,
    physics: tuple[float, ...], double_precision: bool,
) -> None:
    """(d acc / d pos)^T grad_acc: out_grad_pos[B,N,D]."""

def cpu_scaled_features(
    pos: int, vel: int, mass: int, acc: int, out: int, tau: int, B: int, N: int, D: int, G: float,
    softening: float, double_precision: bool, flyby: bool = False,
) -> None:
    """The scaled feature block of features.py (out[B,13], or none for out = 0) and the step
    time tau[B] (with flyby: the encounter time)."""

def cpu_mlp_forward(
    x: int, out: int, rows: int, layers: list[tuple[int, int, int, int, int]], double_precision: bool,
) -> None:
    """The step network's forward for a few rows (layers: (weight, bias, in, out, activation))."""

def cpu_carried_step(
    pos: int, vel: int, acc: int, mass: int, dt: int, B: int, N: int, D: int, integrator: int,
    physics: tuple[float, ...], double_precision: bool,
) -> None:
    """One step in place on pos, vel, acc [B,N,D], carrying the acceleration (acc = a(pos))."""

def cpu_symmetric_step(f: int, rho: int, h: int, n: int, double_precision: bool) -> None:
    """The symmetric step rule of simulate.py: h[n] from f[n] and rho[n] = 1/previous h (in place)."""

def cpu_check_values(
    pos: int, vel: int, mass: int, dt: int, B: int, N: int, D: int, check_coincident: bool,
    double_precision: bool,
) -> int:
    """Value checks of a CPU batch: 0 or a ValueCheck."""

def cpu_potential_energy(
    pos: int, mass: int, out_energy: int, B: int, N: int, D: int, physics: tuple[float, ...],
    double_precision: bool,
) -> None:
    """Potential energy (pairs + tidal field): out_energy[B]."""

def cpu_state_features(
    pos: int, vel: int, mass: int, acc: int, column_scale: int, out: int, B: int, N: int, D: int,
    rich: bool, tail: float, double_precision: bool,
) -> None:
    """The basic/rich state feature block of features.py: out[B,11] or out[B,23]."""

def cpu_step(
    pos: int, vel: int, mass: int, dt: int, out_pos: int, out_vel: int, trajectory: int, B: int,
    N: int, D: int, steps: int, integrator: int, physics: tuple[float, ...],
    double_precision: bool,
) -> None:
    """`steps` fused steps: out_pos, out_vel [B,N,D]; trajectory [S+1,3,B,N,D] unless 0."""

def cpu_step_backward(
    trajectory: int, mass: int, dt: int, grad_pos: int, grad_vel: int, out_grad_pos: int,
    out_grad_vel: int, out_grad_dt: int, B: int, N: int, D: int, steps: int, integrator: int,
    physics: tuple[float, ...], double_precision: bool,
) -> None:
    """Adjoint of step over its trajectory: out_grad_pos, out_grad_vel [B,N,D], out_grad_dt [B]."""

def cuda_acceleration(
    pos: int, mass: int, out_acc: int, B: int, N: int, D: int, physics: tuple[float, ...],
    double_precision: bool, stream: int,
) -> None:
    """Softened gravity (+ tidal field): out_acc[B,N,D]."""

def cuda_acceleration_vjp(
    pos: int, mass: int, grad_acc: int, out_grad_pos: int, B: int, N: int, D: int,
    physics: tuple[float, ...], double_precision: bool, stream: int,
) -> None:
    """(d acc / d pos)^T grad_acc: out_grad_pos[B,N,D]."""

def cuda_device_count() -> int:
    """Number of visible CUDA devices; 0 without CUDA support, GPU or driver (never raises)."""

def cuda_potential_energy(
    pos: int, mass: int, out_energy: int, B: int, N: int, D: int, physics: tuple[float, ...],
    double_precision: bool, stream: int,
) -> None:
    """Potential energy (pairs + tidal field): out_energy[B]."""

def cuda_step(
    pos: int, vel: int, mass: int, dt: int, out_pos: int, out_vel: int, trajectory: int, B: int,
    N: int, D: int, steps: int, integrator: int, physics: tuple[float, ...],
    double_precision: bool, stream: int,
) -> None:
    """`steps` fused steps: out_pos, out_vel [B,N,D]; trajectory [S+1,3,B,N,D] unless 0."""

def cuda_step_backward(
    trajectory: int, mass: int, dt: int, grad_pos: int, grad_vel: int, out_grad_pos: int,
    out_grad_vel: int, out_grad_dt: int, B: int, N: int, D: int, steps: int, integrator: int,
    physics: tuple[float, ...], double_precision: bool, stream: int,
) -> None:
    """Adjoint of step over its trajectory: out_grad_pos, out_grad_vel [B,N,D], out_grad_dt [B]."""

CUDA_SCALED_FEATURES_MAX_N: int

def cuda_scaled_features(
    pos: int, vel: int, mass: int, acc: int, out: int, tau: int, B: int, N: int, D: int, G: float,
    softening: float, double_precision: bool, flyby: bool, stream: int,
) -> None:
    """cpu_scaled_features for CUDA tensors, on `stream`."""

def cuda_symmetric_step(f: int, rho: int, h: int, n: int, double_precision: bool, stream: int) -> None:
    """cpu_symmetric_step for CUDA tensors, on `stream`."""

def cuda_carried_step(
    pos: int, vel: int, acc: int, mass: int, dt: int, energy: int, B: int, N: int, D: int,
    integrator: int, physics: tuple[float, ...], double_precision: bool, stream: int,
) -> None:
    """cpu_carried_step for CUDA tensors, on `stream`; energy (0: none) [B] receives the total
    energy after the step."""
