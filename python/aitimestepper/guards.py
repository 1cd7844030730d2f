"""Checks that run before any work: the device, the seed, the save name and every output location.

A run that cannot write its results should say so before it trains or simulates, not after;
these checks look at the file system without writing to it (os.access and stat), so a run that
fails them leaves nothing behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError

# torch.Generator.manual_seed takes a signed or unsigned 64-bit integer; training also seeds
# a second stream with seed + 1 (training/loop.py SAMPLER_SEED_OFFSET), so the top value is out.
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 2


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        devices += ["cuda"] + [f"cuda:{i}" for i in range(count)]
    return devices


def check_device(device: str) -> None:
    """The device must parse and exist here; the error names the ones that do."""
    import torch

    devices = available_devices()
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device {device!r} is not a device; available here: {', '.join(devices)}") from None
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda" and torch.cuda.is_available():
        if parsed.index is None or parsed.index < torch.cuda.device_count():
            return
    raise ConfigError(f"device {device!r} is not available here; available: {', '.join(devices)}")


def check_seed(seed: int) -> None:
    if not SEED_MIN <= seed <= SEED_MAX:
        raise ConfigError(f"seed must be between {SEED_MIN} and {SEED_MAX} (64 bits), got {seed}")


def check_save_name(name: str) -> None:
    """A run folder is <output-dir>/<save-name>: the name must be one plain path component."""
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if name in ("", ".", "..") or any(sep in name for sep in separators) or "\0" in name:
        raise ConfigError(f"save_name must be a single folder name (no '/', not '', '.' or '..'), got {name!r}")


# ----------------------------------------------------------------------------------------------
# output locations


def _writable(path: Path) -> bool:
    """Whether this process may write `path` (a file) or create entries in it (a folder)."""
    return os.access(path, os.W_OK | os.X_OK if path.is_dir() else os.W_OK)


def _check_folder(folder: Path, what: str, target: Optional[Path] = None) -> None:
    """`folder` exists as a writable folder, or can be created: every existing part is a folder
    and the deepest existing one is writable. Errors name `target` (default: the folder)."""
    named = f"{what} {str(target or folder)!r}"
    path = folder
    missing = False
    while not path.exists():
        if path.is_symlink():
            raise ConfigError(f"{named}: {str(path)!r} is a broken link")
        missing = True
        if path.parent == path:
            break
        path = path.parent
    if not path.is_dir():
        raise ConfigError(f"{named}: {str(path)!r} is a file, not a folder")
    if not _writable(path):
        verb = "cannot be created: " if missing else ""
        raise ConfigError(f"{named} {verb}{str(path)!r} is not writable")


def _check_file(file: Path, what: str) -> None:
    """`file` can be written (created, or replaced by a rename) in its folder."""
    if file.is_dir():
        raise ConfigError(f"{what} {str(file)!r} is a folder, not a file")
    _check_folder(file.parent, what, target=file)
    if file.exists() and not _writable(file):
        raise ConfigError(f"{what} {str(file)!r} is not writable")


def output_locations(cfg: Any, phase: str) -> list[tuple[str, Path, str]]:
    """(kind, path, description) of everything a phase writes: kind is 'folder' or 'file'."""
    places: list[tuple[str, Path, str]] = []
    if phase == "train":
        run_dir = Path(cfg.output_dir) / cfg.save_name
        places += [("folder", Path(cfg.output_dir), "output folder"), ("folder", run_dir, "run folder"),
                   ("file", run_dir / "metrics.jsonl", "metrics file"), ("folder", run_dir / "model", "model folder")]
    elif phase in ("simulate", "evaluate"):
        if cfg.output_json:
            places.append(("file", Path(cfg.output_json), "--output-json"))
        if cfg.plot is not None:  # an empty --plot means the movie folder, named after the run
            suffix = ".png" if phase == "simulate" else "-evaluate.png"
            plot = Path(cfg.plot) if cfg.plot else Path(cfg.movie_dir) / f"{cfg.save_name}{suffix}"
            places.append(("file", plot, "plot"))
        if cfg.movie and phase == "simulate":
            stem = Path(cfg.movie_dir) / cfg.save_name
            places += [("folder", Path(cfg.movie_dir), "movie folder"),  # the movie is .mp4 or .gif
                       ("file", stem.with_suffix(".mp4"), "movie"), ("file", stem.with_suffix(".gif"), "movie")]
    else:
        raise ValueError(f"unknown phase {phase!r}")
    return places


def check_outputs(cfg: Any, phase: str) -> None:
    """Every location `phase` ('train', 'simulate' or 'evaluate') will write can be written; nothing
    is created."""
    for kind, path, what in output_locations(cfg, phase):
        if kind == "folder":
            _check_folder(path, what)
        else:
            _check_file(path, what)

