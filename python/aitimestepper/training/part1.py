"""Part 1: walk each orbit forward by accepted steps, retraining on any state that fails the gate.

Per attempt, all B orbits are judged at once with dropout off (so the gate is deterministic):
orbits whose n_steps-step move keeps r = |E1 - E0|/|E0| below the threshold advance; the others
stay where they are. The network takes one Adam step on the mean band loss of the failing
orbits (through the gate's own graph when the network has no dropout, else through a
training-mode forward with dropout on); with --train-on all, an attempt that every orbit passed
takes one on every orbit whose r lies outside the band instead, so an accepted step that was
needlessly small pushes dt up as a failing one pushes it down. (While an orbit fails, only the
failing ones count: the passing ones would outvote the state that blocks its orbit.) Failing
orbits are then judged again from the same state. The one host sync per attempt is the accept
decision. An orbit that reaches --max-retrain-steps either stops the run (RetrainCapReached)
or, with --on-retrain-cap halve, halves its dt until the step passes; a step too small to move
the state in the working precision stops the run (StepTooSmall). A stop signal or the
--duration deadline ends the collection after the attempt in progress.

With history features, an orbit's first K steps (its window still holds padding) take the
classical step instead of the network's, as the simulation does; they are not trained on.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

import torch

from .. import ops
from ..transfer import to_device
from . import stops
from .replay import Samples
from .state import Attempt, Trainer

MAX_HALVINGS = 200  # 2^-200 of any dt is below every float64 step that still moves a state


class RetrainCapReached(Exception):
    """An orbit failed the gate after --max-retrain-steps optimizer steps on one state."""

    def __init__(self, orbit: int, step: int, r: float, dt: float, retries: int) -> None:
        super().__init__(
            f"orbit {orbit}: state at accepted step {step} still fails the energy gate after {retries} "
            f"retrain steps (r = {r:.3e}, dt = {dt:.3e}); raise --max-retrain-steps, loosen "
            "--energy-threshold, or pass --on-retrain-cap halve")
        self.orbit, self.step, self.r, self.dt = orbit, step, r, dt


class StepTooSmall(RetrainCapReached):
    """An orbit's step passed the gate only because it no longer moves the state: in the working
    precision x + v dt == x, so the energy cannot change (r = 0). That is a failure, not a pass."""

    def __init__(self, orbit: int, step: int, dt: float) -> None:
        Exception.__init__(
            self, f"orbit {orbit}: at accepted step {step} the step dt = {dt:.3e} no longer moves the state in the "
            "working precision (its energy error is 0 only for that reason): the energy threshold cannot be met; "
            "loosen --energy-threshold (and the band) or use float64")
        self.orbit, self.step, self.r, self.dt = orbit, step, 0.0, dt


@dataclass
class Part1Result:
    accepted: int = 0
    attempts: int = 0
    retrain_steps: int = 0
    halvings: int = 0
    gate_passes: int = 0  # orbit-attempts that passed the gate
    gate_trials: int = 0  # orbit-attempts judged
    step_records: list = field(default_factory=list)  # one metrics dict per accepted step

    @property
    def pass_rate(self) -> float:
        return self.gate_passes / self.gate_trials if self.gate_trials else 0.0


@dataclass
class Verdict:
    """The gate's outcome for every orbit of the run (all ranks), on the host."""

    r: list[float]
    dt: list[float]
    moved: list[bool]  # the step moved the state (see moves_state)
    warm: list[bool]  # the orbit's history window holds no padding
    stop: bool  # some rank was asked to stop (signal or --duration)


