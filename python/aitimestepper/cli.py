"""The `aitimestepper` command: train, simulate, both, evaluate, bench, info.

Flags are generated from the Config table (config.py) with argparse, which accepts both
`--flag value` and `--flag=value`; every flag defaults to "not given", so only flags on the
command line override the TOML file and the defaults. Each command takes and shows only its own
settings (COMMAND_SETTINGS); flags are kebab-case, with the earlier project's spellings
(`--E_lower`, `--Nperiod`, ...) as aliases, and an unknown flag gets the closest known ones. `--config FILE.toml` is taken out of the
arguments first, wherever it stands (before or after the subcommand). Human-readable output
(progress, the training summary, errors) goes to stderr; machine-readable JSON to stdout.

Exit status: 0 success, 2 bad usage or input (nothing written), 3 training stopped at the
retrain cap (a checkpoint was written), 130 / 143 training stopped by SIGINT / SIGTERM after the
current epoch (a checkpoint was written; 130 also for an interrupt before training starts).
Under torchrun (train, simulate, both) every rank ends with the status and message of the
first rank that failed (distributed.py); only rank 0 prints JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import signal
import sys
from typing import Any, Optional, Sequence

from . import distributed
from .config import Config, build_config, read_toml, setting_type, settings
from .distributed import PeerFailed
from .errors import AITimeStepperError, ConfigError, TrainingInterrupted, TrainingStopped

EXIT_USAGE = 2
EXIT_STOPPED = 3
COMMANDS = ("train", "simulate", "both", "evaluate", "bench", "info")


# Which settings each command takes: the system and execution settings are shared; the rest
# belong to the phase that reads them. tests/test_cli.py checks that every setting has a home.
SHARED = ("num_particles", "dim", "mass", "pos_scale", "vel_scale", "ic", "ic_path", "num_orbits", "e_min", "e_max",
          "a_min", "a_max", "G", "softening", "integrator", "external_field_mass", "external_field_position", "seed",
          "device", "dtype", "backend", "tf32", "compile", "debug", "threads", "collective_timeout", "output_dir",
          "save_name")
MODEL = ("history_len", "feature_type", "normalize_inputs", "norm_mode", "norm_L0", "norm_V0", "norm_A0", "norm_T0",
         "hidden_dims", "activation", "dropout", "fourier_scale", "fourier_dim", "dt_param", "eta_init", "dt_min",
         "dt_max", "dt_factor_range", "timescale")
TRAINING = ("epochs", "duration", "lr", "weight_decay", "n_steps", "energy_threshold", "steps_per_epoch",
            "max_retrain_steps", "on_retrain_cap", "replay_steps", "replay_batch_size", "min_replay_size", "train_on",
            "replay_tolerance", "E_lower", "E_upper", "checkpoint_every", "resume", "wandb", "wandb_project",
            "wandb_name")
SIMULATION = ("integrator_mode", "model_path", "dt", "eta", "timescale", "step_rule", "energy_error_bound", "steps",
              "duration", "Nperiod", "step_cap", "output_json", "plot", "movie", "movie_dir", "movie_max_frames",
              "movie_fps", "movie_dpi")
EVALUATION = ("model_path", "eta", "step_rule", "energy_error_bound", "duration", "Nperiod", "step_cap",
              "output_json", "plot", "movie_dir", "movie_dpi")
COMMAND_SETTINGS = {
    "train": SHARED + MODEL + TRAINING,
    "simulate": SHARED + SIMULATION,
    "both": SHARED + MODEL + TRAINING + SIMULATION,
    "evaluate": SHARED + EVALUATION,
}
COMMAND_HELP = {
    "train": "two-phase training",
    "simulate": "integrate systems and print JSON",
    "both": "train, then simulate with the last checkpoint",
    "evaluate": "a model's learned dt against fixed and classical steps at equal force evaluations",
}


def flag_names(name: str) -> list[str]:
    """A setting's flags: the kebab-case one first (lower case, hyphens), then the spellings the
    earlier project's users know (--E_lower, --Nperiod, --G, ...) and short forms, as aliases."""
    primary = "--" + name.lower().replace("_", "-")
    flags = [primary, *settings_by_name()[name].metadata["flags"]]
    return list(dict.fromkeys(flags))


