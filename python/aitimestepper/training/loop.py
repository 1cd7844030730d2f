"""The epoch loop: set a run up (fresh or resumed), alternate Part 1 and Part 2, checkpoint, report.

Everything that makes a run reproducible is seeded from --seed and saved in each checkpoint:
the global torch RNG (network init, dropout), the IC generator's draws (the ICs themselves are
saved) and the Part 2 sampler. Resuming restores all of it together with the orbits, their
history and the replay buffer, so a resumed run computes what the uninterrupted one would have.
All checks (config, ICs, checkpoint to resume, output locations, wandb) run before anything is
written; the run then locks its folder (runlock.py) for as long as it trains.
"""
from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

import torch
from tqdm import tqdm

from .. import ops
from ..checkpoint import FIXED_ON_RESUME, FORMAT_VERSION, check_system, checkpoint_path, load_checkpoint, save_checkpoint
from ..config import Config, config_from_dict
from ..errors import ConfigError, TrainingInterrupted, TrainingStopped
from ..features import Featurizer, Scales, scales_from_config
from ..guards import check_outputs
from ..initial_conditions import Systems, check_energy, make_systems
from ..model import FullyConnectedNN, build_model, maybe_compile
from ..runlock import claim_run_folder
from . import stops
from .metrics import MetricsLogger, require_wandb
from .part1 import RetrainCapReached, collect
from .part2 import replay
from .replay import ReplayBuffer
from .state import Orbits, Trainer

SAMPLER_SEED_OFFSET = 1  # the Part 2 sampler's stream is distinct from the IC stream


@dataclass
class TrainingResult:
    epochs_completed: int
    total_time: float
    convergence_rate: float
    trajectory_length: int
    pass_rate: float
    checkpoint: Optional[str]
    stop_reason: str  # "epochs", "duration"
    metrics: list[dict[str, Any]] = field(default_factory=list)
    metrics_path: Optional[str] = None

    def summary(self) -> str:
        line = "=" * 60
        return "\n".join([
            line, "Training Complete", line,
            f"  Epochs completed: {self.epochs_completed}",
            f"  Total time: {self.total_time:.2f}s",
            f"  Convergence rate: {100 * self.convergence_rate:.1f}%",
            f"  Final trajectory length: {self.trajectory_length}",
            f"  Final pass rate: {100 * self.pass_rate:.1f}%",
            f"  Stopped by: {self.stop_reason}",
            f"  Checkpoint: {self.checkpoint}",
            f"  Metrics: {self.metrics_path}",
            line,
        ])


@dataclass
class Run:
    """A set-up training run: the trainer plus the bookkeeping the loop and checkpoints need."""

    cfg: Config
    trainer: Trainer
    ics: Systems
    next_epoch: int = 0
    steps_done: list[int] = field(default_factory=list)
    retries: list[int] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)


def _resumed_config(cfg: Config, data: dict[str, Any]) -> Config:
    """The checkpoint's settings, overridden by what this invocation set explicitly; settings
    that describe what the checkpoint holds cannot change (the saved config must stay true)."""
    for key in sorted(cfg.explicit & set(FIXED_ON_RESUME)):
        if getattr(cfg, key) != data["config"][key]:
            raise ConfigError(f"{key} cannot change on --resume (the checkpoint has {data['config'][key]!r}, "
                              f"this run asks for {getattr(cfg, key)!r}); start a new run to change it")
    merged = dict(data["config"])
    merged.update({key: getattr(cfg, key) for key in cfg.explicit if key != "resume"})
    merged["resume"] = cfg.resume
    return config_from_dict(merged, explicit=cfg.explicit)


def resolved_config(cfg: Config) -> Config:
    """The settings a training run will use: with --resume, the checkpoint's merged with cfg."""
    return _resumed_config(cfg, load_checkpoint(cfg.resume)) if cfg.resume else cfg