def collect(trainer: Trainer, epoch: int, steps_done: list[int], retries: list[int]) -> Part1Result:
    """Collect --steps-per-epoch accepted steps per orbit. steps_done[b] (accepted steps so far)
    and retries[b] (optimizer steps on b's current state) persist across epochs and resumes.
    Every decision is made on the run's B orbits from the shared verdict, so under torchrun all
    ranks make the same ones; each rank moves and trains only the orbits it holds."""
    cfg, o = trainer.cfg, trainer.orbits
    needed = [cfg.steps_per_epoch] * trainer.total
    result = Part1Result()
    if o.inputs is None:
        trainer.refresh_inputs()
    while any(needed):
        gate, verdict = judge(trainer, stop=stops.stop_requested() is not None or stops.deadline_passed())
        if verdict.stop:
            break  # the epoch ends here; the loop checkpoints what was accepted
        r_host, dt_host, warm = verdict.r, verdict.dt, verdict.warm
        active = [b for b in range(trainer.total) if needed[b]]
        frozen = [b for b in active if not verdict.moved[b]]
        if frozen:
            raise StepTooSmall(frozen[0], steps_done[frozen[0]], dt_host[frozen[0]])
        passed = [r < cfg.energy_threshold for r in r_host]
        result.attempts += 1
        accept = [b for b in active if passed[b]]
        failing = [b for b in active if not passed[b]]
        result.gate_trials += len(active)
        result.gate_passes += len(accept)
        if cfg.debug:
            print(f"[debug] epoch {epoch} attempt {result.attempts}: dt {dt_host} r {r_host} pass {passed}",
                  file=sys.stderr)

        capped = [b for b in failing if cfg.max_retrain_steps and retries[b] >= cfg.max_retrain_steps]
        if capped and cfg.on_retrain_cap == "stop":
            b = capped[0]
            raise RetrainCapReached(b, steps_done[b], r_host[b], dt_host[b], retries[b])
        # A warming orbit's step is the classical one, which retraining cannot change: halve it.
        capped += [b for b in failing if not warm[b] and b not in capped]
        failing = [b for b in failing if b not in capped]
        trained = failing
        if cfg.train_on == "all" and not failing:  # every judged orbit outside the band
            trained = [b for b in active if b not in capped and warm[b]
                       and not cfg.E_lower <= r_host[b] <= cfg.E_upper]
        if trained:  # before any state moves: the gate's graph refers to the current states
            retrain(trainer, gate, trained)
            result.retrain_steps += 1
        for b in failing:
            retries[b] += 1
        if capped:
            gate, r_host, dt_host = _halve_until_pass(trainer, gate, capped, result)
            accept += capped
        if accept:
            with torch.no_grad():
                _accept(trainer, gate, sorted(accept), warm, epoch, steps_done, retries, result, r_host, dt_host)
            for b in accept:
                needed[b] -= 1
    return result


def judge(trainer: Trainer, stop: bool = False) -> tuple[Attempt, Verdict]:
    """The gate on every orbit's current state (dropout off), with a graph for retrain() when the
    network has no dropout, and the one host sync per attempt (under torchrun the one collective
    that replaces it): r, dt, whether the step moved the state and whether the window is warm,
    of every orbit, and whether any rank asked to `stop`."""
    o = trainer.orbits
    warm = [o.history.warm(b) for b in range(o.count)]
    with torch.set_grad_enabled(trainer.gate_gives_gradient):
        gate = trainer.attempt(o.inputs, o.tau, o.pos, o.vel, o.mass, o.energy, train=False,
                               warming=warming(warm, o.pos.device))
    with torch.no_grad():
        moved = moves_state(gate.pos, o.pos).to(gate.r.dtype)
        if not trainer.group.distributed:  # this process knows the warm windows and the stop already
            r_host, dt_host, moved_host = torch.stack([gate.r, gate.dt, moved]).tolist()
            return gate, Verdict(r_host, dt_host, [m > 0 for m in moved_host], warm, stop)
        flags = torch.zeros_like(moved)
        flags[0] = float(stop)
        rows = torch.stack([gate.r, gate.dt, moved, to_device(warm, moved.device, moved.dtype), flags])
        r_host, dt_host, moved_host, warm_host, stop_host = trainer.share(rows).tolist()
    return gate, Verdict(r_host, dt_host, [m > 0 for m in moved_host], [w > 0 for w in warm_host], sum(stop_host) > 0)


def moves_state(pos1: torch.Tensor, pos0: torch.Tensor) -> torch.Tensor:
    """[S] bool: the step moved some body by more than a few roundings of the system's size (a
    step below that is lost in rounding: the state, hence its energy, does not really change)."""
    size = pos0.abs().flatten(1).amax(-1)
    return (pos1 - pos0).abs().flatten(1).amax(-1) > 4 * torch.finfo(pos0.dtype).eps * size


def warming(warm: list[bool], device) -> Optional[torch.Tensor]:
    """[B] bool on `device`: the orbits whose history window still holds padding (the negation of
    `warm`); None when every window is full (or there is no history)."""
    if all(warm):
        return None
    return to_device([not w for w in warm], device)


def retrain(trainer: Trainer, gate: Attempt, trained: list[int]) -> None:
    """One Adam step on the mean band loss of the given orbits (their states have not moved); each
    rank evaluates the ones it holds."""
    o = trainer.orbits
    local = trainer.held(trained)
    count = len(trained) if trainer.group.distributed else None
    if not local:
        trainer.optimize(None, count)
        return
    if len(local) == o.count:  # every orbit held here: the tensors themselves, no indexing ops
        pick = lambda t: t  # noqa: E731
    else:
        index = to_device(local, o.pos.device)
        pick = lambda t: t[index]  # noqa: E731
    if trainer.gate_gives_gradient:
        r = pick(gate.r)
    else:  # dropout on for the gradient: a training-mode forward of the same states
        r = trainer.attempt(*(pick(t) for t in (o.inputs, o.tau, o.pos, o.vel, o.mass, o.energy)), train=True).r
    trainer.optimize(r, count)


