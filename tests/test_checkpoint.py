"""Checkpoints: keys, weights_only loading, atomic writes, errors, bitwise resume."""
import math

import pytest
import torch

from _product import tiny_config
from aitimestepper.checkpoint import FORMAT_VERSION, REQUIRED_KEYS, load_checkpoint, restore_model, save_checkpoint
from aitimestepper.config import build_config
from aitimestepper.errors import CheckpointError
from aitimestepper.training import run_training


def test_keys_and_weights_only_load(tmp_path):
    cfg = tiny_config(tmp_path, history_len=1, normalize_inputs=True)
    result = run_training(cfg, progress=False)
    data = torch.load(result.checkpoint, weights_only=True)
    assert set(REQUIRED_KEYS) <= set(data)
    assert data["format_version"] == FORMAT_VERSION and data["epoch"] == 1 and data["history_len"] == 1
    assert data["config"]["hidden_dims"] == [8, 8] and data["architecture"]["hidden_dims"] == [8, 8]
    assert data["normalization"]["L0"] != 1.0
    assert sorted(p.name for p in (cfg.run_dir / "model").iterdir()) == ["model_epoch_0000.pt", "model_epoch_0001.pt"]
    model, featurizer = restore_model(data, "cpu")
    assert featurizer.K == 1 and featurizer.scales.L0 == data["normalization"]["L0"]
    assert not model.training


def test_bounded_factor_is_saved_and_older_checkpoints_read_as_unbounded(tmp_path):
    cfg = tiny_config(tmp_path, dt_factor_range=1.5)
    data = torch.load(run_training(cfg, progress=False).checkpoint, weights_only=True)
    assert data["architecture"]["dt_factor_range"] == 1.5 and data["config"]["dt_factor_range"] == 1.5
    model, _ = restore_model(data, "cpu")
    assert model.log_range == pytest.approx(math.log(1.5))
    # A checkpoint written before the setting existed has neither key: the factor was unbounded.
    del data["architecture"]["dt_factor_range"], data["config"]["dt_factor_range"]
    older = tmp_path / "older.pt"
    torch.save(data, older)
    model, _ = restore_model(load_checkpoint(older), "cpu")
    assert model.log_range is None


def test_save_is_atomic_and_checked(tmp_path):
    with pytest.raises(CheckpointError, match="lacks"):
        save_checkpoint(tmp_path / "x.pt", {"format_version": 1})
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_file_gets_ordinary_permissions(tmp_path):
    import os
    payload = {key: 0 for key in REQUIRED_KEYS}
    path = save_checkpoint(tmp_path / "x.pt", payload)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temp file left behind


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"format_version": 99}, bad)
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(bad)


def test_resume_equals_uninterrupted_bitwise(tmp_path):
    common = dict(epochs=4, checkpoint_every=2, dropout=0.2, history_len=2, steps_per_epoch=3, replay_steps=4,
                  replay_batch_size=4, num_orbits=2)
    full = run_training(tiny_config(tmp_path, **common), progress=False)
    first = tiny_config(tmp_path, **common).run_dir / "model" / "model_epoch_0001.pt"
    resumed_cfg = build_config("train", None, {"resume": str(first), "save_name": "resumed",
                                               "output_dir": str(tmp_path / "data")})
    resumed = run_training(resumed_cfg, progress=False)
    a = torch.load(full.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    for key, value in a["model_state_dict"].items():
        assert torch.equal(value, b["model_state_dict"][key]), key
    for key in ("pos", "vel", "energy"):
        assert torch.equal(a["training_state"][key], b["training_state"][key])
    assert torch.equal(a["training_state"]["replay"]["inputs"], b["training_state"]["replay"]["inputs"])
    strip = lambda ms: [{k: v for k, v in m.items() if not k.endswith("_s")} for m in ms]  # noqa: E731
    assert strip(a["metrics"]) == strip(b["metrics"])
