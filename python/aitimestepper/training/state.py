"""What a training run carries from step to step: the orbits, their history, the network.

`Trainer` holds the live objects of one run (config, network, optimizer, featurizer, orbits,
replay buffer, RNGs) and the one operation both parts share, `attempt`: predict dt from the
network input (and the state's step time tau, which the scale-aware dt is measured in),
advance n_steps with it and measure the relative energy error. Part 1 (part1.py), Part 2
(part2.py) and the epoch loop (loop.py) work on it.

Under torchrun the trainer holds only its rank's orbits (`shard`, a range of the B orbit
indices) and `group` makes the few collectives a step needs: Part 1 and Part 2 decide on
every orbit's or sample's result together, and `optimize` sums the gradients of all ranks in
one all-reduce, so every rank takes the same Adam step on the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .. import ops
from ..distributed import SINGLE, Group
from ..features import Featurizer, History
from ..model import FullyConnectedNN
from ..physics.timescale import step_time
from .losses import band_loss, finite_gradient, relative_energy_error
from .replay import ReplayBuffer


@dataclass
class Orbits:
    """The current states of B orbits: pos/vel/acc [B, N, D], mass [B, N], energy [B] and the
    network input of each current state with its own feature block and step time tau [B]
    (cached until a state moves)."""

    pos: torch.Tensor
    vel: torch.Tensor
    mass: torch.Tensor
    acc: torch.Tensor
    energy: torch.Tensor
    history: History
    inputs: Optional[torch.Tensor] = None
    block: Optional[torch.Tensor] = None
    tau: Optional[torch.Tensor] = None

    @property
    def count(self) -> int:
        return self.pos.shape[0]


@dataclass
class Attempt:
    dt: torch.Tensor  # [S]
    r: torch.Tensor  # [S]
    pos: torch.Tensor
    vel: torch.Tensor
    energy: torch.Tensor


class Trainer:
    def __init__(self, cfg, model: FullyConnectedNN, forward: Callable, optimizer: torch.optim.Optimizer,
                 featurizer: Featurizer, orbits: Orbits, replay: ReplayBuffer, sampler: torch.Generator,
                 group: Group = SINGLE, shard: Optional[range] = None, total: Optional[int] = None) -> None:
        self.cfg = cfg
        self.group = group
        self.shard = range(orbits.count) if shard is None else shard  # the orbit indices held here
        self.total = orbits.count if total is None else total  # B, the orbits of all ranks
        self.model = model
        self.forward = forward
        self.optimizer = optimizer
        self.featurizer = featurizer
        self.orbits = orbits
        self.replay = replay
        self.sampler = sampler
        self.physics = cfg.physics_kwargs()
        self.step_kwargs = {"steps": cfg.n_steps, "integrator": cfg.integrator, **self.physics}
        # Without dropout the training forward equals the gate's, so a failing gate's own graph
        # gives the gradient: one network forward and one integration per retrain iteration.
        self.gate_gives_gradient = not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
        # The classical step that fills an orbit's history window before the network takes over
        # (the simulation starts the same way): the scale-aware network's own starting point.
        self.warmup_eta = model.eta_init if model.scale_aware else cfg.eta

    # ------------------------------------------------------------------
    def acceleration(self, pos: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
        return ops.acceleration(pos, mass, **self.physics)

    def refresh_inputs(self) -> None:
        """Recompute the network input of every orbit's current state (after states moved)."""
        o = self.orbits
        o.inputs, o.block = self.featurizer.inputs(o.history, o.pos, o.vel, o.mass, o.acc)
        with torch.no_grad():
            o.tau = step_time(o.pos, o.vel, o.acc, self.model.timescale)

    def predict_dt(self, inputs: torch.Tensor, tau: torch.Tensor, train: bool,
                   warming: Optional[torch.Tensor] = None) -> torch.Tensor:
        """dt per row; train=False is the deterministic gate (dropout off). Rows where `warming`
        [S] is true (history window not yet full) take the classical step warmup_eta * tau."""
        if self.model.training != train:  # Module.train() walks every submodule: only on a change
            self.model.train(train)
        dt = self.model.dt_from_output(self.forward(inputs), tau)
        if warming is not None:
            dt = torch.where(warming, self.warmup_eta * tau, dt)
        return dt

    def advance(self, pos, vel, mass, energy0, dt) -> Attempt:
        """n_steps of the integrator with per-row dt, and r = |E1 - E0| / |E0| per row."""
        with ops.unchecked():  # the states are our own, checked at the start; dt >= dt_min > 0
            pos1, vel1 = ops.step(pos, vel, mass, finite_gradient(dt), **self.step_kwargs)
            energy1 = ops.total_energy(pos1, vel1, mass, **self.physics)
        return Attempt(dt, relative_energy_error(energy1, energy0), pos1, vel1, energy1)

    def attempt(self, inputs, tau, pos, vel, mass, energy0, train: bool,
                warming: Optional[torch.Tensor] = None) -> Attempt:
        return self.advance(pos, vel, mass, energy0, self.predict_dt(inputs, tau, train, warming))

    def held(self, orbits: list[int]) -> list[int]:
        """This rank's rows of the given orbits of the run (those it holds), in order."""
        start = self.shard.start
        return [b - start for b in orbits if b in self.shard]

    def share(self, rows: torch.Tensor) -> torch.Tensor:
        """[k, B]: every orbit's values from each rank's [k, B_local] (one all-reduce of a zero-padded
        table under torchrun: adding zeros is exact, so every value arrives unchanged)."""
        if not self.group.distributed:
            return rows
        table = rows.new_zeros(rows.shape[0], self.total)
        table[:, self.shard.start: self.shard.stop] = rows
        return self.group.all_sum(table)

    def optimize(self, r: Optional[torch.Tensor], count: Optional[int] = None) -> None:
        """One Adam step on the mean band loss over `count` rows of all ranks, of which r holds
        this rank's (None or empty: none; count None: the rows of r are all there are)."""
        self.optimizer.zero_grad(set_to_none=True)
        if r is not None and r.numel():
            loss = band_loss(r, self.cfg.E_lower, self.cfg.E_upper)
            (loss.mean() if count is None else loss.sum() / count).backward()
        if self.group.distributed:
            self._sum_gradients()
        self.optimizer.step()

    def _sum_gradients(self) -> None:
        """Every rank's gradient summed in one all-reduce (a rank without rows adds zeros)."""
        params = list(self.model.parameters())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        self.group.all_sum(flat)
        for p, grad in zip(params, flat.split([p.numel() for p in params])):
            p.grad = grad.view_as(p)
