"""Input checks for the public ops: the one place where arguments are validated.

The compiled kernels see raw pointers and trust them, so everything they rely on is checked
here, once, with a message that says what arrived: types and dtypes, shapes, devices, finite
values, positive masses, dt >= 0, coincident bodies when softening is 0. The result is a
`Batch`: the inputs flattened to [B, N, D] / [B, N] / [B], contiguous, in one dtype, ready
for any backend, plus the batch shape to restore on the way out.

Value checks (finiteness, signs, coincident bodies) read the whole input and, on a GPU, wait
for it; `unchecked()` turns them off for hot loops that feed the ops their own outputs. They are
also off while torch.compile traces an op: they turn tensor values into Python control flow
(and call the compiled module with raw pointers), which a graph cannot hold; the eager call
outside the compiled region is where they belong. Shape, dtype and device checks always run:
they cost nothing.
"""
from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from ..errors import InputError, InputTypeError
from ..physics.field import TidalField
from ..physics.integrators import INTEGRATORS
from .backends import _core

FLOAT_DTYPES = (torch.float32, torch.float64)
BACKEND_NAMES = ("auto", "reference", "cpu", "cuda", "triton")

_state = threading.local()


def value_checks_enabled() -> bool:
    if torch.compiler.is_compiling():
        return False
    return getattr(_state, "value_checks", True)


@contextlib.contextmanager
def unchecked() -> Iterator[None]:
    """Skip the value checks (finite, positive, coincident) inside this block; this thread only."""
    previous = value_checks_enabled()
    _state.value_checks = False
    try:
        yield
    finally:
        _state.value_checks = previous


@dataclass
class Batch:
    """Validated inputs flattened for the kernels: pos/vel [B, N, D], mass [B, N], dt [B]."""

    pos: torch.Tensor
    mass: torch.Tensor
    batch_shape: torch.Size
    physics: list[float]
    vel: Optional[torch.Tensor] = None
    dt: Optional[torch.Tensor] = None

    @property
    def dim(self) -> int:
        return self.pos.shape[-1]


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def _require_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise InputTypeError(f"{name} must be float32 or float64, got {value.dtype}")
    return value


