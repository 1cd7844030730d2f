"""Shared helpers of the product-layer tests: the backend to run on and tiny configurations."""
from __future__ import annotations

import aitimestepper
from aitimestepper.config import Config, build_config

# The compiled CPU kernels once they are built; the PyTorch reference until then.
BACKEND = "auto" if "cpu" in aitimestepper.backends() else "reference"

TINY = dict(backend=BACKEND, hidden_dims=[8, 8], dropout=0.0, epochs=2, steps_per_epoch=2, lr=3e-2,
            weight_decay=0.0, min_replay_size=1, replay_steps=3, replay_batch_size=16, e_min=0.3, e_max=0.3,
            checkpoint_every=1, save_name="tiny", max_retrain_steps=0)


def tiny_config(tmp_path, **changes) -> Config:
    """A tiny training setup under tmp_path; `changes` count as explicitly given settings."""
    values = {**TINY, "output_dir": str(tmp_path / "data"), **changes}
    return build_config("train", None, values)