def setup(cfg: Config) -> Run:
    """Build a run (checking everything first); nothing is written here."""
    data = None
    if cfg.resume:
        data = load_checkpoint(cfg.resume, map_location=cfg.device)
        cfg = _resumed_config(cfg, data)
        check_system(data, cfg.num_particles, cfg.dim, cfg.resume)
    check_outputs(cfg, "train")
    if cfg.wandb:
        require_wandb()
    if cfg.tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.autograd.set_detect_anomaly(cfg.debug)
    dtype = getattr(torch, cfg.dtype)
    torch.manual_seed(cfg.seed)
    if data is None:
        ics = make_systems(cfg, torch.Generator().manual_seed(cfg.seed))
    else:
        saved = data["training_ics"]
        ics = Systems(*(saved[key].to(device=cfg.device, dtype=dtype) for key in ("pos", "vel", "mass")))
    physics = cfg.physics_kwargs()
    acc = ops.acceleration(ics.pos, ics.mass, **physics)
    if data is None:
        scales = scales_from_config(cfg, ics.pos, ics.vel, ics.mass, acc)
        featurizer = Featurizer(cfg.feature_type, cfg.history_len, scales, cfg.softening, cfg.G)
        model = build_model(cfg, featurizer.input_dim)
    else:
        featurizer = Featurizer(data["feature_type"], data["history_len"], Scales(**data["normalization"]),
                                cfg.softening, cfg.G)
        model = FullyConnectedNN.from_architecture(data["architecture"]).to(device=cfg.device, dtype=dtype)
        model.load_state_dict(data["model_state_dict"])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    B, N, D = ics.pos.shape
    orbits = Orbits(ics.pos.clone(), ics.vel.clone(), ics.mass.clone(), acc,
                    check_energy(ics, cfg), featurizer.new_history(B, N, D, dtype, cfg.device))
    buffer = ReplayBuffer(featurizer.input_dim, N, D, dtype, cfg.device)
    sampler = torch.Generator().manual_seed(cfg.seed + SAMPLER_SEED_OFFSET)
    trainer = Trainer(cfg, model, maybe_compile(model, cfg.compile), optimizer, featurizer, orbits, buffer, sampler)
    run = Run(cfg, trainer, ics, steps_done=[0] * B, retries=[0] * B)
    if data is not None:
        _restore(run, data)
    return run


def _restore(run: Run, data: dict[str, Any]) -> None:
    trainer, saved = run.trainer, data["training_state"]
    trainer.optimizer.load_state_dict(data["optimizer_state_dict"])
    for group in trainer.optimizer.param_groups:  # --lr / --weight-decay of this run, as its config says
        group["lr"], group["weight_decay"] = run.cfg.lr, run.cfg.weight_decay
    o = trainer.orbits
    for key in ("pos", "vel", "acc", "energy"):
        getattr(o, key).copy_(saved[key])
    o.history.load_state_dict(saved["history"])
    trainer.replay.load_state_dict(saved["replay"])
    run.steps_done, run.retries = list(saved["steps_done"]), list(saved["retries"])
    run.next_epoch = data["next_epoch"]
    run.metrics = list(data["metrics"])
    torch.set_rng_state(data["rng"]["torch"])
    trainer.sampler.set_state(data["rng"]["sampler"])
    if data["rng"].get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(data["rng"]["cuda"])


