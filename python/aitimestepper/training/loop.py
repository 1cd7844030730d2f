"""The epoch loop: set a run up (fresh or resumed), alternate Part 1 and Part 2, checkpoint, report.

Everything that makes a run reproducible is seeded from --seed and saved in each checkpoint:
the global torch RNG (network init, dropout), the IC generator's draws (the ICs themselves are
saved) and the Part 2 sampler. Resuming restores all of it together with the orbits, their
history and the replay buffer, so a resumed run computes what the uninterrupted one would have.
All checks (config, ICs, checkpoint to resume, output locations, wandb) run before anything is
written; the run then locks its folder (runlock.py) for as long as it trains.

Under torchrun (distributed.py) the B orbits are split into equal contiguous blocks, one per
rank; every rank builds the same ICs, network and sampler from the seed, and rank 0 alone
locks the folder and writes checkpoints, metrics and the summary. A checkpoint holds the whole
run as one process would (all orbits, the trajectory in its order) plus each rank's RNG state,
so a resume with the same number of ranks continues exactly; another number is refused.
"""
from __future__ import annotations

import hashlib
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, TextIO

import torch
from tqdm import tqdm

from .. import distributed, ops
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
from .replay import ReplayBuffer, merge_states
from .state import Orbits, Trainer

SAMPLER_SEED_OFFSET = 1  # the Part 2 sampler's stream is distinct from the IC stream
RANK_SEED_STRIDE = 1_000_003  # rank r's torch stream (dropout) starts from seed + r * this


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
    group = distributed.join(cfg.device, cfg.threads, cfg.collective_timeout)
    cfg = cfg.replace(device=group.device(cfg.device))
    data = None
    if cfg.resume:
        data = load_checkpoint(cfg.resume, map_location=cfg.device)
        cfg = _resumed_config(cfg, data)
        check_system(data, cfg.num_particles, cfg.dim, cfg.resume)
        saved_ranks = data["training_state"].get("ranks", 1)
        if saved_ranks != group.size:
            raise ConfigError(f"{cfg.resume} was written by a run on {saved_ranks} rank(s) and this run has "
                              f"{group.size}: each rank's random stream and orbits are part of the saved state, so a "
                              f"run resumes only with the same number of ranks (torchrun --nproc-per-node ...)")
    if cfg.num_orbits % group.size:
        raise ConfigError(f"--num-orbits {cfg.num_orbits} cannot be split evenly over {group.size} ranks; use a "
                          f"multiple of {group.size}")
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
    if group.size > 1 and data is None:  # each rank's own dropout stream; the weights above are shared
        torch.manual_seed((cfg.seed + RANK_SEED_STRIDE * group.rank) % 2**63)
    B, N, D = ics.pos.shape
    energy = check_energy(ics, cfg)
    block = group.shard(B)
    shard = range(block.start, block.stop)
    orbits = Orbits(ics.pos[block].clone(), ics.vel[block].clone(), ics.mass[block].clone(), acc[block].clone(),
                    energy[block].clone(), featurizer.new_history(len(shard), N, D, dtype, cfg.device))
    buffer = ReplayBuffer(featurizer.input_dim, N, D, dtype, cfg.device, mine=shard if group.distributed else None)
    sampler = torch.Generator().manual_seed(cfg.seed + SAMPLER_SEED_OFFSET)
    trainer = Trainer(cfg, model, maybe_compile(model, cfg.compile), optimizer, featurizer, orbits, buffer, sampler,
                      group, shard, B)
    run = Run(cfg, trainer, ics, steps_done=[0] * B, retries=[0] * B)
    if data is not None:
        _restore(run, data)
    return run


def _restore(run: Run, data: dict[str, Any]) -> None:
    trainer, saved = run.trainer, data["training_state"]
    trainer.optimizer.load_state_dict(data["optimizer_state_dict"])
    for group in trainer.optimizer.param_groups:  # --lr / --weight-decay of this run, as its config says
        group["lr"], group["weight_decay"] = run.cfg.lr, run.cfg.weight_decay
    o, rows = trainer.orbits, slice(trainer.shard.start, trainer.shard.stop)
    for key in ("pos", "vel", "acc", "energy"):
        getattr(o, key).copy_(saved[key][rows])
    o.history.load_state_dict(_rows_of(saved["history"], rows))
    trainer.replay.load_state_dict(saved["replay"], saved.get("replay_orbits"))
    run.steps_done, run.retries = list(saved["steps_done"]), list(saved["retries"])
    run.next_epoch = data["next_epoch"]
    run.metrics = list(data["metrics"])
    rank = trainer.group.rank
    torch.set_rng_state(data["rng"]["torch_by_rank"][rank] if "torch_by_rank" in data["rng"] else data["rng"]["torch"])
    trainer.sampler.set_state(data["rng"]["sampler"])
    cuda = data["rng"]["cuda_by_rank"][rank] if "cuda_by_rank" in data["rng"] else data["rng"].get("cuda")
    if cuda and torch.cuda.is_available():
        if trainer.group.distributed:
            torch.cuda.set_rng_state(cuda[0])
        else:
            torch.cuda.set_rng_state_all(cuda)


