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
from typing import NamedTuple, Optional

import torch

from ..transfer import to_device
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


class Outcome(NamedTuple):
    fail_count: int  # samples of the minibatch (all ranks) that failed the gate
    converged: bool
    stopped: bool = False  # some rank was asked to stop: nothing was trained


def replay(trainer: Trainer) -> Part2Result:
    cfg = trainer.cfg
    size = len(trainer.replay)
    if size < max(cfg.min_replay_size, 1) or cfg.replay_steps == 0:
        return Part2Result(skipped=True)
    result = Part2Result()
    batch = min(cfg.replay_batch_size, size)
    for _ in range(cfg.replay_steps):
        index = torch.randperm(size, generator=trainer.sampler)[:batch]  # on the host, as take() wants it
        outcome = iteration(trainer, trainer.replay.take(index), batch,
                            stop=stops.stop_requested() is not None or stops.deadline_passed())
        if outcome.stopped:
            break  # the epoch loop checkpoints and stops
        result.iterations += 1
        result.pass_rate = 1.0 - outcome.fail_count / batch
        if outcome.converged:
            result.converged = True
            break
    return result


def iteration(trainer: Trainer, samples: Samples, batch: Optional[int] = None, stop: bool = False) -> Outcome:
    """Judge a minibatch in one batched evaluation and take one Adam step unless it has converged
    (see the module's docstring). `samples` are the ones this rank holds of a minibatch of `batch`
    (None: samples is the whole minibatch); the one host sync per iteration (under torchrun an
    all-reduce) decides on the whole minibatch, and on `stop` of any rank."""
    cfg = trainer.cfg
    count = samples.inputs.shape[0]
    batch = count if batch is None else batch
    gate = None
    if count:
        with torch.set_grad_enabled(trainer.gate_gives_gradient):
            gate = evaluate(trainer, samples)
    r = gate.r.detach() if gate is not None else samples.energy  # (empty)
    failing = r >= cfg.energy_threshold
    totals = torch.stack([failing.sum().to(r.dtype), band_loss(r, cfg.E_lower, cfg.E_upper).sum(),
                          to_device(float(stop), r.device, r.dtype)])
    fail_count, loss_sum, stopping = trainer.group.all_sum(totals).tolist()
    fail_count = int(fail_count)
    if stopping:
        return Outcome(fail_count, False, stopped=True)
    if cfg.train_on == "all":
        if fail_count == 0 and loss_sum / batch <= cfg.replay_tolerance:
            return Outcome(0, True)
        trained, trained_count = samples, batch
        train_r = gate.r if gate is not None else None
    else:  # --train-on failing: the earlier project's rule
        if fail_count == 0:
            return Outcome(0, True)
        trained = Samples(*(t[failing] for t in (samples.inputs, samples.tau, samples.pos, samples.vel, samples.mass,
                                                 samples.energy, samples.dt)))
        trained_count = fail_count
        train_r = gate.r[failing] if gate is not None else None
    if not trainer.gate_gives_gradient and trained.inputs.shape[0]:  # dropout on for the gradient
        train_r = evaluate(trainer, trained, train=True).r
    trainer.optimize(train_r, trained_count if trainer.group.distributed else None)
    return Outcome(fail_count, False)