def settings_by_name() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in settings()}


def settings_parser(command: str) -> argparse.ArgumentParser:
    """A parent parser holding one flag per setting of `command` (defaults suppressed: 'not given')."""
    parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS, allow_abbrev=False)
    tables = "[train] and [simulate]" if command == "both" else f"[{command}]"
    parser.add_argument("--config", metavar="FILE.toml", help=f"settings file (top level, {tables})")
    fields = settings_by_name()
    for name in dict.fromkeys(COMMAND_SETTINGS[command]):
        f = fields[name]
        meta = dict(f.metadata)
        kind = setting_type(f.name)[0]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kwargs: dict[str, Any] = {"dest": f.name, "help": f"{meta['help']} (default: {default})"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if "nargs" in meta:
                kwargs["nargs"] = meta["nargs"]
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
        if f.name == "plot":
            kwargs.update(nargs="?", const="", metavar="PNG")
        parser.add_argument(*flag_names(f.name), **kwargs)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aitimestepper", allow_abbrev=False,
        description="Learned adaptive time steps for gravitational N-body simulation.")
    sub = parser.add_subparsers(dest="command", metavar="{train,simulate,both,evaluate,bench,info}")
    for command, text in COMMAND_HELP.items():
        sub.add_parser(command, parents=[settings_parser(command)], help=text, allow_abbrev=False)
    sub.add_parser("bench", help="kernel benchmarks (arguments go to aitimestepper.bench.kernels)", add_help=False)
    sub.add_parser("info", help="print the build information as JSON")
    return parser