# What _halve_until_pass reports per orbit besides r and dt: how it ended.
_HALVED, _FROZE, _NEVER_PASSED = 0.0, 1.0, 2.0


def _halve_until_pass(trainer: Trainer, gate: Attempt, capped: list[int],
                      result: Part1Result) -> tuple[Attempt, list[float], list[float]]:
    """Halve the gate's dt of the capped orbits until each passes; the others keep their values.
    Returns the merged attempt (this rank's orbits) and r and dt of every orbit. A step that stops
    moving its state, or that never passes, stops the run on every rank."""
    o, cfg = trainer.orbits, trainer.cfg
    dt = gate.dt.detach().clone()
    merged = Attempt(*(t.detach().clone() for t in (gate.dt, gate.r, gate.pos, gate.vel, gate.energy)))
    outcome = torch.full_like(dt, _HALVED)
    halvings = torch.zeros_like(dt)
    pending = trainer.held(capped)
    with torch.no_grad():
        for count in range(1, MAX_HALVINGS + 1):
            if not pending:
                break
            index = to_device(pending, dt.device)
            dt[index] = dt[index] / 2
            halvings[index] = count
            trial = trainer.advance(o.pos, o.vel, o.mass, o.energy, dt)
            moved = moves_state(trial.pos[index], o.pos[index]).tolist()
            ok = (trial.r[index] < cfg.energy_threshold).tolist()
            done = [b for b, good, move in zip(pending, ok, moved) if good and move]
            froze = [b for b, move in zip(pending, moved) if not move]
            for rows, value in ((done, None), (froze, _FROZE)):
                if rows:
                    rows_t = to_device(rows, dt.device)
                    if value is None:
                        for name in ("dt", "r", "pos", "vel", "energy"):
                            getattr(merged, name)[rows_t] = getattr(trial, name)[rows_t]
                    else:
                        outcome[rows_t] = value
                        merged.dt[rows_t] = dt[rows_t]
            pending = [b for b in pending if b not in done and b not in froze]
        if pending:
            rows_t = to_device(pending, dt.device)
            outcome[rows_t] = _NEVER_PASSED
            merged.dt[rows_t], merged.r[rows_t] = dt[rows_t], trial.r[rows_t]
        shared = trainer.share(torch.stack([merged.r, merged.dt, outcome, halvings])).tolist()
    r_host, dt_host, outcome_host, halvings_host = shared
    result.halvings += int(max(halvings_host[b] for b in capped))
    for b in capped:
        if outcome_host[b] == _FROZE:
            raise StepTooSmall(b, -1, dt_host[b])
        if outcome_host[b] == _NEVER_PASSED:
            raise RetrainCapReached(b, -1, r_host[b], dt_host[b], cfg.max_retrain_steps)
    return merged, r_host, dt_host


def _accept(trainer: Trainer, gate: Attempt, rows: list[int], warm: list[bool], epoch: int, steps_done: list[int],
            retries: list[int], result: Part1Result, r_host: list[float], dt_host: list[float]) -> None:
    """Move the accepted orbits on: keep warm samples for Part 2, push history, update states.
    `rows` are orbits of the run; this rank moves the ones it holds."""
    o = trainer.orbits
    local = trainer.held(rows)
    keep = [b for b in rows if warm[b]]  # warmup: windows with padding are not kept
    if keep:
        k = to_device(trainer.held(keep), o.pos.device, torch.long)
        trainer.replay.append(Samples(o.inputs[k], o.tau[k], o.pos[k], o.vel[k], o.mass[k], o.energy[k],
                                      gate.dt[k]), keep)
    if local:
        everyone = len(local) == o.count
        index = slice(None) if everyone else to_device(local, o.pos.device)
        o.history.push(None if everyone else local, o.block, o.pos, o.vel, o.acc, gate.dt)
        o.pos[index] = gate.pos[index]
        o.vel[index] = gate.vel[index]
        o.energy[index] = gate.energy[index]
        with ops.unchecked():  # an accepted state has finite energy, hence finite positions
            o.acc[index] = trainer.acceleration(o.pos[index], o.mass[index])
        trainer.refresh_inputs()
    kept = set(keep)
    for b in rows:
        result.step_records.append({"epoch": epoch, "orbit": b, "step": steps_done[b], "dt": dt_host[b], "r": r_host[b],
                                    "retrain_steps": retries[b], "kept": b in kept})
        steps_done[b] += 1
        retries[b] = 0
        result.accepted += 1
