"""Settings: defaults, TOML tables, precedence, flag forms and unknown keys."""
import pytest

from aitimestepper.cli import configs_for
from aitimestepper.config import Config, read_toml
from aitimestepper.errors import ConfigError


def test_defaults_follow_the_original():
    cfg = Config()
    assert (cfg.epochs, cfg.lr, cfg.weight_decay, cfg.n_steps, cfg.energy_threshold) == (1000, 1e-4, 1e-2, 10, 2e-4)
    assert (cfg.steps_per_epoch, cfg.E_lower, cfg.E_upper, cfg.num_particles, cfg.dim) == (1, 1e-6, 1e-4, 2, 2)
    assert (cfg.mass, cfg.pos_scale, cfg.vel_scale, cfg.dtype, cfg.num_orbits) == ([1.0], 0.1, 1.0, "float64", 1)
    assert cfg.hidden_dims == [200, 1000, 1000, 200] and cfg.activation == "tanh" and cfg.dropout == 0.2
    assert cfg.output_dir == "./data" and cfg.checkpoint_every == 10 and cfg.backend == "auto"


@pytest.fixture
def toml_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('lr = 0.5\nepochs = 7\nsteps = 11\n[train]\nepochs = 9\n[simulate]\nsteps = 13\n')
    return path


@pytest.mark.parametrize("before", [True, False])
def test_config_before_or_after_the_subcommand(toml_file, before):
    args = ["--config", str(toml_file), "both"] if before else ["both", f"--config={toml_file}"]
    train, sim = configs_for("both", args)
    assert train.lr == 0.5 and train.epochs == 9  # [train] beats the top level
    assert sim.steps == 13 and sim.epochs == 7  # [simulate] beats the top level; top level applies


@pytest.mark.parametrize("flags", [["--epochs", "3", "--lr=0.25"], ["-n", "3", "--lr", "0.25"]])
def test_cli_flags_win_in_both_forms(toml_file, flags):
    train, _ = configs_for("train", ["train", "--config", str(toml_file), *flags])
    assert train.epochs == 3 and train.lr == 0.25
    assert {"epochs", "lr"} <= train.explicit


def test_list_and_bool_flags():
    train, _ = configs_for("train", ["train", "--hidden-dims", "4", "5", "--normalize-inputs", "--mass=2"])
    assert train.hidden_dims == [4, 5] and train.normalize_inputs and train.mass == [2.0]


@pytest.mark.parametrize("text, key", [("bogus = 1\n", "bogus"), ("[train]\nlearning_rate = 1\n", "learning_rate")])
def test_unknown_keys_name_the_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key):
        read_toml(path)


def test_unknown_table_and_bad_type(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nx = 1\n")
    with pytest.raises(ConfigError, match="model"):
        read_toml(path)
    path.write_text('epochs = "many"\n')
    with pytest.raises(ConfigError, match="epochs"):
        configs_for("train", ["train", "--config", str(path)])


def test_inconsistent_settings_are_rejected():
    with pytest.raises(ConfigError, match="E_lower"):
        Config(E_lower=1e-3, E_upper=1e-4)
    with pytest.raises(ConfigError, match="mass"):
        Config(num_particles=3, mass=[1.0, 2.0])
    with pytest.raises(ConfigError, match="external_field_position"):
        Config(external_field_mass=1.0)
