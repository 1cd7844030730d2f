"""The trajectory collected in Part 1, kept for Part 2: a preallocated, growing set of samples.

Each sample is one accepted state with everything Part 2 needs to re-evaluate it on its own:
the network input built at the time (its history window included), the state and its energy.
Storage doubles when full, so appending is amortized O(1) and sampling is a single gather.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FIELDS = ("inputs", "tau", "pos", "vel", "mass", "energy", "dt")


@dataclass
class Samples:
    """A minibatch: inputs [S, F], dynamical time tau [S], pos/vel [S, N, D], mass [S, N],
    energy [S], dt [S]."""

    inputs: torch.Tensor
    tau: torch.Tensor
    pos: torch.Tensor
    vel: torch.Tensor
    mass: torch.Tensor
    energy: torch.Tensor
    dt: torch.Tensor


class ReplayBuffer:
    def __init__(self, input_dim: int, N: int, D: int, dtype, device, capacity: int = 256) -> None:
        self.size = 0
        self._shapes = {"inputs": (input_dim,), "tau": (), "pos": (N, D), "vel": (N, D), "mass": (N,), "energy": (), "dt": ()}
        self._data = {key: torch.zeros((capacity, *shape), dtype=dtype, device=device)
                      for key, shape in self._shapes.items()}

    def __len__(self) -> int:
        return self.size

    def append(self, samples: Samples) -> None:
        count = samples.inputs.shape[0]
        capacity = self._data["inputs"].shape[0]
        if self.size + count > capacity:
            new_capacity = max(2 * capacity, self.size + count)
            for key, old in self._data.items():
                grown = old.new_zeros((new_capacity, *self._shapes[key]))
                grown[: self.size] = old[: self.size]
                self._data[key] = grown
        for key in FIELDS:
            self._data[key][self.size: self.size + count] = getattr(samples, key).detach()
        self.size += count

    def take(self, index: torch.Tensor) -> Samples:
        return Samples(*(self._data[key][index] for key in FIELDS))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {key: value[: self.size].clone() for key, value in self._data.items()}

    def load_state_dict(self, data: dict[str, torch.Tensor]) -> None:
        self.size = 0
        count = data["inputs"].shape[0]
        if count:
            self.append(Samples(*(data[key].to(self._data[key]) for key in FIELDS)))
