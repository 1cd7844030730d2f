"""Training metrics: one JSON line per accepted step and per epoch, optionally mirrored to W&B.

Both sinks get the same names: accepted steps as `step/<name>`, epochs as `epoch/<name>`. The
file is opened on the first record, so a run that fails its checks writes nothing. wandb is
an optional extra, imported only when --wandb is given (and checked before training starts).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional


def require_wandb():
    try:
        import wandb
    except ImportError:
        raise ImportError("--wandb needs the optional dependency: pip install 'aitimestepper[wandb]'") from None
    return wandb


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def truncate_metrics(path: str | Path, next_epoch: int) -> None:
    """Drop the records of epochs >= next_epoch (logged after the checkpoint a run resumes from)
    and any line a kill cut short; the file is replaced atomically."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    with path.open() as stream:
        for line in stream:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] >= next_epoch:
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
    temp = path.with_name(f".{path.name}.tmp")
    try:
        temp.write_text("".join(kept))
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


class MetricsLogger:
    def __init__(self, path: Path, cfg=None, resume: bool = False, resume_epoch: Optional[int] = None) -> None:
        """`resume_epoch`: the epoch a resumed run continues with; later records in the file
        (written after its checkpoint by the run that stopped) are dropped first."""
        self.path = Path(path)
        if resume and resume_epoch is not None:
            truncate_metrics(self.path, resume_epoch)
        self._mode = "a" if resume else "w"
        self._file = None
        self._wandb = None
        if cfg is not None and cfg.wandb:
            wandb = require_wandb()
            self._wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_name or cfg.save_name,
                                     config=cfg.to_dict())

    def _write(self, kind: str, record: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open(self._mode)
        clean = {key: _finite_or_none(value) for key, value in record.items()}
        self._file.write(json.dumps({"kind": kind, **clean}, allow_nan=False) + "\n")
        if self._wandb is not None:
            self._wandb.log({f"{kind}/{key}": value for key, value in clean.items() if value is not None})

    def log_steps(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self._write("step", record)

    def log_epoch(self, record: dict[str, Any]) -> None:
        self._write("epoch", record)
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
