"""The external tidal field of a fixed point mass (docs/kernel-contract.md, "Physics").

a(x) = G M [ (R - x)/|R - x|^3 - R/|R|^3 ],  Phi(x) = -G M [ 1/|R - x| - 1/|R| - x.R/|R|^3 ].
The field is plain data; the kernels (and ops/reference.py) evaluate it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError, InputTypeError


@dataclass(frozen=True)
class TidalField:
    """A point mass `mass` held fixed at `position` (2 or 3 coordinates, not the origin)."""

    mass: float
    position: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            position = tuple(float(c) for c in self.position)
            mass = float(self.mass)
        except (TypeError, ValueError, OverflowError):
            raise InputTypeError(f"TidalField needs a number mass and a sequence of number coordinates, got "
                                 f"mass = {self.mass!r}, position = {self.position!r}") from None
        object.__setattr__(self, "position", position)
        object.__setattr__(self, "mass", mass)
        if not math.isfinite(self.mass) or self.mass < 0:
            raise InputError(f"TidalField mass must be finite and >= 0, got {self.mass}")
        if len(position) not in (2, 3):
            raise InputError(f"TidalField position must have 2 or 3 coordinates, got {len(position)}")
        if not all(math.isfinite(c) for c in position):
            raise InputError(f"TidalField position must be finite, got {position}")
        if all(c == 0.0 for c in position):
            raise InputError("TidalField position must not be the origin (the field's R/|R|^3 term is undefined there)")

    def as_physics_tail(self, dim: int) -> tuple[float, float, float, float]:
        """(field_mass, Rx, Ry, Rz) for the kernels, checked against the system's dimension."""
        if len(self.position) != dim:
            raise InputError(
                f"TidalField position has {len(self.position)} coordinates but the system has D = {dim}"
            )
        padded = self.position + (0.0,) * (3 - dim)
        return (self.mass, *padded)