def _require_finite(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = (~torch.isfinite(t)).sum().item()
        raise InputError(f"{name} has {bad} non-finite value(s) (NaN or inf); {_describe(t)}")


def _require_scalar(name: str, value: object, *, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputTypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise InputError(f"{name} must be finite and {relation} {minimum}, got {value}")
    return value


def check_backend(backend: str) -> str:
    if backend not in BACKEND_NAMES:
        raise InputError(f"unknown backend {backend!r}; choose one of {list(BACKEND_NAMES)}")
    return backend


def check_integrator(integrator: str) -> int:
    if integrator not in INTEGRATORS:
        raise InputError(f"unknown integrator {integrator!r}; choose one of {sorted(INTEGRATORS)}")
    return INTEGRATORS[integrator][0]


def check_steps(steps: object) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    return steps


def _has_coincident_bodies(pos: torch.Tensor) -> bool:
    """True when two bodies of one system share exactly the same position. pos: [B, N, D]."""
    B, N, D = pos.shape
    if N <= 64:
        same = (pos.unsqueeze(-2) == pos.unsqueeze(-3)).all(-1)  # [B, N, N]
        return int(same.sum()) > B * N  # the diagonal is always equal
    # Large N: sort-based, O(B N log(B N)) instead of O(B N^2).
    system = torch.arange(B, device=pos.device, dtype=pos.dtype).repeat_interleave(N).unsqueeze(-1)
    rows = torch.cat([system, pos.reshape(B * N, D)], dim=-1)
    return torch.unique(rows, dim=0).shape[0] < B * N


def physics_tuple(G: float, softening: float, field: Optional[TidalField], dim: int) -> list[float]:
    G = _require_scalar("G", G, minimum=0.0, strict=True)
    softening = _require_scalar("softening", softening, minimum=0.0, strict=False)
    if field is None:
        return [G, softening, 0.0, 0.0, 0.0, 0.0]
    if not isinstance(field, TidalField):
        raise InputTypeError(f"field must be an aitimestepper.TidalField or None, got {type(field).__name__}")
    return [G, softening, *field.as_physics_tail(dim)]


def prepare(
    pos: object,
    mass: object,
    *,
    vel: object = None,
    dt: object = None,
    G: float = 1.0,
    softening: float = 0.0,
    field: Optional[TidalField] = None,
    need_vel: bool = False,
    pos_name: str = "pos",
    forces: bool = True,
) -> Batch:
    """Check the arguments of an op and flatten them into a `Batch`.

    `pos_name` names the first tensor in messages (ops on velocities alone pass "vel");
    `forces=False` skips the coincident-bodies check for ops that evaluate no gravity.
    """
    pos = _require_tensor(pos_name, pos)
    if pos.dim() < 2:
        raise InputError(f"{pos_name} must have shape [..., N, D], got {_describe(pos)}")
    N, D = pos.shape[-2], pos.shape[-1]
    if D not in (2, 3):
        raise InputError(f"{pos_name} must have D = 2 or 3 coordinates in its last dimension, got D = {D} ({_describe(pos)})")
    if N < 2:
        raise InputError(f"a system needs N >= 2 bodies, got N = {N} ({_describe(pos)})")
    batch_shape = pos.shape[:-2]
    B = math.prod(batch_shape)
    tensors: dict[str, torch.Tensor] = {pos_name: pos}

    if need_vel:
        vel = _require_tensor("vel", vel)
        if vel.shape != pos.shape:
            raise InputError(f"vel must have the shape of {pos_name} {tuple(pos.shape)}, got {_describe(vel)}")
        tensors["vel"] = vel

    mass = _require_tensor("mass", mass)
    if mass.dim() < 1 or mass.shape[-1] != N:
        raise InputError(f"mass must have shape [..., N] with N = {N} (from {pos_name}), got {_describe(mass)}")
    try:
        if mass.shape != (*batch_shape, N):
            mass = mass.expand(*batch_shape, N)
    except RuntimeError:
        raise InputError(
            f"mass of shape {tuple(mass.shape)} does not broadcast to the batch shape {tuple(batch_shape)} of {pos_name}"
        ) from None
    tensors["mass"] = mass

    dt_tensor: Optional[torch.Tensor] = None
    if dt is not None:
        if isinstance(dt, torch.Tensor):
            dt_tensor = _require_tensor("dt", dt)
            try:
                if dt_tensor.shape != batch_shape:
                    dt_tensor = dt_tensor.expand(batch_shape)
            except RuntimeError:
                raise InputError(
                    f"dt must be a float or a tensor broadcastable to the batch shape {tuple(batch_shape)}, got {_describe(dt)}"
                ) from None
            tensors["dt"] = dt_tensor
        else:
            value = _require_scalar("dt", dt, minimum=0.0, strict=False)
            dt_tensor = torch.full(batch_shape, value, dtype=pos.dtype, device=pos.device)

    for name, t in tensors.items():
        if t.dtype != pos.dtype:
            raise InputTypeError(f"{name} has dtype {t.dtype} but {pos_name} has {pos.dtype}; pass one dtype")
        if t.device != pos.device:
            raise InputError(f"{name} is on {t.device} but {pos_name} is on {pos.device}; pass one device")

    physics = physics_tuple(G, softening, field, D)

    batch = Batch(
        pos=in_layout(pos, (B, N, D)),
        mass=in_layout(mass, (B, N)),
        vel=in_layout(tensors["vel"], (B, N, D)) if need_vel else None,
        dt=in_layout(dt_tensor, (B,)) if dt_tensor is not None else None,
        batch_shape=batch_shape,
        physics=physics,
    )
    if value_checks_enabled() and B > 0:
        check_coincident = forces and physics[1] == 0.0
        # One compiled pass answers "all fine" for CPU inputs; the torch reductions below then
        # run only to explain a failure (and for GPU tensors, and for large-N coincidences).
        if batch.pos.device.type == "cpu" and _has_compiled_check:
            failed = _compiled_value_check(batch, check_coincident)
            if failed:
                _check_values(batch, tensors, check_coincident)
                raise InputError(f"an input failed value check {failed} (see csrc/kernels.h ValueCheck)")
            if check_coincident and N > _COMPILED_COINCIDENT_MAX_N and _has_coincident_bodies(batch.pos.detach()):
                _raise_coincident()
        else:
            _check_values(batch, tensors, check_coincident)
    return batch


# The compiled scan for coincident bodies is O(B N^2); above this N the sort-based torch check
# (O(B N log(B N))) is cheaper.
_COMPILED_COINCIDENT_MAX_N = 256
_has_compiled_check = _core is not None and hasattr(_core, "cpu_check_values")


def _compiled_value_check(batch: Batch, check_coincident: bool) -> int:
    """0 when every value check passes, else the number of the first that failed."""
    B, N, D = batch.pos.shape
    return _core.cpu_check_values(
        batch.pos.data_ptr(),
        batch.vel.data_ptr() if batch.vel is not None else 0,
        batch.mass.data_ptr(),
        batch.dt.data_ptr() if batch.dt is not None else 0,
        B, N, D,
        check_coincident and N <= _COMPILED_COINCIDENT_MAX_N,
        batch.pos.dtype == torch.float64,
    )


def _raise_coincident() -> None:
    raise InputError(
        "two bodies of one system share a position and softening is 0: their force is "
        "infinite; separate them or pass softening > 0"
    )


def _check_values(batch: Batch, tensors: dict[str, torch.Tensor], check_coincident: bool) -> None:
    """The value checks with torch reductions, raising with a message that shows what arrived."""
    for name, t in tensors.items():
        _require_finite(name, t)
    if not bool((batch.mass > 0).all()):
        raise InputError(f"mass must be positive, got min {batch.mass.min().item():g} ({_describe(tensors['mass'])})")
    if batch.dt is not None and not bool((batch.dt >= 0).all()):
        raise InputError(f"dt must be >= 0, got min {batch.dt.min().item():g}")
    if check_coincident and _has_coincident_bodies(batch.pos.detach()):
        _raise_coincident()


def check_mass_not_differentiated(mass: torch.Tensor, backend: str) -> None:
    """The compiled backward kernels give gradients for pos, vel and dt, not for masses."""
    if mass.requires_grad and torch.is_grad_enabled():
        raise InputError(
            f"gradients with respect to mass are not provided by backend {backend!r}; "
            "detach the masses or use backend='reference'"
        )


def in_layout(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """t with `shape`, contiguous: t itself when it already is (no view: in the training loop's
    [B, N, D] batches every reshape would be one more autograd node to walk back through)."""
    if t.shape != shape:
        t = t.reshape(shape)
    return t.contiguous()


def restore(t: torch.Tensor, batch_shape: Sequence[int], trailing: Sequence[int] = ()) -> torch.Tensor:
    shape = (*batch_shape, *trailing)
    return t if t.shape == shape else t.reshape(shape)
