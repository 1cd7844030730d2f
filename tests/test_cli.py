"""The command line: subcommands, exit codes and clear errors that write nothing."""
import json

import numpy as np
import pytest

from _product import BACKEND
from aitimestepper.cli import main


def test_info_prints_json(capsys):
    assert main(["info"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), dict)


def test_bench_dispatches_or_says_what_is_missing(capsys, monkeypatch):
    try:
        import aitimestepper.bench.kernels  # noqa: F401
    except ImportError:
        assert main(["bench"]) == 2
        assert "aitimestepper.bench.kernels" in capsys.readouterr().err
    else:
        pytest.skip("the kernel benchmark exists; it is tested with it")


def test_bad_toml_key_is_an_error_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("[train]\nepoch = 3\n")
    assert main(["train", "--config", "bad.toml"]) == 2
    assert "'epoch'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_missing_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "--model-path", "missing.pt", f"--backend={BACKEND}"]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_zero_energy_initial_state(tmp_path, capsys, monkeypatch):
    # Unit masses 1 apart (U = -1) moving at 1 in opposite directions (T = 1): E = 0 exactly.
    monkeypatch.chdir(tmp_path)
    np.savetxt(tmp_path / "zero.txt", [[1, -0.5, 0, 0, -1], [1, 0.5, 0, 0, 1]])
    assert main(["train", "--ic-path", "zero.txt", "--epochs", "1", f"--backend={BACKEND}"]) == 2
    assert "E0" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zero.txt"]


def test_unknown_flag_and_no_command(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--no-such-flag"])
    assert stop.value.code == 2
    assert main([]) == 2


def test_retrain_cap_exit_status(tmp_path, capsys, monkeypatch):
    # lr 1e-12 and a 2-retrain cap on an orbit with a huge initial dt: the run must stop, exit 3,
    # and leave its checkpoint.
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--hidden-dims", "4", "--max-retrain-steps", "1", "--lr", "1e-12", "--epochs", "2",
                 "--dt-min", "2.0", f"--backend={BACKEND}", "--save-name", "capped"])
    assert code == 3
    assert "checkpoint saved" in capsys.readouterr().err
    assert (tmp_path / "data" / "capped" / "model" / "model_epoch_0000.pt").is_file()
