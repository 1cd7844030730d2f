"""The trajectory collected in Part 1, kept for Part 2: a preallocated, growing set of samples.

Each sample is one accepted state with everything Part 2 needs to re-evaluate it on its own:
the network input built at the time (its history window included), the state and its energy.
Storage doubles when full, so appending is amortized O(1) and sampling is a single gather.

Under torchrun each rank stores the samples of its own orbits only, but every rank keeps the
ledger of the whole trajectory (which orbit each sample came from, in the order a single
process would have stored them): Part 2 draws global indices with the same generator on every
rank, and each rank evaluates the drawn samples it holds. The ledger is also what puts the
ranks' samples back in that order for a checkpoint (`merge_states`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..transfer import to_device

FIELDS = ("inputs", "tau", "pos", "vel", "mass", "energy", "dt")


@dataclass
class Samples:
    """A minibatch: inputs [S, F], step time tau [S], pos/vel [S, N, D], mass [S, N],
    energy [S], dt [S]."""

    inputs: torch.Tensor
    tau: torch.Tensor
    pos: torch.Tensor
    vel: torch.Tensor
    mass: torch.Tensor
    energy: torch.Tensor
    dt: torch.Tensor


class ReplayBuffer:
    """The trajectory's samples; `mine` is the range of orbits whose samples this process holds
    (None: every orbit)."""

    def __init__(self, input_dim: int, N: int, D: int, dtype, device, capacity: int = 256,
                 mine: Optional[range] = None) -> None:
        self.size = 0  # samples held here
        self.mine = mine
        self.ledger: list[int] = []  # the orbit of every sample of the trajectory, in order
        self._local_of = torch.empty(capacity, dtype=torch.long)  # ledger position -> row here, or -1
        self._shapes = {"inputs": (input_dim,), "tau": (), "pos": (N, D), "vel": (N, D), "mass": (N,), "energy": (), "dt": ()}
        self._data = {key: torch.zeros((capacity, *shape), dtype=dtype, device=device)
                      for key, shape in self._shapes.items()}

    def __len__(self) -> int:
        """Samples in the whole trajectory (on every rank)."""
        return len(self.ledger)

    def holds(self, orbit: int) -> bool:
        return self.mine is None or orbit in self.mine

    def append(self, samples: Samples, orbits: Optional[Sequence[int]] = None) -> None:
        """Add the samples of `orbits` (one each, in the trajectory's order; None: this process's
        samples are all there is) of which `samples` holds the ones this process keeps."""
        count = samples.inputs.shape[0]
        if orbits is None:
            orbits = [-1] * count
        local = [self.holds(b) for b in orbits]
        if sum(local) != count:
            raise ValueError(f"{count} samples given for the {sum(local)} of orbits {list(orbits)} held here")
        if self.mine is not None:
            start, end = len(self.ledger), len(self.ledger) + len(orbits)
            if end > self._local_of.shape[0]:
                grown = torch.empty(max(2 * self._local_of.shape[0], end), dtype=torch.long)
                grown[:start] = self._local_of[:start]
                self._local_of = grown
            rows = iter(range(self.size, self.size + count))
            self._local_of[start:end] = torch.tensor([next(rows) if held else -1 for held in local], dtype=torch.long)
        self.ledger.extend(orbits)
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
        """The samples at trajectory positions `index` (a CPU tensor: the sampler's draw) that this
        process holds, in index order. The rows are picked on the host and copied to the device
        without a host sync."""
        rows = index
        if self.mine is not None:
            rows = self._local_of[index]
            rows = rows[rows >= 0]
        rows = to_device(rows, self._data["inputs"].device)
        return Samples(*(self._data[key][rows] for key in FIELDS))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The samples held here (see merge_states for the whole trajectory)."""
        return {key: value[: self.size].clone() for key, value in self._data.items()}

    def load_state_dict(self, data: dict[str, torch.Tensor], orbits: Optional[Sequence[int]] = None) -> None:
        """Restore from a whole trajectory (`orbits`: its ledger; None: every sample is held here)."""
        self.size = 0
        self.ledger = []
        count = data["inputs"].shape[0]
        if not count:
            return
        if orbits is None or self.mine is None:
            self.append(Samples(*(data[key].to(self._data[key]) for key in FIELDS)), orbits)
            return
        rows = torch.tensor([self.holds(b) for b in orbits], dtype=torch.bool)
        self.append(Samples(*(data[key][rows].to(self._data[key]) for key in FIELDS)), orbits)


def merge_states(states: list[dict[str, torch.Tensor]], owners: list[range], ledger: Sequence[int]) -> dict:
    """The whole trajectory in ledger order from each rank's state_dict (`owners`: each rank's orbits)."""
    if len(states) == 1:
        return states[0]
    taken = [0] * len(states)
    picks = []
    for orbit in ledger:
        rank = next(r for r, owned in enumerate(owners) if orbit in owned)
        picks.append((rank, taken[rank]))
        taken[rank] += 1
    return {key: torch.stack([states[r][key][i] for r, i in picks]) if picks else states[0][key]
            for key in FIELDS}
