"""Nothing lost, nothing hangs: every user error is one `error:` line with exit status 2 and
nothing written; runs lock their folder, clean up after killed runs and stop cleanly on signals."""
from __future__ import annotations

import fractions
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from _product import BACKEND, TINY, tiny_config
from aitimestepper.checkpoint import load_checkpoint
from aitimestepper.cli import main
from aitimestepper.config import build_config
from aitimestepper.errors import CheckpointError, ConfigError
from aitimestepper.runlock import RunLock
from aitimestepper.simulate import write_text_atomic
from aitimestepper.training import run_training
from aitimestepper.training import stops

TINY_FLAGS = ["--hidden-dims", "8", "8", "--dropout", "0", "--steps-per-epoch", "2", "--lr", "3e-2",
              "--weight-decay", "0", "--min-replay-size", "1", "--replay-steps", "3", "--replay-batch-size", "16",
              "--e-min", "0.3", "--e-max", "0.3", "--max-retrain-steps", "0", f"--backend={BACKEND}"]
SIMULATE = ["simulate", "--integrator-mode", "analytic", "--steps", "3", f"--backend={BACKEND}"]


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def fails(capsys, argv: list[str], *fragments: str) -> str:
    """main(argv) exits 2 with one `error:` line holding every fragment; returns that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny two-epoch run's last checkpoint (read-only for the tests)."""
    root = tmp_path_factory.mktemp("trained")
    result = run_training(tiny_config(root), progress=False)
    return Path(result.checkpoint)


# ----------------------------------------------------------------------------------------------
# 1-3: settings


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails(capsys, ["train", "--device", "cuda", "--epochs", "1"], "'cuda'", "not available", "cpu")
    fails(capsys, SIMULATE + ["--device", "cuda:0"], "'cuda:0'", "not available")
    assert files_under(tmp_path) == []


