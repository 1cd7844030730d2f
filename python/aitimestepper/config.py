"""One dataclass holds every setting; TOML files and command-line flags fill it in.

Each field carries its command-line flag(s) and help text as metadata, so the CLI parser, the
TOML reader and the checkpoint all derive from this one table. Precedence, lowest first:
the defaults below (the original project's), the TOML top level, the TOML `[train]` or
`[simulate]` table of the running phase, then flags given on the command line. `explicit`
records which settings came from a file or a flag, so a checkpoint's saved values are
overridden only by what the user actually asked for.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError
from .guards import check_device, check_save_name, check_seed

PHASES = ("train", "simulate", "evaluate")
FEATURE_TYPES = ("scaled", "basic", "rich", "delta_mag")
ACTIVATIONS = ("tanh", "relu", "sigmoid", "silu")
TIMESCALES = ("acceleration", "encounter")  # physics/timescale.py step_time
INTEGRATOR_MODES = ("analytic", "ml", "history", "adaptive")
DTYPES = ("float32", "float64")
BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")


def _opt(default: Any, flags: tuple[str, ...], help: str, **extra: Any) -> Any:
    """A field with its CLI flags; list defaults are copied per instance."""
    meta = {"flags": flags, "help": help, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # --- system and initial conditions (shared) ---
    num_particles: int = _opt(2, ("--num-particles",), "bodies per system N")
    dim: int = _opt(2, ("--dim",), "spatial dimensions D (2 or 3)")
    mass: list[float] = _opt([1.0], ("--mass",), "one mass for all bodies or N masses", nargs="+")
    pos_scale: float = _opt(0.1, ("--pos-scale",), "std of random initial positions")
    vel_scale: float = _opt(1.0, ("--vel-scale",), "std of random initial velocities")
    ic: str = _opt("auto", ("--ic",), "initial conditions: kepler (N=2 orbit sampling), random, "
                   "or auto (kepler for N=2, random otherwise); --ic-path overrides",
                   choices=("auto", "kepler", "random"))
    ic_path: Optional[str] = _opt(None, ("--ic-path",), ".npy or text file of rows [m, x.., v..]")
    num_orbits: int = _opt(1, ("--num-orbits",), "orbits trained (or systems simulated) together, B")
    e_min: float = _opt(0.0, ("--e-min",), "smallest sampled Kepler eccentricity")
    e_max: float = _opt(0.9, ("--e-max",), "largest sampled Kepler eccentricity")
    a_min: float = _opt(1.0, ("--a-min",), "smallest sampled Kepler semi-major axis")
    a_max: float = _opt(1.0, ("--a-max",), "largest sampled Kepler semi-major axis")
    G: float = _opt(1.0, ("--G",), "gravitational constant")
    softening: float = _opt(0.0, ("--softening",), "Plummer softening length epsilon")
    integrator: str = _opt("leapfrog", ("--integrator",), "integrator", choices=("leapfrog", "yoshida4"))
    external_field_mass: float = _opt(0.0, ("--external-field-mass",), "tidal point mass M (0: no field)")
    external_field_position: Optional[list[float]] = _opt(
        None, ("--external-field-position",), "tidal point mass position R (D values)", nargs="+")
    seed: int = _opt(0, ("--seed",), "seed of every random choice")
    # --- execution ---
    device: str = _opt("cpu", ("--device",), "torch device (cpu, cuda, cuda:1, ...)")
    dtype: str = _opt("float64", ("--dtype",), "dtype of the state and the network", choices=DTYPES)
    backend: str = _opt("auto", ("--backend",), "kernel backend of the physics ops", choices=BACKENDS)
    tf32: bool = _opt(False, ("--tf32",), "allow TF32 matmuls on CUDA (float32 networks)")
    compile: bool = _opt(False, ("--compile",), "run the network through torch.compile")
    debug: bool = _opt(False, ("--debug",), "log every attempt to stderr and detect autograd anomalies")
    threads: int = _opt(0, ("--threads",), "CPU threads per process (0: torch's default; under torchrun the "
                        "machine's cores shared out among the ranks on it)")
    collective_timeout: float = _opt(300.0, ("--collective-timeout",), "under torchrun: seconds a rank waits "
                                     "in a collective for the others before the run fails")
    output_dir: str = _opt("./data", ("--output-dir",), "where runs are written")
    save_name: str = _opt("run", ("--save-name", "-s"), "run name: outputs go to <output-dir>/<save-name>/")
    # --- features and model ---
    history_len: int = _opt(0, ("--history-len",), "history states K fed to the network")
    feature_type: str = _opt("scaled", ("--feature-type",), "feature set (scaled: dimensionless, in the state's "
                             "own units)", choices=FEATURE_TYPES)
    normalize_inputs: bool = _opt(False, ("--normalize-inputs",), "scale features by L0, V0, A0, T0")
    norm_mode: str = _opt("auto", ("--norm-mode",), "auto: scales from the training ICs; manual: --norm-*",
                          choices=("auto", "manual"))
    norm_L0: Optional[float] = _opt(None, ("--norm-L0",), "length scale (manual)")
    norm_V0: Optional[float] = _opt(None, ("--norm-V0",), "velocity scale (manual)")
    norm_A0: Optional[float] = _opt(None, ("--norm-A0",), "acceleration scale (manual; default V0^2/L0)")
    norm_T0: Optional[float] = _opt(None, ("--norm-T0",), "time scale (manual; default L0/V0)")
    hidden_dims: list[int] = _opt([200, 1000, 1000, 200], ("--hidden-dims",), "hidden layer widths", nargs="+")
    activation: str = _opt("tanh", ("--activation",), "hidden activation", choices=ACTIVATIONS)
    dropout: float = _opt(0.2, ("--dropout",), "dropout after each hidden layer (training only)")
    fourier_scale: float = _opt(0.0, ("--fourier-scale",), "Gaussian Fourier embedding scale (0: off)")
    fourier_dim: int = _opt(64, ("--fourier-dim",), "Fourier embedding width (even)")
    dt_param: str = _opt("scale-aware", ("--dt-param",), "scale-aware: dt = tau * (learned factor), tau the "
                         "state's dynamical time; absolute: dt = softplus(output) + dt_min",
                         choices=("scale-aware", "absolute"))
    eta_init: float = _opt(0.02, ("--eta-init",), "scale-aware: a fresh network predicts dt = eta_init * tau")
    dt_factor_range: Optional[float] = _opt(None, ("--dt-factor-range",), "scale-aware: keep the learned factor "
                                            "within [eta_init / R, eta_init * R] (R > 1; unset: unbounded)")
    timescale: str = _opt("acceleration", ("--timescale",), "the time tau a scale-aware dt (and the adaptive "
                          "mode's eta * tau) is measured in: acceleration, min_i sqrt(d_i / |a_i|); encounter, its "
                          "minimum with the fly-by time min_ij d_ij / |v_ij|", choices=TIMESCALES)
    dt_min: float = _opt(1e-12, ("--dt-min",), "absolute: floor added to the predicted dt")
    dt_max: Optional[float] = _opt(None, ("--dt-max",), "cap on the predicted dt")
    # --- training ---
    epochs: int = _opt(1000, ("--epochs", "-n"), "epochs (Part 1 + Part 2 each)")
    duration: Optional[float] = _opt(None, ("--duration",), "train: wall-clock seconds (checked per epoch); "
                                     "simulate: simulated time")
    lr: float = _opt(1e-4, ("--lr",), "Adam learning rate")
    weight_decay: float = _opt(1e-2, ("--weight-decay",), "Adam weight decay")
    n_steps: int = _opt(10, ("--n-steps",), "integrator steps per attempt")
    energy_threshold: float = _opt(2e-4, ("--energy-threshold",), "accept when |dE/E0| is below this")
    steps_per_epoch: int = _opt(1, ("--steps-per-epoch",), "accepted steps per orbit per epoch (Part 1)")
    max_retrain_steps: int = _opt(1000, ("--max-retrain-steps",), "optimizer steps on one state before "
                                  "the cap (0: no cap)")
    on_retrain_cap: str = _opt("stop", ("--on-retrain-cap",), "at the cap: stop (checkpoint, exit 3) or "
                               "halve dt until the step passes", choices=("stop", "halve"))
    replay_steps: int = _opt(100, ("--replay-steps",), "Part 2 iterations at most per epoch")
    replay_batch_size: int = _opt(512, ("--replay-batch-size",), "Part 2 minibatch size")
    min_replay_size: int = _opt(10, ("--min-replay-size",), "skip Part 2 below this trajectory length")
    train_on: str = _opt("all", ("--train-on",), "which judged samples the band loss trains on: all (those "
                         "below E_lower push dt up) or failing (the earlier project's rule)",
                         choices=("all", "failing"))
    replay_tolerance: float = _opt(1e-2, ("--replay-tolerance",), "Part 2 converges when every sample passes "
                                   "the gate and the minibatch's mean band loss is at most this")
    E_lower: float = _opt(1e-6, ("--E_lower",), "lower edge of the band loss on |dE/E0|")
    E_upper: float = _opt(1e-4, ("--E_upper",), "upper edge of the band loss on |dE/E0|")
    checkpoint_every: int = _opt(10, ("--checkpoint-every",), "epochs between checkpoints")
    resume: Optional[str] = _opt(None, ("--resume",), "checkpoint to continue training from")
    wandb: bool = _opt(False, ("--wandb",), "log metrics to Weights & Biases (optional extra)")
    wandb_project: str = _opt("AITimeStepper", ("--wandb-project",), "W&B project")
    wandb_name: Optional[str] = _opt(None, ("--wandb-name",), "W&B run name (default: save name)")
    # --- simulation ---
    integrator_mode: str = _opt("ml", ("--integrator-mode",), "how dt is chosen", choices=INTEGRATOR_MODES)
    model_path: Optional[str] = _opt(None, ("--model-path",), "checkpoint for ml/history modes")
    dt: float = _opt(1e-3, ("--dt",), "fixed step of the analytic mode")
    eta: float = _opt(0.02, ("--eta",), "adaptive mode: dt = eta * min_i sqrt(d_i / |a_i|)")
    step_rule: str = _opt("auto", ("--step-rule",), "how a state-dependent dt f(s) is applied: symmetric "
                          "(time-reversible: 1/h_(n+1/2) + 1/h_(n-1/2) = 2/f(s_n)), plain (h = f(s_n)), or "
                          "auto (symmetric for the learned modes, plain for adaptive)",
                          choices=("auto", "symmetric", "plain"))
    energy_error_bound: float = _opt(0.1, ("--energy-error-bound",), "a system whose |dE/E0| passes this is "
                                     "reported diverged and stops")
    steps: int = _opt(1000, ("--steps",), "steps to simulate (unless --duration or --Nperiod)")
    Nperiod: Optional[float] = _opt(None, ("--Nperiod",), "simulate this many two-body periods")
    step_cap: int = _opt(10_000_000, ("--step-cap",), "hard limit on simulated steps")
    output_json: Optional[str] = _opt(None, ("--output-json",), "also write the JSON results here")
    plot: Optional[str] = _opt(None, ("--plot",), "write a PNG of the run (path, or '' for the movie dir)")
    movie: bool = _opt(False, ("--movie",), "write an MP4 (ffmpeg) or GIF of the run")
    movie_dir: str = _opt("./data/movies", ("--movie-dir",), "where movies and default plots go")
    movie_max_frames: int = _opt(300, ("--movie-max-frames",), "frames recorded at most")
    movie_fps: int = _opt(30, ("--movie-fps",), "movie frames per second")
    movie_dpi: int = _opt(100, ("--movie-dpi",), "movie and plot resolution")

    explicit: frozenset[str] = field(default=frozenset(), metadata={"internal": True})

    # ------------------------------------------------------------------
    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain data (for checkpoints and metrics): no Python objects inside."""
        return {f.name: _plain(getattr(self, f.name)) for f in settings()}

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.save_name

    def tidal_field(self):
        """The configured TidalField, or None when no external mass is set."""
        if not self.external_field_mass:
            return None
        from .physics.field import TidalField

        return TidalField(mass=self.external_field_mass, position=tuple(self.external_field_position))

    def physics_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by every call into aitimestepper.ops."""
        return {"G": self.G, "softening": self.softening, "field": self.tidal_field(), "backend": self.backend}

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def settings() -> list[dataclasses.Field]:
    """The user-visible fields (everything but bookkeeping)."""
    return [f for f in dataclasses.fields(Config) if not f.metadata.get("internal")]


SETTING_NAMES = frozenset(f.name for f in settings())
_TYPES = typing.get_type_hints(Config)


def setting_type(name: str) -> tuple[type, bool, bool]:
    """(element type, optional?, list?) of a setting."""
    hint = _TYPES[name]
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], optional, True
    return hint, optional, False


def coerce(name: str, value: Any, source: str) -> Any:
    """Check and convert one setting's value; the error names the key and where it came from."""
    kind, optional, is_list = setting_type(name)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: {name} cannot be empty")

    def one(v: Any) -> Any:
        if kind is bool:
            if isinstance(v, bool):
                return v
        elif kind is int:
            if isinstance(v, int) and not isinstance(v, bool):
                return v
            if isinstance(v, str):
                try:
                    return int(v)
                except ValueError:
                    pass
        elif kind is float:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
            if isinstance(v, str):
                try:
                    return float(v)
                except ValueError:
                    pass
        elif kind is str:
            if isinstance(v, str):
                return v
        raise ConfigError(f"{source}: {name} must be {'a list of ' if is_list else ''}{kind.__name__}, got {v!r}")

    if is_list:
        values = value if isinstance(value, (list, tuple)) else [value]
        return [one(v) for v in values]
    return one(value)


