"""`aitimestepper evaluate`: is a learned dt worth using? It against hand-made steps at equal cost.

For one system (the first of the configured initial conditions: generated, an --ic-path file or
a reference-case .json), the learned dt runs once, with its step rule (symmetric by default)
and plainly. Its cost is counted in force evaluations, every one of them. The hand-made steps
run as sweeps around that count: fixed-dt leapfrog (dt spaced by sqrt(2)) and the classical
criterion dt = eta * tau (eta spaced by sqrt(2), tau the dynamical time), plainly and
symmetrised. A model whose step is measured in another time scale (--timescale encounter) is
also compared with eta times that time, symmetrised: the hand-made step its training started
from. Each sweep's largest |dE/E0| over the run is interpolated in log-log to the learned run's
evaluation count, so every row of the table is read at the same cost. With `rebound` installed,
REBOUND's IAS15 (at its own cost: it sets the accuracy ceiling) and its leapfrog (at the learned
run's cost) join.

The table goes to stdout, the numbers to --output-json, and with --plot a PNG: max |dE/E0|
against force evaluations (one curve per sweep, the learned runs as points) beside dt against
the closest separation along the learned run and along the classical run of equal cost.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, TextIO

import torch

from .checkpoint import check_system, load_checkpoint, resolve_checkpoint
from .config import Config
from .errors import ConfigError
from .guards import check_outputs
from .initial_conditions import Systems, make_systems
from .simulate import Recording, Simulator, _t_end, report_written, simulation_config, write_text_atomic

SWEEP_HALF_WIDTH = 2  # sweep points on each side of the matched one, sqrt(2) apart: a factor 2 in cost
RECORDED_FRAMES = 4000  # frames kept for the dt-against-separation panel


@dataclass
class Run:
    """One simulation's figures: cost, accuracy and speed (and the frames the plot draws)."""

    label: str
    evaluations: int
    energy_error_max: float
    steps: int
    wall_per_step_s: float
    parameter: Optional[float] = None  # dt or eta of a sweep point
    recording: Optional[Recording] = field(default=None, repr=False)
    planned_evaluations: Optional[float] = None  # a diverged run's cost had it gone on (else evaluations)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "evaluations": self.evaluations, "energy_error_max": self.energy_error_max,
                "steps": self.steps, "wall_per_step_s": self.wall_per_step_s, "parameter": self.parameter,
                "planned_evaluations": self.planned_evaluations}


@dataclass
class Row:
    """One method in the table: its max |dE/E0| at the learned run's evaluation count."""

    method: str
    energy_error_max: float
    evaluations: float
    wall_per_step_s: float
    note: str = ""


def _simulate(cfg: Config, checkpoint, systems: Systems, t_end, label: str, parameter=None,
              record: bool = False) -> Run:
    simulator = Simulator(cfg, checkpoint)
    recording = Recording(RECORDED_FRAMES) if record else None
    out = simulator.run(systems, t_end, recording)
    steps = int(out["steps"][0])
    evaluations = int(out["evaluations"][0])
    error = float(out["energy_error_max"][0])
    planned = float(evaluations)
    # A run cut by --step-cap did not cover the span: its error so far is not comparable either.
    if bool(out["diverged"][0]) or bool(out["stalled"][0]) or out["step_cap_reached"] or not math.isfinite(error):
        error = math.inf
        # It stopped early: its cost over the whole span, at the rate it was going.
        reached = float(out["t"][0]) if math.isfinite(float(out["t"][0])) else 0.0
        planned = evaluations * float(t_end[0]) / reached if reached > 0 else math.inf
    return Run(label, evaluations, error, steps, out["wall_time_s"] / max(steps, 1), parameter, recording, planned)


