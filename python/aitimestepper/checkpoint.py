"""Checkpoints: versioned, atomic, plain-data files that `torch.load(weights_only=True)` reads.

A checkpoint holds only tensors, numbers, strings, lists and dicts: the model and optimizer
state, every setting, the architecture, features and normalization scales (so simulation
rebuilds exactly the trained network), the training ICs, the full live training state and
RNG states (so resuming reproduces an uninterrupted run) and the epoch metrics. It is written
to a temporary file in the same directory and renamed into place: a crash never leaves a
half-written checkpoint under the final name.
"""
from __future__ import annotations

import math
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, NoReturn

import torch

from .config import config_from_dict
from .errors import AITimeStepperError, CheckpointError
from .features import Featurizer, Scales
from .model import FullyConnectedNN

FORMAT_VERSION = 2  # 2: the dt parametrization (dt_param, eta_init) in the architecture
REQUIRED_KEYS = ("format_version", "epoch", "next_epoch", "model_state_dict", "optimizer_state_dict", "config",
                 "history_len", "feature_type", "dtype", "architecture", "normalization", "training_ics",
                 "training_state", "rng", "metrics")
# Settings that describe what a checkpoint holds (the network, its features, the systems and the
# ICs it was trained on): a resumed run keeps them, and the saved config must record them.
FIXED_ON_RESUME = ("num_particles", "dim", "dtype", "history_len", "feature_type", "normalize_inputs", "norm_mode",
                   "norm_L0", "norm_V0", "norm_A0", "norm_T0", "hidden_dims", "activation", "dropout",
                   "fourier_scale", "fourier_dim", "dt_param", "eta_init", "dt_min", "dt_max", "dt_factor_range",
                   "timescale", "mass", "G", "softening", "external_field_mass", "external_field_position", "ic",
                   "ic_path", "num_orbits", "seed", "e_min", "e_max", "a_min", "a_max", "pos_scale", "vel_scale")
# Saved settings that training or simulation read back.
CONFIG_KEYS = FIXED_ON_RESUME + ("integrator",)
ARCHITECTURE_SETTINGS = ("hidden_dims", "activation", "dropout", "fourier_scale", "fourier_dim", "dt_param",
                         "eta_init", "dt_min", "dt_max", "dt_factor_range", "timescale")
# Settings added after format 2 was written: a checkpoint without them had the default.
LATER_SETTINGS = {"dt_factor_range": None, "timescale": "acceleration"}


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / "model" / f"model_epoch_{epoch:04d}.pt"


def latest_checkpoint(run_dir: str | Path) -> Path:
    candidates = sorted((Path(run_dir) / "model").glob("model_epoch_*.pt"))
    if not candidates:
        raise CheckpointError(f"{str(run_dir)!r} is a folder but not a run folder: no checkpoint "
                              f"model/model_epoch_*.pt in it")
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
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {str(path)!r} {problem}")
    # torch.save writes a zip archive; anything else would only get torch's unpickling advice.
    try:
        is_archive = zipfile.is_zipfile(path)
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {error.strerror or error}") from None
    if not is_archive:
        raise CheckpointError(f"{str(path)!r} is not an aitimestepper checkpoint (not a file torch.save wrote)")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{str(path)!r} is not an aitimestepper checkpoint (it holds objects other than "
                              "tensors and plain data)") from None
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {first_line}") from None
    validate_checkpoint(data, path)
    # Generator states are CPU byte tensors whatever the device (map_location moved them too).
    rng = data["rng"]
    data["rng"] = {**rng, "torch": rng["torch"].cpu(), "sampler": rng["sampler"].cpu(),
                   "cuda": [state.cpu() for state in rng.get("cuda", [])]}
    return data