def check_flags(command: str, argv: Sequence[str]) -> None:
    """Every --flag of argv is one of `command`'s; otherwise an error that names the flag and
    the closest flags of this command (or the commands that do take it)."""
    known = {"--config", "--help", "-h"}
    for name in COMMAND_SETTINGS[command]:
        for flag in flag_names(name):
            known.add(flag)
            if setting_type(name)[0] is bool and flag.startswith("--"):
                known.add("--no-" + flag[2:])
    for arg in argv:
        if not arg.startswith("-") or arg == "-" or arg[1:2].isdigit() or arg[1:2] == ".":
            continue
        flag = arg.split("=", 1)[0]
        if flag in known:
            continue
        elsewhere = [other for other in COMMAND_SETTINGS if other != command
                     and any(flag in flag_names(name) for name in COMMAND_SETTINGS[other])]
        if elsewhere:
            raise ConfigError(f"{flag} is not a flag of '{command}' (it belongs to: {', '.join(elsewhere)})")
        close = difflib.get_close_matches(flag, sorted(known), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; see 'aitimestepper {command} --help'"
        raise ConfigError(f"unknown flag {flag} for '{command}'{hint}")


def split_config(argv: Sequence[str]) -> tuple[list[str], Optional[str]]:
    """Remove `--config FILE` / `--config=FILE` from anywhere in argv."""
    rest: list[str] = []
    path: Optional[str] = None
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config":
            if i + 1 >= len(args):
                raise ConfigError("--config needs a file name")
            path, i = args[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return rest, path


def configs_for(command: str, argv: Sequence[str]) -> tuple[Optional[Config], Optional[Config]]:
    """(training config, simulation config) for a command line (evaluate's is its simulation
    config, read from the [evaluate] table)."""
    rest, config_path = split_config(argv)
    check_flags(command, [arg for arg in rest if arg != command])
    namespace = vars(build_parser().parse_args(rest))
    namespace.pop("command", None)
    tables = read_toml(config_path) if config_path else None
    source = config_path or "config file"
    train = build_config("train", tables, namespace, source) if command in ("train", "both") else None
    simulate = build_config("simulate", tables, namespace, source) if command in ("simulate", "both") else None
    if command == "evaluate":
        simulate = build_config("evaluate", tables, namespace, source)
    return train, simulate


def _command(argv: Sequence[str]) -> Optional[str]:
    """The subcommand: the first argument that names one and is not a --config value."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--config":
            skip = True
            continue
        if arg in COMMANDS:
            return arg
        if not arg.startswith("-"):
            return None
    return None


def _bench(argv: list[str]) -> int:
    """The quick kernel table: printed, and written only to the path given with --output."""
    try:
        from .bench import kernels
    except ImportError as error:
        print(f"error: the kernel benchmark (aitimestepper.bench.kernels) is not available: {error}", file=sys.stderr)
        return EXIT_USAGE
    return int(kernels.main(argv) or 0)


def _info() -> int:
    from . import build_info

    print(json.dumps(build_info(), indent=2, default=str))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command(argv)
    if command == "bench":
        return _bench(argv[argv.index("bench") + 1:])
    if command is None or command == "info":
        if command is None:
            build_parser().parse_args(argv)  # prints usage / --help, or errors on a bad command
            build_parser().print_help(sys.stderr)
            return EXIT_USAGE
        return _info()
    try:
        train_cfg, sim_cfg = configs_for(command, argv)
        group = _join(command, train_cfg if command in ("train", "both") else sim_cfg)
        with group.failing_together(exit_status):
            _run(command, train_cfg, sim_cfg, group)
        distributed.leave()
    except (TrainingStopped, PeerFailed, AITimeStepperError, ImportError, KeyboardInterrupt) as error:
        print(f"error: {error}" if not isinstance(error, KeyboardInterrupt) else "error: interrupted", file=sys.stderr)
        return exit_status(error)
    return 0


def exit_status(error: BaseException) -> int:
    """The exit status a command ends with after `error` (see the module's docstring)."""
    if isinstance(error, TrainingInterrupted):
        return 128 + error.signum
    if isinstance(error, TrainingStopped):
        return EXIT_STOPPED
    if isinstance(error, PeerFailed):
        return error.exit_status
    if isinstance(error, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if isinstance(error, (AITimeStepperError, ImportError)):
        return EXIT_USAGE
    return 1


def _join(command: str, cfg: Config) -> "distributed.Group":
    """This process's group: one process, or a rank of the torchrun job (train, simulate, both)."""
    if command == "evaluate" and distributed.launched_by_torchrun():
        raise ConfigError("evaluate runs in one process (its runs are short and compared with each other); "
                          "start it without torchrun")
    return distributed.join(cfg.device, cfg.threads, cfg.collective_timeout)


def _run(command: str, train_cfg: Optional[Config], sim_cfg: Optional[Config], group) -> None:
    if command == "train":
        from .training import run_training

        result = run_training(train_cfg)
        if group.rank == 0:
            print(json.dumps({"checkpoint": result.checkpoint, "epochs_completed": result.epochs_completed,
                              "total_time_s": result.total_time, "convergence_rate": result.convergence_rate,
                              "trajectory_length": result.trajectory_length, "pass_rate": result.pass_rate,
                              "stop_reason": result.stop_reason, "metrics": result.metrics_path}))
    elif command == "simulate":
        from .simulate import run_simulation

        run_simulation(sim_cfg)
    elif command == "evaluate":
        from .evaluate import evaluate

        evaluate(sim_cfg)
    else:
        run_both(train_cfg, sim_cfg)


def run_both(train_cfg: Config, sim_cfg: Config) -> list[dict[str, Any]]:
    """Train, then simulate with the last checkpoint (ml, or history if the model uses history)."""
    from .simulate import check_simulation, run_simulation
    from .training import run_training
    from .training.loop import resolved_config

    check_simulation(sim_cfg, resolved_config(train_cfg))
    result = run_training(train_cfg)
    if result.checkpoint is None:
        raise ConfigError("training wrote no checkpoint (no epochs left to run?); nothing to simulate")
    changes: dict[str, Any] = {"model_path": result.checkpoint}
    if "integrator_mode" not in sim_cfg.explicit:
        changes["integrator_mode"] = "history" if train_cfg.history_len > 0 else "ml"
    return run_simulation(sim_cfg.replace(**changes))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
