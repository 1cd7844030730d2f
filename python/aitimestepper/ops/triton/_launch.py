"""What every Triton launch wrapper needs besides its kernel: interpreter detection, the physics
tuple in kernel form, integrator weights by index, and device checks.

Under TRITON_INTERPRET=1 each (program x tile) costs milliseconds of numpy, so the wrappers use
one small fixed configuration there (see INTERPRET) and autotune only on a GPU.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import triton

from ...physics.integrators import INTEGRATORS, substep_weights

# @triton.jit decides at decoration time whether a kernel is interpreted, so this module (imported
# before the kernels) reads the switch once, the same way the kernels saw it.
INTERPRET: bool = bool(triton.knobs.runtime.interpret)

_NAME_BY_INDEX = {index: name for name, (index, _) in INTEGRATORS.items()}


@dataclass(frozen=True)
class Physics:
    """The contract's (G, softening, field_mass, Rx, Ry, Rz) as the kernels take it."""

    G: float
    eps2: float
    gm: float  # G * field_mass; 0 means no tidal field
    R: tuple[float, float, float]

    @property
    def has_field(self) -> bool:
        return self.gm != 0.0

    def scalars(self) -> tuple[float, ...]:
        """(G, eps^2, G*M, Rx, Ry, Rz): the six fp64 scalars every kernel takes."""
        return (self.G, self.eps2, self.gm, *self.R)


def unpack_physics(physics) -> Physics:
    G, softening, field_mass, rx, ry, rz = (float(p) for p in physics)
    return Physics(G=G, eps2=softening * softening, gm=G * field_mass, R=(rx, ry, rz))


def integrator_weights(integrator_index: int) -> tuple[float, ...]:
    """Substep weights c_s of the integrator with kernel index `integrator_index`."""
    try:
        name = _NAME_BY_INDEX[int(integrator_index)]
    except KeyError:
        raise ValueError(
            f"unknown integrator index {integrator_index}; known: {sorted(_NAME_BY_INDEX)}"
        ) from None
    return substep_weights(name)


def check_device(*tensors: torch.Tensor) -> None:
    """Compiled Triton kernels need CUDA tensors; the interpreter takes CPU tensors too."""
    if INTERPRET:
        return
    for t in tensors:
        if t is not None and not t.is_cuda:
            raise ValueError(
                f"Triton kernels need CUDA tensors (got one on {t.device}); on a machine without a GPU "
                "set TRITON_INTERPRET=1 before triton is first imported"
            )


@contextlib.contextmanager
def quiet_interpreter():
    """Silence numpy's inf/NaN warnings while interpreting: masked lanes (the i == j pair at
    eps = 0, padded bodies, systems past B) compute inf by design and are selected away, which a
    GPU does silently."""
    if not INTERPRET:
        yield
        return
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        yield