def checkpoint_payload(run: Run, epoch: int, next_epoch: int, stop_reason: str) -> dict[str, Any]:
    trainer, o = run.trainer, run.trainer.orbits
    return {
        "format_version": FORMAT_VERSION,
        "epoch": epoch,
        "next_epoch": next_epoch,
        "stop_reason": stop_reason,
        "model_state_dict": trainer.model.state_dict(),
        "optimizer_state_dict": trainer.optimizer.state_dict(),
        "config": run.cfg.to_dict(),
        "history_len": trainer.featurizer.K,
        "feature_type": trainer.featurizer.feature_type,
        "dtype": run.cfg.dtype,
        "architecture": trainer.model.architecture(),
        "normalization": trainer.featurizer.scales.to_dict(),
        "training_ics": {"pos": run.ics.pos, "vel": run.ics.vel, "mass": run.ics.mass},
        "training_state": {
            "pos": o.pos, "vel": o.vel, "acc": o.acc, "energy": o.energy, "history": o.history.state_dict(),
            "replay": trainer.replay.state_dict(), "steps_done": list(run.steps_done), "retries": list(run.retries),
        },
        "rng": {"torch": torch.get_rng_state(), "sampler": trainer.sampler.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "metrics": list(run.metrics),
    }


def _summary_rates(metrics: list[dict[str, Any]]) -> tuple[float, float]:
    if not metrics:
        return 0.0, 0.0
    converged = sum(m["part2_status"] in ("converged", "skipped") for m in metrics)
    last = metrics[-1]
    pass_rate = last["part2_pass_rate"] if last["part2_pass_rate"] is not None else last["part1_pass_rate"]
    return converged / len(metrics), pass_rate


def _interrupted(run: Run, epoch: int, last_path: Optional[Path], signum: int) -> TrainingInterrupted:
    """Checkpoint the finished epoch (unless that just happened) for a run stopped by a signal."""
    path = checkpoint_path(run.cfg.run_dir, epoch)
    if last_path != path:
        path = save_checkpoint(path, checkpoint_payload(run, epoch, epoch + 1, "interrupted"))
    return TrainingInterrupted(f"training interrupted by {signal.Signals(signum).name} after epoch {epoch}; "
                               f"checkpoint saved to {path} (continue with --resume {path})", str(path), signum)


def run_training(cfg: Config, *, progress: bool = True, stream: TextIO = sys.stderr) -> TrainingResult:
    """Train as configured; raises TrainingStopped at the retrain cap and TrainingInterrupted on
    SIGINT/SIGTERM (after the current epoch), both after saving a checkpoint."""
    started = time.perf_counter()
    run = setup(cfg)
    cfg, trainer = run.cfg, run.trainer
    lock = claim_run_folder(cfg.run_dir)
    try:
        logger = MetricsLogger(cfg.run_dir / "metrics.jsonl", cfg, resume=bool(cfg.resume),
                               resume_epoch=run.next_epoch)
    except BaseException:
        lock.release()
        raise
    last_path: Optional[Path] = None
    stop_reason = "epochs"
    bar = tqdm(range(run.next_epoch, cfg.epochs), desc="epochs", disable=not progress, file=stream,
               initial=run.next_epoch, total=cfg.epochs)
    stops.install(started, cfg.duration)
    try:
        for epoch in bar:
            epoch_start = time.perf_counter()
            try:
                part1 = collect(trainer, epoch, run.steps_done, run.retries)
            except RetrainCapReached as stop:
                path = save_checkpoint(checkpoint_path(cfg.run_dir, epoch),
                                       checkpoint_payload(run, epoch - 1, epoch, "retrain_cap"))
                raise TrainingStopped(f"training stopped at epoch {epoch}: {stop}; checkpoint saved to {path}",
                                      str(path)) from None
            logger.log_steps(part1.step_records)
            part2 = replay(trainer)
            elapsed = time.perf_counter() - started
            record = {
                "epoch": epoch, "trajectory_length": len(trainer.replay), "accepted": part1.accepted,
                "attempts": part1.attempts, "retrain_steps": part1.retrain_steps, "halvings": part1.halvings,
                "part1_pass_rate": part1.pass_rate, "part2_status": part2.status,
                "part2_iterations": part2.iterations, "part2_pass_rate": part2.pass_rate,
                "epoch_time_s": time.perf_counter() - epoch_start, "elapsed_s": elapsed,
            }
            run.metrics.append(record)
            logger.log_epoch(record)
            bar.set_postfix(traj=len(trainer.replay), part2=part2.status, t=f"{elapsed:.1f}s")
            out_of_time = cfg.duration is not None and elapsed >= cfg.duration
            last_epoch = epoch == cfg.epochs - 1 or out_of_time
            if (epoch + 1) % cfg.checkpoint_every == 0 or last_epoch:
                stop_reason = "duration" if out_of_time and epoch < cfg.epochs - 1 else "epochs"
                last_path = save_checkpoint(checkpoint_path(cfg.run_dir, epoch),
                                            checkpoint_payload(run, epoch, epoch + 1, stop_reason))
            if out_of_time:
                break
            if stops.stop_requested() is not None:
                raise _interrupted(run, epoch, last_path, stops.stop_requested())
    finally:
        stops.restore()
        bar.close()
        logger.close()
        lock.release()
    convergence, pass_rate = _summary_rates(run.metrics)
    result = TrainingResult(len(run.metrics), time.perf_counter() - started, convergence, len(trainer.replay),
                            pass_rate, str(last_path) if last_path else None, stop_reason, run.metrics,
                            str(cfg.run_dir / "metrics.jsonl"))
    print(result.summary(), file=stream)
    return result