def test_unknown_device(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails(capsys, ["train", "--device", "bogus", "--epochs", "1"], "'bogus'", "not a device", "cpu")
    fails(capsys, SIMULATE + ["--device", "cuda:99"], "'cuda:99'", "not available")
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("seed", [2**64, 2**64 - 1, -(2**63) - 1, 10**30])
def test_seed_beyond_64_bits(tmp_path, capsys, monkeypatch, seed):
    monkeypatch.chdir(tmp_path)
    fails(capsys, SIMULATE + ["--seed", str(seed)], "seed", str(seed))
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("seed", [2**64 - 2, -(2**63), -1])
def test_seed_at_the_64_bit_edges_works(tmp_path, monkeypatch, seed):
    monkeypatch.chdir(tmp_path)
    assert main(SIMULATE + ["--seed", str(seed), "--output-json", "r.json"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["steps"] == 3


def test_toml_that_is_not_utf8(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.toml").write_bytes('save_name = "caf\xe9"\n'.encode("latin-1"))
    fails(capsys, ["train", "--config", "latin1.toml"], "'latin1.toml'", "not UTF-8")
    (tmp_path / "binary.toml").write_bytes(bytes(range(256)))
    fails(capsys, ["simulate", "--config", "binary.toml"], "'binary.toml'", "not UTF-8")
    assert files_under(tmp_path) == ["binary.toml", "latin1.toml"]


# ----------------------------------------------------------------------------------------------
# 4: broken and foreign checkpoints


_DELETE = object()


def _set(path: list, value):
    """A corruption: delete data[path...], set it to `value`, or to value(old) for a callable."""
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value(target[path[-1]]) if callable(value) else value
    return change


def _nan_weight(data):
    name = next(iter(data["model_state_dict"]))
    data["model_state_dict"][name] = data["model_state_dict"][name].clone()
    data["model_state_dict"][name].view(-1)[0] = float("nan")


def _wider_network(data):
    # Config and architecture agree on a network the weights do not fit.
    data["config"]["hidden_dims"] = [8, 9]
    data["architecture"]["hidden_dims"] = [8, 9]


def _unknown_activation(data):
    data["config"]["activation"] = "swish"
    data["architecture"]["activation"] = "swish"


CORRUPTIONS = {
    "no num_particles": (_set(["config", "num_particles"], _DELETE), ["config lacks", "num_particles"]),
    "no training_state": (_set(["training_state"], _DELETE), ["lacks", "training_state"]),
    "no next_epoch": (_set(["next_epoch"], _DELETE), ["lacks", "next_epoch"]),
    "architecture vs weights": (_wider_network, ["does not match its architecture", "size mismatch"]),
    "architecture vs config": (_set(["architecture", "hidden_dims"], [4]), ["hidden_dims", "config says"]),
    "zero scale": (_set(["normalization", "L0"], 0.0), ["normalization scale L0", "finite number > 0"]),
    "infinite scale": (_set(["normalization", "V0"], float("inf")), ["normalization scale V0"]),
    "scale of wrong type": (_set(["normalization", "A0"], "1.0"), ["normalization scale A0"]),
    "unknown activation": (_unknown_activation, ["activation", "swish"]),
    "epoch of wrong type": (_set(["epoch"], "1"), ["epoch must be an integer"]),
    "state dict of wrong type": (_set(["model_state_dict"], [1, 2]), ["model_state_dict must be a dict"]),
    "nan weights": (_nan_weight, ["NaN or inf"]),
    "history of another length": (_set(["history_len"], 3), ["history_len", "config says"]),
    "ics of another N": (_set(["training_ics", "pos"], lambda t: t[:, :1]), ["training_ics['pos']", "shape"]),
    "steps_done of wrong type": (_set(["training_state", "steps_done"], "0"), ["steps_done"]),
    "optimizer of another model": (_set(["optimizer_state_dict", "param_groups"],
                                        lambda groups: [{**groups[0], "params": groups[0]["params"][:-1]}]),
                                   ["optimizer_state_dict covers"]),
    "rng state of wrong type": (_set(["rng", "sampler"], 7), ["rng['sampler']"]),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_broken_checkpoint_is_named(trained, tmp_path, capsys, monkeypatch, case):
    corrupt, fragments = CORRUPTIONS[case]
    data = torch.load(trained, weights_only=True)
    corrupt(data)
    torch.save(data, tmp_path / "broken.pt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError):
        load_checkpoint("broken.pt")
    fails(capsys, ["simulate", "--model-path", "broken.pt", "--steps", "3", f"--backend={BACKEND}"],
          "'broken.pt'", *fragments)
    fails(capsys, ["train", "--resume", "broken.pt", "--epochs", "5"], "'broken.pt'", *fragments)
    assert files_under(tmp_path) == ["broken.pt"]


def test_files_that_are_not_checkpoints(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.toml").write_text("epochs = 3\n")
    torch.save({"value": fractions.Fraction(1, 3)}, tmp_path / "pickled.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "folder.pt").mkdir()
    for name in ("settings.toml", "pickled.pt", "list.pt"):
        line = fails(capsys, ["simulate", "--model-path", name, f"--backend={BACKEND}"], f"'{name}'",
                     "not an aitimestepper checkpoint")
        assert "weights_only" not in line
        fails(capsys, ["train", "--resume", name], f"'{name}'", "not an aitimestepper checkpoint")
    fails(capsys, ["simulate", "--model-path", "folder.pt", f"--backend={BACKEND}"], "'folder.pt'", "is a folder")
    assert files_under(tmp_path) == ["folder.pt", "list.pt", "pickled.pt", "settings.toml"]


def test_good_checkpoint_still_loads_and_simulates(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "--model-path", str(trained), "--steps", "3", f"--backend={BACKEND}",
                 "--output-json", "r.json"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["steps"] == 3


# ----------------------------------------------------------------------------------------------
# 5: output locations, checked before any work


def test_output_json_onto_a_folder_or_under_a_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "plain").write_text("x")
    fails(capsys, SIMULATE + ["--output-json", "out"], "--output-json 'out'", "is a folder, not a file")
    fails(capsys, SIMULATE + ["--output-json", "plain/r.json"], "'plain/r.json'", "'plain' is a file, not a folder")
    assert capsys.readouterr().out == ""
    assert files_under(tmp_path) == ["out", "plain"]
    # A missing folder is created, as for every other output.
    assert main(SIMULATE + ["--output-json", "new/deeper/r.json"]) == 0
    assert json.loads((tmp_path / "new" / "deeper" / "r.json").read_text())["steps"] == 3


def test_plot_and_movie_locations(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shot.png").mkdir()
    (tmp_path / "movies").write_text("x")
    fails(capsys, SIMULATE + ["--plot", "shot.png"], "plot 'shot.png'", "is a folder")
    fails(capsys, SIMULATE + ["--movie", "--movie-dir", "movies"], "movie folder 'movies'", "is a file")
    fails(capsys, SIMULATE + ["--plot", "", "--movie-dir", "movies"], "'movies/run.png'", "is a file")
    assert files_under(tmp_path) == ["movies", "shot.png"]


def test_training_outputs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("x")
    fails(capsys, ["train", "--output-dir", "taken", "--epochs", "1"], "output folder 'taken'", "is a file")
    (tmp_path / "d" / "r").mkdir(parents=True)
    (tmp_path / "d" / "r" / "model").write_text("x")
    fails(capsys, ["train", "--output-dir", "d", "-s", "r", "--epochs", "1"], "model folder", "is a file")
    (tmp_path / "d" / "m" / "metrics.jsonl").mkdir(parents=True)
    fails(capsys, ["train", "--output-dir", "d", "-s", "m", "--epochs", "1"], "metrics file", "is a folder")
    assert files_under(tmp_path) == ["d", "d/m", "d/m/metrics.jsonl", "d/r", "d/r/model", "taken"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_locations(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        fails(capsys, ["train", "--output-dir", "locked/data", "--epochs", "1"], "cannot be created", "not writable")
        fails(capsys, SIMULATE + ["--output-json", "locked/r.json"], "'locked/r.json'", "not writable")
    finally:
        locked.chmod(0o755)
    assert files_under(tmp_path) == ["locked"]


def test_unwritable_locations_whoever_runs(tmp_path, capsys, monkeypatch):
    # os.access answers yes to root for every folder: stand in for a read-only mount.
    from aitimestepper import guards

    read_only = {tmp_path / "ro", tmp_path / "ro" / "old.json"}
    monkeypatch.setattr(guards, "_writable", lambda path: path.absolute() not in read_only)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "old.json").write_text("{}")
    fails(capsys, ["train", "--output-dir", "ro", "--epochs", "1"], "output folder 'ro'", "not writable")
    fails(capsys, ["train", "--output-dir", "ro/deeper", "--epochs", "1"], "cannot be created", "'ro' is not writable")
    fails(capsys, SIMULATE + ["--output-json", "ro/new.json"], "'ro/new.json'", "not writable")
    read_only.discard(tmp_path / "ro")
    fails(capsys, SIMULATE + ["--output-json", "ro/old.json"], "--output-json 'ro/old.json' is not writable")
    assert files_under(tmp_path) == ["ro", "ro/old.json"]


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/abs", "../up"])
def test_save_name_is_one_path_component(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    fails(capsys, ["train", "-s", name, "--epochs", "1"], "save_name", repr(name))
    assert files_under(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# 6: the run folder lock


HOLDER = ("import sys, time; from aitimestepper.runlock import RunLock; RunLock(sys.argv[1]).acquire(); "
          "print('held', flush=True); time.sleep(120)")


def test_second_run_on_a_folder_is_refused_and_a_dead_holder_is_taken_over(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "data" / "busy"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        fails(capsys, ["train", "-s", "busy", "--epochs", "1"] + TINY_FLAGS, "'data/busy'",
              f"in use by process {holder.pid}")
        assert files_under(run_dir) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    # The killed holder's lock file is still there; its lock died with it.
    assert (run_dir / ".lock").read_text().strip() == str(holder.pid)
    assert main(["train", "-s", "busy", "--epochs", "1"] + TINY_FLAGS) == 0
    assert not (run_dir / ".lock").exists()
    assert (run_dir / "model" / "model_epoch_0000.pt").is_file()


def test_lock_is_exclusive_within_a_process_too(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(ConfigError, match=f"in use by process {os.getpid()}"):
            RunLock(tmp_path / "run").acquire()
    with RunLock(tmp_path / "run"):
        pass
    assert list((tmp_path / "run").iterdir()) == []


# ----------------------------------------------------------------------------------------------
# 7: temp files


def test_stale_checkpoint_temps_are_removed_at_run_start(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1)
    model_dir = cfg.run_dir / "model"
    model_dir.mkdir(parents=True)
    stale = [model_dir / ".model_epoch_0004.pt.k2j3h4.tmp", model_dir / ".model_epoch_0000.pt.abc.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    (model_dir / "notes.txt").write_text("kept")
    run_training(cfg, progress=False)
    assert sorted(p.name for p in model_dir.iterdir()) == ["model_epoch_0000.pt", "notes.txt"]


def test_write_text_atomic_leaves_no_temp_on_error(tmp_path):
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(tmp_path / "out.json", "fine until \udc80")
    assert list(tmp_path.iterdir()) == []
    write_text_atomic(tmp_path / "out.json", "{}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# ----------------------------------------------------------------------------------------------
# 8: metrics after --resume


def test_resume_cuts_metrics_back_to_the_checkpoint(tmp_path):
    common = dict(epochs=3, checkpoint_every=2, steps_per_epoch=2)
    run_training(tiny_config(tmp_path, **common), progress=False)
    cfg = tiny_config(tmp_path, **common)
    metrics = cfg.run_dir / "metrics.jsonl"
    # The run was "killed" after logging epoch 2 (whose checkpoint is lost) and half a line.
    (cfg.run_dir / "model" / "model_epoch_0002.pt").unlink()
    with metrics.open("a") as stream:
        stream.write('{"kind": "step", "epoch": 2, "orb')
    before = [json.loads(line) for line in metrics.read_text().splitlines()[:-1]]
    resumed = build_config("train", None, {**TINY, **common, "output_dir": str(tmp_path / "data"),
                                           "resume": str(cfg.run_dir / "model" / "model_epoch_0001.pt")})
    run_training(resumed, progress=False)
    after = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in after if r["kind"] == "epoch"] == [0, 1, 2]
    steps = [(r["epoch"], r["orbit"], r["step"]) for r in after if r["kind"] == "step"]
    assert len(steps) == len(set(steps))
    assert [r for r in after if r["epoch"] < 2] == [r for r in before if r["epoch"] < 2]


# ----------------------------------------------------------------------------------------------
# 9: SIGINT / SIGTERM and the deadline


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_training_with_a_checkpoint(tmp_path, signum, code):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "aitimestepper", "train", "--epochs", "100000",
                             "--checkpoint-every", "100000", "-s", "sig"] + TINY_FLAGS,
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "data" / "sig" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and '"kind": "epoch"' in metrics.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and out == ""
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"error: training interrupted by {name} after epoch ")
    epoch = int(last.split("after epoch ")[1].split(";")[0])
    checkpoint = tmp_path / "data" / "sig" / "model" / f"model_epoch_{epoch:04d}.pt"
    assert f"checkpoint saved to {checkpoint.relative_to(tmp_path)}" in last
    data = load_checkpoint(checkpoint)
    assert data["next_epoch"] == epoch + 1 and data["stop_reason"] == "interrupted"
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines() if '"kind": "epoch"' in line]
    assert epochs == list(range(epoch + 1))
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == [checkpoint.name]
    assert not (tmp_path / "data" / "sig" / ".lock").exists()


def test_deadline_and_flag_helpers():
    stops.install(time.perf_counter(), 0.0)
    try:
        assert stops.deadline_passed() and stops.stop_requested() is None
    finally:
        stops.restore()
    assert not stops.deadline_passed()
    stops.install(time.perf_counter(), None)
    try:
        assert not stops.deadline_passed()
    finally:
        stops.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ----------------------------------------------------------------------------------------------
# 10: settings a resumed run cannot change


@pytest.mark.parametrize("flags, setting", [
    (["--hidden-dims", "16"], "hidden_dims"), (["--feature-type", "rich"], "feature_type"),
    (["--history-len", "2"], "history_len"), (["--dtype", "float32"], "dtype"),
    (["--normalize-inputs"], "normalize_inputs"), (["--num-particles", "3"], "num_particles"),
    (["--dim", "3"], "dim"), (["--activation", "relu"], "activation"), (["--num-orbits", "2"], "num_orbits"),
])
def test_resume_refuses_changed_settings(trained, tmp_path, capsys, monkeypatch, flags, setting):
    monkeypatch.chdir(tmp_path)
    fails(capsys, ["train", "--resume", str(trained), "--epochs", "4", "--output-dir", "data", "-s", "again"] + flags,
          f"{setting} cannot change on --resume")
    assert files_under(tmp_path) == []


def test_resume_keeps_same_values_and_honours_a_new_lr(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(trained), "--epochs", "3", "--output-dir", "data", "-s", "again",
                 "--hidden-dims", "8", "8",
                 "--lr", "0.001", f"--backend={BACKEND}"]) == 0
    data = load_checkpoint(tmp_path / "data" / "again" / "model" / "model_epoch_0002.pt")
    assert data["config"]["hidden_dims"] == [8, 8] and data["config"]["lr"] == 0.001
    assert all(group["lr"] == 0.001 for group in data["optimizer_state_dict"]["param_groups"])


# ----------------------------------------------------------------------------------------------
# 11-12: `both` and initial-condition files


def test_both_checks_simulation_settings_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails(capsys, ["both", "--num-particles", "3", "--Nperiod", "1", "--epochs", "1"], "two-body")
    fails(capsys, ["both", "--epochs", "1", "--output-json", "."], "is a folder")
    fails(capsys, ["both", "--epochs", "1", "--integrator-mode", "history"], "history_len 0")
    assert files_under(tmp_path) == []


def test_initial_conditions_without_systems(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    np.save(tmp_path / "none.npy", np.zeros((0, 2, 5)))
    np.save(tmp_path / "no_bodies.npy", np.zeros((3, 0, 5)))
    for name in ("empty.txt", "none.npy", "no_bodies.npy"):
        fails(capsys, SIMULATE + ["--ic-path", name], f"'{name}'", "holds no systems")
        fails(capsys, ["train", "--ic-path", name, "--epochs", "1"], f"'{name}'", "holds no systems")
    assert files_under(tmp_path) == ["empty.txt", "no_bodies.npy", "none.npy"]