def interpolate(runs: list[Run], evaluations: float, bound: float) -> tuple[float, str]:
    """max |dE/E0| of a sweep at `evaluations`, linear in log-log between the two runs around it
    (extrapolated from the two nearest, and said so, when the sweep does not reach it). Where a
    run of at least this cost diverged, the error is only known to exceed `bound`: that is
    returned, and said."""
    if any(not math.isfinite(r.energy_error_max) and (r.planned_evaluations or r.evaluations) >= evaluations
           for r in runs):
        return bound, f"diverged at this cost: the error exceeds {bound:g}"
    points = sorted((r.evaluations, r.energy_error_max) for r in runs
                    if math.isfinite(r.energy_error_max) and r.energy_error_max > 0)
    if len(points) < 2:
        return math.nan, "too few finite runs"
    note = ""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= evaluations <= x1:
            break
    else:
        (x0, y0), (x1, y1) = points[:2] if evaluations < points[0][0] else points[-2:]
        note = "extrapolated"
    if x1 == x0:
        return min(y0, y1), note
    w = (math.log(evaluations) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp((1 - w) * math.log(y0) + w * math.log(y1)), note


def _sweep(run_at, matched: float, record: bool) -> list[Run]:
    """run_at(value, record) at values spaced by sqrt(2) around `matched`; with `record`, the
    middle one is run a second time with its frames recorded (untimed: recording costs)."""
    runs = [run_at(matched * 2 ** (k / 2), False) for k in range(-SWEEP_HALF_WIDTH, SWEEP_HALF_WIDTH + 1)]
    if record:
        runs[SWEEP_HALF_WIDTH].recording = run_at(matched, True).recording
    return runs


def _rebound_runs(cfg: Config, systems: Systems, span: float, target: int) -> list[Run]:
    """REBOUND's IAS15 (its own adaptive steps and cost) and its leapfrog (drift-kick-drift) at the
    learned run's force-evaluation count, when rebound is installed and the system has no
    external field; [] otherwise. Forces are counted through REBOUND's additional-forces hook,
    which it calls once per force evaluation; the energy error is checked after every step."""
    try:
        import rebound
    except ImportError:
        return []
    if cfg.external_field_mass:
        return []
    pos, vel, mass = (t[0].double().cpu().tolist() for t in (systems.pos, systems.vel, systems.mass))
    runs = []
    for integrator in ("ias15", "leapfrog"):
        sim = rebound.Simulation()
        sim.G = cfg.G
        sim.softening = cfg.softening
        sim.integrator = integrator
        for m, x, v in zip(mass, pos, vel):
            x, v = list(x) + [0.0] * (3 - len(x)), list(v) + [0.0] * (3 - len(v))
            sim.add(m=m, x=x[0], y=x[1], z=x[2], vx=v[0], vy=v[1], vz=v[2])
        if integrator == "leapfrog":
            sim.dt = span / target
        evaluations = [0]

        def count(_simulation, evaluations=evaluations) -> None:
            evaluations[0] += 1

        sim.additional_forces = count
        energy0, worst = sim.energy(), 0.0
        started = time.perf_counter()
        while sim.t < span * (1 - 1e-12):
            if integrator == "leapfrog":
                sim.dt = min(sim.dt, span - sim.t)
            sim.steps(1)
            worst = max(worst, abs((sim.energy() - energy0) / energy0))
        wall = time.perf_counter() - started
        label = "REBOUND IAS15" if integrator == "ias15" else "REBOUND leapfrog (DKD)"
        runs.append(Run(label, evaluations[0], worst, sim.steps_done, wall / max(sim.steps_done, 1)))
    return runs


def evaluate(cfg: Config, *, stream: Optional[TextIO] | Literal["stdout"] = "stdout") -> dict[str, Any]:
    """Run the comparison for cfg (a simulation config with a model); print the table, write the
    JSON and the plot when asked; return the report."""
    if stream == "stdout":  # the stream of the moment (a default bound at import would go stale)
        stream = sys.stdout
    if not cfg.model_path:
        raise ConfigError("evaluate needs --model-path (a checkpoint or a run folder)")
    check_outputs(cfg, "evaluate")
    model_path = resolve_checkpoint(cfg.model_path)
    checkpoint = load_checkpoint(model_path, map_location=cfg.device)
    # Dozens of short runs, each its own Simulator: --compile would compile the network anew for
    # each (and torch.compile stops compiling after a few), costing more than it could save.
    cfg = simulation_config(cfg, checkpoint).replace(model_path=str(model_path), num_orbits=1, compile=False)
    if cfg.plot is not None:
        from .plotting import require_matplotlib

        require_matplotlib()
    systems = make_systems(cfg, torch.Generator().manual_seed(cfg.seed))
    systems = Systems(systems.pos[:1], systems.vel[:1], systems.mass[:1],
                      None if systems.periods is None else systems.periods[:1])
    check_system(checkpoint, systems.pos.shape[-2], systems.pos.shape[-1], model_path)
    t_end = _t_end(cfg, systems)
    if t_end is None:
        raise ConfigError("evaluate compares runs over the same time: give --Nperiod or --duration")
    if not bool(torch.isfinite(t_end).all()):
        raise ConfigError("--Nperiod needs a bound two-body system (or a case file); use --duration")
    mode = "history" if checkpoint["history_len"] else "ml"
    timescale = checkpoint["architecture"].get("timescale", "acceleration")
    learned_cfg = cfg.replace(integrator_mode=mode, timescale=timescale)
    # A few untimed steps of each kind first, so that one-time costs (first calls into the
    # compiled module, allocator warm-up) do not land in the wall time per step of the first run.
    for warm, model in ((learned_cfg, checkpoint), (cfg.replace(integrator_mode="adaptive"), None),
                        (cfg.replace(integrator_mode="analytic"), None)):
        Simulator(warm.replace(steps=20), model).run(systems, None, None)
    rule = "symmetric" if cfg.step_rule in ("auto", "symmetric") else "plain"
    learned = _simulate(learned_cfg.replace(step_rule=rule), checkpoint, systems, t_end, f"learned ({rule})")
    if cfg.plot is not None:  # the frames for the plot come from a second, untimed run (recording costs)
        learned.recording = _simulate(learned_cfg.replace(step_rule=rule), checkpoint, systems, t_end, "",
                                      record=True).recording
    other_rule = "plain" if rule == "symmetric" else "symmetric"
    learned_other = _simulate(learned_cfg.replace(step_rule=other_rule), checkpoint, systems, t_end,
                              f"learned ({other_rule})")
    target = learned.evaluations
    span = float(t_end[0])

    def fixed(dt: float, record: bool = False) -> Run:
        return _simulate(cfg.replace(integrator_mode="analytic", dt=dt), None, systems, t_end, "fixed dt", dt, record)

    def classical(rule_name: str, timescale: str):
        def run_at(eta: float, record: bool = False) -> Run:
            return _simulate(cfg.replace(integrator_mode="adaptive", eta=eta, step_rule=rule_name,
                                         timescale=timescale), None, systems, t_end,
                             f"eta criterion ({rule_name}, {timescale} time)", eta, record)
        return run_at

    # A fixed step's cost is known in advance; the classical one's is 1/eta times that of a probe.
    eta_probe = learned_eta(checkpoint, cfg)
    sweeps = {"fixed-dt leapfrog": _sweep(fixed, span / (target - 1), record=False)}
    classical_sweeps = [("eta criterion", "plain", "acceleration"),
                        ("eta criterion, symmetric", "symmetric", "acceleration")]
    if timescale != "acceleration":  # the learned factor's own starting point: what the training added
        classical_sweeps.append((f"eta x {timescale} time, symm.", "symmetric", timescale))
    for name, rule_name, scale in classical_sweeps:
        probe = classical(rule_name, scale)(eta_probe)
        sweeps[name] = _sweep(classical(rule_name, scale), eta_probe * probe.evaluations / target,
                              cfg.plot is not None)
    rows = [Row(learned.label, learned.energy_error_max, learned.evaluations, learned.wall_per_step_s),
            Row(learned_other.label, learned_other.energy_error_max, learned_other.evaluations,
                learned_other.wall_per_step_s, "its own cost")]
    for name, runs in sweeps.items():
        value, note = interpolate(runs, target, cfg.energy_error_bound)
        wall = sum(r.wall_per_step_s for r in runs) / len(runs)
        rows.append(Row(name, value, target, wall, note))
    rebound_runs = _rebound_runs(cfg, systems, span, target)
    rows += [Row(run.label, run.energy_error_max, run.evaluations, run.wall_per_step_s,
                 "its own cost" if run.label.endswith("IAS15") else "") for run in rebound_runs]
    report = {
        "model": str(model_path), "mode": mode, "step_rule": rule, "ic": _describe_ic(cfg),
        "t_end": span, "learned_evaluations": target,
        "rows": [row.__dict__ for row in rows],
        "ratios": {name: learned.energy_error_max / row.energy_error_max
                   for name, row in zip(sweeps, rows[2:2 + len(sweeps)]) if row.energy_error_max > 0},
        "runs": {"learned": [learned.to_dict(), learned_other.to_dict()],
                 **{name: [r.to_dict() for r in runs] for name, runs in sweeps.items()},
                 "rebound": [r.to_dict() for r in rebound_runs]},
    }
    if stream is not None:
        stream.write(format_table(report))
        stream.flush()
    written = []
    if cfg.plot is not None:
        from .plotting import write_evaluation_plot

        path = cfg.plot or str(Path(cfg.movie_dir) / f"{cfg.save_name}-evaluate.png")
        report["plot"] = str(write_evaluation_plot(path, report, learned, learned_other, sweeps, cfg.movie_dpi))
        written.append(path)
    if cfg.output_json:
        written.append(write_text_atomic(cfg.output_json, json.dumps(report, indent=1, allow_nan=True) + "\n"))
    report_written(written)
    return report


def learned_eta(checkpoint: dict[str, Any], cfg: Config) -> float:
    """Where the classical sweep starts: the scale-aware network's eta_init, else --eta."""
    architecture = checkpoint["architecture"]
    if architecture.get("dt_param") == "scale-aware":
        return float(architecture["eta_init"])
    return cfg.eta


def _describe_ic(cfg: Config) -> str:
    if cfg.ic_path:
        return cfg.ic_path
    if cfg.num_particles == 2 and cfg.ic in ("auto", "kepler"):
        return f"Kepler e in [{cfg.e_min}, {cfg.e_max}], a in [{cfg.a_min}, {cfg.a_max}], seed {cfg.seed}"
    return f"random N = {cfg.num_particles}, D = {cfg.dim}, seed {cfg.seed}"


def format_table(report: dict[str, Any]) -> str:
    """The comparison as a fixed-width text table (one line per method)."""
    lines = [f"evaluate {report['model']}",
             f"  initial conditions: {report['ic']}; t_end = {report['t_end']:.6g}; learned run: "
             f"{report['learned_evaluations']} force evaluations",
             f"  {'method':<28} {'evaluations':>11} {'max |dE/E0|':>12} {'learned / it':>12} {'us/step':>8}  note"]
    learned = report["rows"][0]["energy_error_max"]
    for row in report["rows"]:
        error = row["energy_error_max"]
        ratio = learned / error if error and math.isfinite(error) and error > 0 else math.nan
        lines.append(f"  {row['method']:<28} {row['evaluations']:>11.0f} {error:>12.3e} {ratio:>12.3g} "
                     f"{1e6 * row['wall_per_step_s']:>8.1f}  {row['note']}")
    return "\n".join(lines) + "\n"
