"""Part 2: replay the collected trajectory in minibatches so the network generalizes along it.

Each iteration draws --replay-batch-size samples uniformly without replacement (from the
trainer's own seeded generator), judges them all in ONE batched gate evaluation (dropout off),
each from its own stored network input, i.e. with the history window it had when it was
collected. With --train-on all (the default), Part 2 has converged when every sample passes the
gate and the minibatch's mean band loss is at most --replay-tolerance; otherwise one Adam step on
the mean band loss of EVERY sample, so samples below E_lower push dt up and samples above E_upper
push it down. With --train-on failing (the earlier project's rule) it has converged when every
sample passes, and the step is on the failing samples only. Accepted data is never re-verified
in Part 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from . import stops
from .losses import band_loss
from .replay import Samples
from .state import Attempt, Trainer


@dataclass
class Part2Result:
    skipped: bool = False
    converged: bool = False
    iterations: int = 0
    pass_rate: Optional[float] = None  # of the last minibatch judged

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else ("converged" if self.converged else "not converged")


def evaluate(trainer: Trainer, samples: Samples, train: bool = False) -> Attempt:
    """Re-evaluate stored samples in one batched call: dt from each sample's own input, n_steps
    from its own state, r against its own energy."""
    return trainer.attempt(samples.inputs, samples.tau, samples.pos, samples.vel, samples.mass, samples.energy,
                           train=train)


def replay(trainer: Trainer) -> Part2Result:
    cfg = trainer.cfg
    size = len(trainer.replay)
    if size < max(cfg.min_replay_size, 1) or cfg.replay_steps == 0:
        return Part2Result(skipped=True)
    result = Part2Result()
    batch = min(cfg.replay_batch_size, size)
    device = trainer.orbits.pos.device
    for _ in range(cfg.replay_steps):
        if stops.stop_requested() is not None or stops.deadline_passed():
            break  # the epoch loop checkpoints and stops
        index = torch.randperm(size, generator=trainer.sampler)[:batch].to(device)
        fail_count, converged = iteration(trainer, trainer.replay.take(index))
        result.iterations += 1
        result.pass_rate = 1.0 - fail_count / batch
        if converged:
            result.converged = True
            break
    return result


def iteration(trainer: Trainer, samples: Samples) -> tuple[int, bool]:
    """Judge a minibatch in one batched evaluation and take one Adam step unless it has converged
    (see the module's docstring). Returns the number of samples that failed the gate and whether
    the minibatch met the convergence criterion."""
    if trainer.cfg.train_on == "all":
        return _iteration_on_all(trainer, samples)
    with torch.set_grad_enabled(trainer.gate_gives_gradient):
        gate = evaluate(trainer, samples)
    failing = (gate.r >= trainer.cfg.energy_threshold).nonzero().squeeze(1)
    fail_count = failing.numel()  # the one host sync per iteration
    if fail_count == 0:
        return 0, True
    if trainer.gate_gives_gradient:  # no dropout: the gate's graph is the training graph
        trainer.optimize(gate.r[failing])
    else:
        failed = Samples(*(t[failing] for t in (samples.inputs, samples.tau, samples.pos, samples.vel, samples.mass,
                                                samples.energy, samples.dt)))
        trainer.optimize(evaluate(trainer, failed, train=True).r)
    return fail_count, False


def _iteration_on_all(trainer: Trainer, samples: Samples) -> tuple[int, bool]:
    cfg = trainer.cfg
    with torch.set_grad_enabled(trainer.gate_gives_gradient):
        gate = evaluate(trainer, samples)
    loss = band_loss(gate.r.detach(), cfg.E_lower, cfg.E_upper).mean()
    fails = (gate.r.detach() >= cfg.energy_threshold).sum()
    fail_count, mean_loss = torch.stack([fails.to(loss.dtype), loss]).tolist()  # the one host sync
    if fail_count == 0 and mean_loss <= cfg.replay_tolerance:
        return 0, True
    trainer.optimize(gate.r if trainer.gate_gives_gradient else evaluate(trainer, samples, train=True).r)
    return int(fail_count), False