def validate_checkpoint(data: Any, path: str | Path = "checkpoint") -> None:
    """Everything training (--resume) or simulation (--model-path) reads from a checkpoint is
    there, of the right type and shape, consistent and finite; a CheckpointError names what is not."""
    where = f"checkpoint {str(path)!r}"

    def fail(problem: str) -> NoReturn:
        raise CheckpointError(f"{where}: {problem}")

    if not isinstance(data, dict) or data.get("format_version") is None:
        raise CheckpointError(f"{str(path)!r} is not an aitimestepper checkpoint (no format_version)")
    if data["format_version"] != FORMAT_VERSION:
        fail(f"format_version {data['format_version']!r}; this version reads {FORMAT_VERSION}")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        fail(f"lacks {missing}")
    for key in ("epoch", "next_epoch", "history_len"):
        if not _is_int(data[key]):
            fail(f"{key} must be an integer, got {_describe(data[key])}")
    if data["next_epoch"] < 0 or data["history_len"] < 0:
        fail("next_epoch and history_len must be >= 0")
    for key in ("config", "architecture", "normalization", "model_state_dict", "optimizer_state_dict",
                "training_ics", "training_state", "rng"):
        if not isinstance(data[key], dict):
            fail(f"{key} must be a dict, got {_describe(data[key])}")
    if not isinstance(data["metrics"], list) or not all(isinstance(m, dict) for m in data["metrics"]):
        fail("metrics must be a list of dicts")

    # The saved settings: complete, valid and in agreement with the rest of the file.
    config = data["config"]
    missing = [key for key in CONFIG_KEYS if key not in config and key not in LATER_SETTINGS]
    if missing:
        fail(f"config lacks {missing}")
    try:  # the device it was trained on need not exist here
        cfg = config_from_dict({**config, "device": "cpu"})
    except AITimeStepperError as error:
        fail(f"config: {error}")
    for key in ("history_len", "feature_type", "dtype"):
        if data[key] != config[key]:
            fail(f"{key} is {data[key]!r} but its config says {config[key]!r}")
    arch = data["architecture"]
    for key in ARCHITECTURE_SETTINGS:
        if key not in arch and key not in LATER_SETTINGS:
            fail(f"architecture lacks {key!r}")
        if _plain(arch.get(key, LATER_SETTINGS.get(key))) != _plain(getattr(cfg, key)):
            fail(f"architecture has {key} = {arch[key]!r} but its config says {getattr(cfg, key)!r}")

    # Normalization scales: divisors of the features.
    norm = data["normalization"]
    if set(norm) != {"L0", "V0", "A0", "T0"}:
        fail(f"normalization must hold L0, V0, A0 and T0, got {sorted(map(str, norm))}")
    for key, value in norm.items():
        if not (_is_number(value) and math.isfinite(value) and value > 0):
            fail(f"normalization scale {key} must be a finite number > 0, got {_describe(value)}")
    featurizer = Featurizer(data["feature_type"], data["history_len"], Scales(**norm), cfg.softening)
    if arch.get("input_dim") != featurizer.input_dim:
        fail(f"architecture input_dim {arch.get('input_dim')!r} does not match the {data['feature_type']!r} "
             f"features of N = {cfg.num_particles}, D = {cfg.dim}, history_len {data['history_len']} "
             f"({featurizer.input_dim})")

    # The network: build the architecture (no memory, no random draws) and load the weights into it.
    state = data["model_state_dict"]
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            fail(f"model_state_dict[{name!r}] must be a floating-point tensor, got {_describe(tensor)}")
        if not bool(torch.isfinite(tensor).all()):
            fail(f"model weights {name!r} hold NaN or inf")
    try:
        with torch.device("meta"):
            model = FullyConnectedNN.from_architecture(arch)
    except (TypeError, ValueError) as error:
        fail(f"architecture {arch!r} cannot be built: {error}")
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split()).split(f"{type(model).__name__}:", 1)[-1].strip()
        fail(f"model_state_dict does not match its architecture: {detail}")
    _check_optimizer(data["optimizer_state_dict"], [tuple(p.shape) for p in model.parameters()], fail)

    # The training systems and the live training state (what --resume restores).
    ics = data["training_ics"]
    for key in ("pos", "vel", "mass"):
        if not isinstance(ics.get(key), torch.Tensor) or not ics[key].is_floating_point():
            fail(f"training_ics[{key!r}] must be a floating-point tensor, got {_describe(ics.get(key))}")
        if not bool(torch.isfinite(ics[key]).all()):
            fail(f"training_ics[{key!r}] holds NaN or inf")
    B = ics["pos"].shape[0] if ics["pos"].dim() == 3 else -1
    expected = {"pos": (B, cfg.num_particles, cfg.dim), "vel": (B, cfg.num_particles, cfg.dim),
                "mass": (B, cfg.num_particles)}
    for key, shape in expected.items():
        if B < 1 or tuple(ics[key].shape) != shape:
            fail(f"training_ics[{key!r}] has shape {tuple(ics[key].shape)}; N = {cfg.num_particles}, "
                 f"D = {cfg.dim} need {shape} with B >= 1")
    live = data["training_state"]
    dtype = getattr(torch, data["dtype"])
    expected = {"pos": expected["pos"], "vel": expected["pos"], "acc": expected["pos"], "energy": (B,)}
    for key, shape in expected.items():
        value = live.get(key)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            fail(f"training_state[{key!r}] must be a tensor of shape {shape}, got {_describe(value)}")
        if not bool(torch.isfinite(value).all()):
            fail(f"training_state[{key!r}] holds NaN or inf")
    for key in ("steps_done", "retries"):
        value = live.get(key)
        if not isinstance(value, list) or len(value) != B or not all(_is_int(v) for v in value):
            fail(f"training_state[{key!r}] must be a list of {B} integers, got {_describe(value)}")
    from .training.replay import ReplayBuffer

    fresh_history = featurizer.new_history(B, cfg.num_particles, cfg.dim, dtype, "cpu").state_dict()
    _check_like(live.get("history"), fresh_history, "training_state['history']", fail, leading=False)
    fresh_replay = ReplayBuffer(featurizer.input_dim, cfg.num_particles, cfg.dim, dtype, "cpu").state_dict()
    _check_like(live.get("replay"), fresh_replay, "training_state['replay']", fail, leading=True)

    rng = data["rng"]
    for key in ("torch", "sampler"):
        state = rng.get(key)
        try:
            torch.Generator().set_state(state.cpu())
        except (AttributeError, TypeError, RuntimeError, ValueError):
            fail(f"rng[{key!r}] is not a generator state, got {_describe(state)}")
    cuda = rng.get("cuda", [])
    if not isinstance(cuda, list) or not all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in cuda):
        fail("rng['cuda'] must be a list of generator states")


