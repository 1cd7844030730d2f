"""What a training run carries from step to step: the orbits, their history, the network.

`Trainer` holds the live objects of one run (config, network, optimizer, featurizer, orbits,
replay buffer, RNGs) and the one operation both parts share, `attempt`: predict dt from the
network input (and the state's dynamical time tau, which the scale-aware dt is measured in),
advance n_steps with it and measure the relative energy error. Part 1 (part1.py), Part 2
(part2.py) and the epoch loop (loop.py) work on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .. import ops
from ..features import Featurizer, History
from ..model import FullyConnectedNN
from ..physics.timescale import dynamical_time
from .losses import band_loss, finite_gradient, relative_energy_error
from .replay import ReplayBuffer


@dataclass
class Orbits:
    """The current states of B orbits: pos/vel/acc [B, N, D], mass [B, N], energy [B] and the
    network input of each current state with its own feature block and dynamical time tau [B]
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
                 featurizer: Featurizer, orbits: Orbits, replay: ReplayBuffer, sampler: torch.Generator) -> None:
        self.cfg = cfg
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
            o.tau = dynamical_time(o.pos, o.acc)

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

    def optimize(self, r: torch.Tensor) -> torch.Tensor:
        """One Adam step on the mean band loss of the rows of r; returns the loss (a tensor: no host sync)."""
        loss = band_loss(r, self.cfg.E_lower, self.cfg.E_upper).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()
