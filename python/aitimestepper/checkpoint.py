"""Checkpoints: versioned, atomic, plain-data files that `torch.load(weights_only=True)` reads.

A checkpoint holds only tensors, numbers, strings, lists and dicts: the model and optimizer
state, every setting, the architecture, features and normalization scales (so simulation
rebuilds exactly the trained network), the training ICs, the full live training state and
RNG states (so resuming reproduces an uninterrupted run) and the epoch metrics. It is written
to a temporary file in the same directory and renamed into place: a crash never leaves a
half-written checkpoint under the final name.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .features import Featurizer, Scales
from .model import FullyConnectedNN

FORMAT_VERSION = 2  # 2: the dt parametrization (dt_param, eta_init) in the architecture
REQUIRED_KEYS = ("format_version", "epoch", "model_state_dict", "optimizer_state_dict", "config", "history_len",
                 "feature_type", "dtype", "architecture", "normalization", "training_ics", "rng", "metrics")


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / "model" / f"model_epoch_{epoch:04d}.pt"


def latest_checkpoint(run_dir: str | Path) -> Path:
    candidates = sorted((Path(run_dir) / "model").glob("model_epoch_*.pt"))
    if not candidates:
        raise CheckpointError(f"no checkpoint found under {Path(run_dir) / 'model'}")
    return candidates[-1]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or a run folder's latest checkpoint."""
    path = Path(path)
    return latest_checkpoint(path) if path.is_dir() else path


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically: temp file + fsync + rename."""
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint payload lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates 0600; a checkpoint gets the permissions any other file would get.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_name, 0o666 & ~umask)
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; every problem is a CheckpointError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {error}") from None
    if not isinstance(data, dict) or data.get("format_version") is None:
        raise CheckpointError(f"{path} is not an aitimestepper checkpoint (no format_version)")
    if data["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {data['format_version']}; this version reads "
                              f"{FORMAT_VERSION}")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}")
    return data


def check_system(data: dict[str, Any], num_particles: int, dim: int, path: str | Path = "checkpoint") -> None:
    """The network's features assume the N and D it was trained on."""
    trained_n, trained_d = data["config"]["num_particles"], data["config"]["dim"]
    if (trained_n, trained_d) != (num_particles, dim):
        raise CheckpointError(f"{path} was trained on N = {trained_n}, D = {trained_d} but the systems here have "
                              f"N = {num_particles}, D = {dim}")


def restore_model(data: dict[str, Any], device: str | torch.device) -> tuple[FullyConnectedNN, Featurizer]:
    """The trained network (eval mode, its saved dtype) and the featurizer it was trained with."""
    model = FullyConnectedNN.from_architecture(data["architecture"])
    model.load_state_dict(data["model_state_dict"])
    model.to(device=device, dtype=getattr(torch, data["dtype"])).eval()
    featurizer = Featurizer(data["feature_type"], data["history_len"], Scales(**data["normalization"]),
                            data["config"]["softening"], data["config"]["G"])
    return model, featurizer