def _check_optimizer(state: dict[str, Any], param_shapes: list[tuple[int, ...]], fail) -> None:
    """An Adam state over the model's parameters, in the model's order."""
    groups = state.get("param_groups")
    per_param = state.get("state")
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                               for g in groups) or not isinstance(per_param, dict):
        fail("optimizer_state_dict is not an optimizer state (param_groups and state)")
    ids = [i for g in groups for i in g["params"]]
    if len(ids) != len(param_shapes):
        fail(f"optimizer_state_dict covers {len(ids)} parameters; the architecture has {len(param_shapes)}")
    for index, param_id in enumerate(ids):
        for key, value in (per_param.get(param_id) or {}).items():
            if key != "step" and isinstance(value, torch.Tensor) and tuple(value.shape) != param_shapes[index]:
                fail(f"optimizer state {key!r} of parameter {index} has shape {tuple(value.shape)}, the "
                     f"parameter {param_shapes[index]}")


def _check_like(saved: Any, fresh: dict[str, Any], name: str, fail, leading: bool) -> None:
    """`saved` has the keys of a freshly built `fresh` and values of its kind and shape (with any
    first dimension, the same for all tensors, when `leading`)."""
    if not isinstance(saved, dict) or set(saved) != set(fresh):
        fail(f"{name} must hold {sorted(fresh)}, got {_describe(saved)}")
    counts = set()
    for key, like in fresh.items():
        value = saved[key]
        if like is None:
            if value is not None:
                fail(f"{name}[{key!r}] must be None here, got {_describe(value)}")
        elif isinstance(like, torch.Tensor):
            if not isinstance(value, torch.Tensor) or value.dim() != like.dim():
                fail(f"{name}[{key!r}] must be a tensor like {tuple(like.shape)}, got {_describe(value)}")
            if tuple(value.shape[int(leading):]) != tuple(like.shape[int(leading):]):
                fail(f"{name}[{key!r}] has shape {tuple(value.shape)}, expected {tuple(like.shape)}")
            counts.add(value.shape[0] if leading else None)
        elif isinstance(like, list):
            if not isinstance(value, list) or len(value) != len(like):
                fail(f"{name}[{key!r}] must be a list of {len(like)} values, got {_describe(value)}")
    if len(counts) > 1:
        fail(f"{name} holds tensors of different lengths {sorted(counts)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return float(value) if _is_number(value) else value


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


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