def _positive(cfg: Config, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be > 0, got {value}")


def _non_negative(cfg: Config, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be >= 0, got {value}")


def validate(cfg: Config) -> None:
    """Reject settings that cannot work, before anything runs or is written."""
    for f in settings():
        setattr(cfg, f.name, coerce(f.name, getattr(cfg, f.name), "setting"))
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            raise ConfigError(f"{f.name} must be one of {list(choices)}, got {getattr(cfg, f.name)!r}")
    check_seed(cfg.seed)
    check_save_name(cfg.save_name)
    check_device(cfg.device)
    if cfg.dim not in (2, 3):
        raise ConfigError(f"dim must be 2 or 3, got {cfg.dim}")
    if cfg.num_particles < 2:
        raise ConfigError(f"num_particles must be >= 2, got {cfg.num_particles}")
    if len(cfg.mass) not in (1, cfg.num_particles):
        raise ConfigError(f"mass needs 1 or num_particles = {cfg.num_particles} values, got {len(cfg.mass)}")
    if any(not (m > 0 and math.isfinite(m)) for m in cfg.mass):
        raise ConfigError(f"masses must be > 0, got {cfg.mass}")
    _positive(cfg, "epochs", "lr", "n_steps", "energy_threshold", "eta_init", "energy_error_bound", "steps_per_epoch", "replay_batch_size",
              "E_lower", "E_upper", "checkpoint_every", "num_orbits", "G", "dt", "eta", "steps",
              "step_cap", "duration", "Nperiod", "a_min", "a_max", "dt_min", "dt_max", "movie_max_frames",
              "movie_fps", "movie_dpi", "norm_L0", "norm_V0", "norm_A0", "norm_T0", "collective_timeout")
    _non_negative(cfg, "replay_tolerance", "weight_decay", "max_retrain_steps", "replay_steps", "min_replay_size",
                  "history_len", "softening", "pos_scale", "vel_scale", "fourier_scale", "external_field_mass",
                  "threads")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if not 0.0 <= cfg.e_min <= cfg.e_max < 1.0:
        raise ConfigError(f"need 0 <= e_min <= e_max < 1, got e_min = {cfg.e_min}, e_max = {cfg.e_max}")
    if cfg.a_min > cfg.a_max:
        raise ConfigError(f"need a_min <= a_max, got a_min = {cfg.a_min}, a_max = {cfg.a_max}")
    if cfg.dt_factor_range is not None and not (cfg.dt_factor_range > 1 and math.isfinite(cfg.dt_factor_range)):
        raise ConfigError(f"dt_factor_range must be a finite number > 1 (the factor's largest deviation from "
                          f"eta_init either way), got {cfg.dt_factor_range}")
    if cfg.E_lower >= cfg.E_upper:
        raise ConfigError(f"need E_lower < E_upper, got {cfg.E_lower} and {cfg.E_upper}")
    if cfg.energy_threshold < cfg.E_upper:
        raise ConfigError(
            f"energy_threshold {cfg.energy_threshold:g} lies below E_upper {cfg.E_upper:g}: a step with |dE/E0| "
            f"between them fails the gate at zero band loss, so retraining cannot move it; set E_upper to at "
            f"most the threshold (e.g. --E_upper {cfg.energy_threshold:g} --E_lower "
            f"{min(cfg.E_lower, cfg.energy_threshold / 100):g}) or raise --energy-threshold")
    if not cfg.hidden_dims or any(w < 1 for w in cfg.hidden_dims):
        raise ConfigError(f"hidden_dims must be positive widths, got {cfg.hidden_dims}")
    if cfg.fourier_scale > 0 and (cfg.fourier_dim < 2 or cfg.fourier_dim % 2):
        raise ConfigError(f"fourier_dim must be even and >= 2, got {cfg.fourier_dim}")
    if cfg.normalize_inputs and cfg.norm_mode == "manual" and (cfg.norm_L0 is None or cfg.norm_V0 is None):
        raise ConfigError("norm_mode = 'manual' needs norm_L0 and norm_V0")
    if cfg.external_field_mass:
        position = cfg.external_field_position
        if position is None or len(position) != cfg.dim:
            raise ConfigError(f"external_field_position needs dim = {cfg.dim} values, got {position}")
        if all(c == 0 for c in position):
            raise ConfigError("external_field_position must not be the origin")
    if cfg.dt_max is not None and cfg.dt_max <= cfg.dt_min:
        raise ConfigError(f"dt_max ({cfg.dt_max}) must exceed dt_min ({cfg.dt_min})")


# ----------------------------------------------------------------------------------------------
# TOML


def _normalize_key(key: str) -> str:
    return key.replace("-", "_")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a config file into {"": top-level, "train": {...}, "simulate": {...}}, keys checked."""
    path = Path(path)
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {str(path)!r} {problem}")
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (a TOML file must be)") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error.strerror or error}") from None
    tables: dict[str, dict[str, Any]] = {"": {}, **{phase: {} for phase in PHASES}}
    for key, value in raw.items():
        if key in PHASES:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{key}] must be a table")
            for sub_key, sub_value in value.items():
                tables[key][_checked_key(sub_key, f"{path} [{key}]")] = sub_value
        elif isinstance(value, dict):
            raise ConfigError(f"{path}: unknown table [{key}]; only [train], [simulate] and [evaluate] exist")
        else:
            tables[""][_checked_key(key, str(path))] = value
    return tables


def _checked_key(key: str, where: str) -> str:
    name = _normalize_key(key)
    if name not in SETTING_NAMES:
        raise ConfigError(f"{where}: unknown key {key!r}")
    return name


def build_config(phase: Optional[str], toml_tables: Optional[dict[str, dict[str, Any]]],
                 cli_values: dict[str, Any], source: str = "config file") -> Config:
    """Merge defaults < TOML top level < TOML [phase] < explicit CLI values into one Config."""
    values: dict[str, Any] = {}
    if toml_tables:
        for table in ("", phase or ""):
            for key, value in toml_tables.get(table, {}).items():
                where = f"{source} [{table}]" if table else source
                values[key] = coerce(key, value, where)
    for key, value in cli_values.items():
        values[key] = coerce(key, value, f"--{key}")
    return Config(**values, explicit=frozenset(values))


def config_from_dict(data: dict[str, Any], explicit: frozenset[str] = frozenset()) -> Config:
    """Rebuild a Config saved with to_dict (keys unknown to this version are an error)."""
    unknown = sorted(set(data) - SETTING_NAMES)
    if unknown:
        raise ConfigError(f"saved config has unknown key(s) {unknown}")
    return Config(**data, explicit=explicit)
