"""The command line: subcommands, exit codes and clear errors that write nothing."""
import json

import numpy as np
import pytest

from _product import BACKEND
from aitimestepper.cli import main


def test_info_prints_json(capsys):
    assert main(["info"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), dict)


def test_bench_goes_to_the_quick_table(capsys):
    """`aitimestepper bench ARGS` hands ARGS to the quick kernel table (its own tests are in
    test_bench_harness.py): a backend that does not exist is its error, exit 2."""
    assert main(["bench", "--backends", "bogus"]) == 2
    assert "backend(s) ['bogus'] not available" in capsys.readouterr().err


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
    assert main(["train", "--no-such-flag"]) == 2
    assert "unknown flag --no-such-flag for 'train'" in capsys.readouterr().err
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


def test_every_setting_belongs_to_a_command():
    from aitimestepper.cli import COMMAND_SETTINGS
    from aitimestepper.config import SETTING_NAMES

    owned = set().union(*COMMAND_SETTINGS.values())
    assert owned == set(SETTING_NAMES)


def test_each_command_shows_only_its_own_flags(capsys):
    from aitimestepper.cli import build_parser

    helps = {}
    for command in ("train", "simulate", "evaluate"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        helps[command] = capsys.readouterr().out
    assert "--lr" in helps["train"] and "--lr " not in helps["simulate"] and "--movie-fps" not in helps["train"]
    assert "--movie-fps" in helps["simulate"] and "--model-path" in helps["evaluate"]


def test_kebab_case_flags_with_the_original_spellings_as_aliases(tmp_path, capsys, monkeypatch):
    from aitimestepper.cli import configs_for

    monkeypatch.chdir(tmp_path)
    for flags in (["--e-lower", "1e-7", "--e-upper=1e-5"], ["--E_lower", "1e-7", "--E_upper=1e-5"]):
        train, _ = configs_for("train", ["train", *flags, "--energy-threshold", "1e-4"])
        assert (train.E_lower, train.E_upper) == (1e-7, 1e-5)
    _, sim = configs_for("simulate", ["simulate", "--Nperiod", "2", "--g", "2.0"])
    assert sim.Nperiod == 2.0 and sim.G == 2.0


def test_unknown_and_misplaced_flags_get_a_suggestion(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--lr-rate", "3"]) == 2
    assert "unknown flag --lr-rate for 'train'; did you mean --lr?" in capsys.readouterr().err
    assert main(["simulate", "--lr", "3"]) == 2
    assert "--lr is not a flag of 'simulate' (it belongs to: train, both)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