def _rows_of(history: dict[str, Any], rows: slice) -> dict[str, Any]:
    """The saved history state of the orbits in `rows`."""
    return {key: value[rows] if value is not None else None for key, value in history.items()}


def _history_of_all(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The ranks' history states as one (orbits in rank order)."""
    if len(states) == 1:
        return states[0]
    merged: dict[str, Any] = {}
    for key, first in states[0].items():
        if first is None:  # a buffer this feature type does not use
            merged[key] = None
        elif key == "filled":  # a list per orbit
            merged[key] = [count for state in states for count in state[key]]
        else:
            merged[key] = torch.cat([state[key] for state in states])
    return merged


def checkpoint_payload(run: Run, epoch: int, next_epoch: int, stop_reason: str) -> dict[str, Any]:
    """The checkpoint of the run (under torchrun a collective: every rank calls it, rank 0 gets the
    whole run and the others an equal payload they do not write)."""
    trainer, o, group = run.trainer, run.trainer.orbits, run.trainer.group
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    if group.distributed:
        cuda_rng = [torch.cuda.get_rng_state()] if o.pos.is_cuda else []
    local = {"pos": o.pos, "vel": o.vel, "acc": o.acc, "energy": o.energy, "history": o.history.state_dict(),
             "replay": trainer.replay.state_dict(), "torch": torch.get_rng_state(), "cuda": cuda_rng}
    if group.distributed:  # tensors travel through the host
        local = {key: _to_cpu(value) for key, value in local.items()}
        local["weights"] = _digest(trainer.model)
    ranks = group.all_gather(local)
    if len({r.get("weights") for r in ranks}) > 1:  # every rank sees the same list, so all stop here
        raise RuntimeError("the ranks hold different network weights (a bug: every rank must take the same "
                           "optimizer steps); the run stops without a checkpoint")
    training_state = {
        "pos": torch.cat([r["pos"] for r in ranks]), "vel": torch.cat([r["vel"] for r in ranks]),
        "acc": torch.cat([r["acc"] for r in ranks]), "energy": torch.cat([r["energy"] for r in ranks]),
        "history": _history_of_all([r["history"] for r in ranks]),
        "replay": merge_states([r["replay"] for r in ranks], _shards(run), trainer.replay.ledger),
        "steps_done": list(run.steps_done), "retries": list(run.retries),
        "replay_orbits": list(trainer.replay.ledger), "ranks": group.size,
    }
    rng = {"torch": ranks[0]["torch"], "sampler": trainer.sampler.get_state(), "cuda": ranks[0]["cuda"]}
    if group.distributed:
        rng["torch_by_rank"] = [r["torch"] for r in ranks]
        rng["cuda_by_rank"] = [r["cuda"] for r in ranks]
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
        "training_state": training_state,
        "rng": rng,
        "metrics": list(run.metrics),
    }


def _digest(model: torch.nn.Module) -> str:
    """A fingerprint of the network's weights, bit for bit."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _shards(run: Run) -> list[range]:
    """The orbits each rank holds."""
    size = run.trainer.group.size
    blocks = [distributed.block(run.trainer.total, rank, size) for rank in range(size)]
    return [range(b.start, b.stop) for b in blocks]


def _summary_rates(metrics: list[dict[str, Any]]) -> tuple[float, float]:
    if not metrics:
        return 0.0, 0.0
    converged = sum(m["part2_status"] in ("converged", "skipped") for m in metrics)
    last = metrics[-1]
    pass_rate = last["part2_pass_rate"] if last["part2_pass_rate"] is not None else last["part1_pass_rate"]
    return converged / len(metrics), pass_rate


def _save(run: Run, name_epoch: int, epoch: int, next_epoch: int, stop_reason: str) -> Path:
    """Checkpoint the run into the file named after `name_epoch` (every rank takes part; rank 0
    writes); returns the file's path."""
    path = checkpoint_path(run.cfg.run_dir, name_epoch)
    payload = checkpoint_payload(run, epoch, next_epoch, stop_reason)
    if run.trainer.group.rank == 0:
        save_checkpoint(path, payload)
    return path


def _stop_after_epoch(run: Run, out_of_time: bool) -> tuple[bool, Optional[int]]:
    """Whether the run is out of time and which signal asked it to stop, agreed by every rank."""
    signum = stops.stop_requested()
    if not run.trainer.group.distributed:
        return out_of_time, signum
    votes = run.trainer.group.all_gather((out_of_time, signum))
    return any(vote[0] for vote in votes), next((vote[1] for vote in votes if vote[1] is not None), None)


class _NoMetrics:
    """Ranks other than 0 log nothing."""

    def log_steps(self, records) -> None:
        pass

    def log_epoch(self, record) -> None:
        pass

    def close(self) -> None:
        pass


def _interrupted(run: Run, epoch: int, last_path: Optional[Path], signum: int) -> TrainingInterrupted:
    """Checkpoint the finished epoch (unless that just happened) for a run stopped by a signal."""
    path = checkpoint_path(run.cfg.run_dir, epoch)
    if last_path != path:
        path = _save(run, epoch, epoch, epoch + 1, "interrupted")
    return TrainingInterrupted(f"training interrupted by {signal.Signals(signum).name} after epoch {epoch}; "
                               f"checkpoint saved to {path} (continue with --resume {path})", str(path), signum)


def run_training(cfg: Config, *, progress: bool = True, stream: TextIO | Literal["stderr"] = "stderr") -> TrainingResult:
    """Train as configured; raises TrainingStopped at the retrain cap and TrainingInterrupted on
    SIGINT/SIGTERM (after the current epoch), both after saving a checkpoint."""
    if stream == "stderr":  # the stream of the moment (a default bound at import would go stale)
        stream = sys.stderr
    started = time.perf_counter()
    run = setup(cfg)
    cfg, trainer = run.cfg, run.trainer
    writer = trainer.group.rank == 0  # the one rank that writes files and the summary
    trainer.group.wait_for_all()  # every rank has passed its checks before rank 0 writes
    lock = claim_run_folder(cfg.run_dir) if writer else None
    try:
        logger = MetricsLogger(cfg.run_dir / "metrics.jsonl", cfg, resume=bool(cfg.resume),
                               resume_epoch=run.next_epoch) if writer else _NoMetrics()
    except BaseException:
        lock.release()
        raise
    last_path: Optional[Path] = None
    stop_reason = "epochs"
    bar = tqdm(range(run.next_epoch, cfg.epochs), desc="epochs", disable=not (progress and writer), file=stream,
               initial=run.next_epoch, total=cfg.epochs)
    stops.install(started, cfg.duration)
    try:
        for epoch in bar:
            epoch_start = time.perf_counter()
            try:
                part1 = collect(trainer, epoch, run.steps_done, run.retries)
            except RetrainCapReached as stop:  # every rank meets it (the decision is shared)
                path = _save(run, epoch, epoch - 1, epoch, "retrain_cap")
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
            out_of_time, signum = _stop_after_epoch(run, cfg.duration is not None and elapsed >= cfg.duration)
            last_epoch = epoch == cfg.epochs - 1 or out_of_time
            if (epoch + 1) % cfg.checkpoint_every == 0 or last_epoch:
                stop_reason = "duration" if out_of_time and epoch < cfg.epochs - 1 else "epochs"
                last_path = _save(run, epoch, epoch, epoch + 1, stop_reason)
            if out_of_time:
                break
            if signum is not None:
                raise _interrupted(run, epoch, last_path, signum)
    finally:
        stops.restore()
        bar.close()
        logger.close()
        if lock is not None:
            lock.release()
    trainer.group.wait_for_all()  # the last checkpoint is on disk before any rank goes on (`both`)
    convergence, pass_rate = _summary_rates(run.metrics)
    result = TrainingResult(len(run.metrics), time.perf_counter() - started, convergence, len(trainer.replay),
                            pass_rate, str(last_path) if last_path else None, stop_reason, run.metrics,
                            str(cfg.run_dir / "metrics.jsonl"))
    if writer:
        print(result.summary(), file=stream)
    return result
