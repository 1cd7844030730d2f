"""Pictures of a simulation: the orbits beside energy, energy error, |P|, |L| and dt over time.

`write_plot` saves the final picture as a PNG; `write_movie` animates it (MP4 through ffmpeg
when it is installed, a GIF otherwise). matplotlib is the optional `viz` extra and is imported
only here, when a picture is asked for.
"""
from __future__ import annotations

import shutil
from pathlib import Path


def require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--movie and --plot need matplotlib: pip install 'aitimestepper[viz]'") from None
    return plt


def _figure(recording, title: str = ""):
    """The figure and a function that draws the first `frames` frames into it."""
    plt = require_matplotlib()
    import numpy as np

    positions = np.stack([p.numpy() for p in recording.pos])  # [F, N, D]
    t = np.asarray(recording.t)
    energy = np.asarray(recording.energy)
    error = np.abs((energy - energy[0]) / energy[0]) if energy[0] else np.abs(energy - energy[0])
    error = np.maximum(error, 1e-17)  # the first frame's error is exactly 0: keep it on the log axis
    series = [("energy E", energy), ("|E - E0| / |E0|", error), ("|P|", np.asarray(recording.momentum)),
              ("|L|", np.asarray(recording.angular_momentum)), ("dt", np.asarray(recording.dt))]
    fig = plt.figure(figsize=(12, 6))
    if title:
        fig.suptitle(title, fontsize=10)
    grid = fig.add_gridspec(len(series), 2, width_ratios=(1.2, 1))
    orbit_axes = fig.add_subplot(grid[:, 0])
    panels = [fig.add_subplot(grid[i, 1]) for i in range(len(series))]

    def draw(frames: int) -> None:
        orbit_axes.clear()
        for body in range(positions.shape[1]):
            (trail,) = orbit_axes.plot(positions[:frames, body, 0], positions[:frames, body, 1], lw=0.8)
            orbit_axes.plot(positions[frames - 1, body, 0], positions[frames - 1, body, 1], "o", ms=4,
                            color=trail.get_color())
        orbit_axes.set_aspect("equal", adjustable="datalim")
        orbit_axes.set_xlabel("x")
        orbit_axes.set_ylabel("y")
        for axes, (label, values) in zip(panels, series):
            axes.clear()
            axes.plot(t[:frames], values[:frames], lw=0.8)
            axes.set_ylabel(label, fontsize=8)
            if label.startswith("|E"):
                axes.set_yscale("log")
        panels[-1].set_xlabel("t")
        fig.tight_layout()

    return fig, draw, len(t)


def write_plot(recording, path: str | Path, dpi: int = 100, title: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, draw, frames = _figure(recording, title)
    draw(frames)
    fig.savefig(path, dpi=dpi)
    require_matplotlib().close(fig)
    return path


def write_movie(recording, stem: str | Path, fps: int = 30, dpi: int = 100, title: str = "") -> Path:
    """Animate frame by frame; `stem` gets .mp4 (ffmpeg found) or .gif."""
    from matplotlib import animation

    fig, draw, frames = _figure(recording, title)
    use_ffmpeg = shutil.which("ffmpeg") is not None
    path = Path(stem).with_suffix(".mp4" if use_ffmpeg else ".gif")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = animation.FFMpegWriter(fps=fps) if use_ffmpeg else animation.PillowWriter(fps=fps)
    movie = animation.FuncAnimation(fig, lambda i: draw(i + 1), frames=frames)
    movie.save(str(path), writer=writer, dpi=dpi)
    require_matplotlib().close(fig)
    return path


def _closest_separation(recording):
    """Per recorded frame: the smallest pair distance, and the dt that led into the frame."""
    import numpy as np

    positions = np.stack([p.numpy() for p in recording.pos])  # [F, N, D]
    gaps = np.linalg.norm(positions[:, :, None] - positions[:, None], axis=-1)
    N = positions.shape[1]
    gaps[:, np.arange(N), np.arange(N)] = np.inf
    return gaps.min(axis=(1, 2)), np.asarray(recording.dt)


def write_evaluation_plot(path: str | Path, report, learned, learned_other, sweeps, dpi: int = 100) -> Path:
    """`evaluate`'s picture: max |dE/E0| against force evaluations (a curve per sweep, the learned
    runs as points) beside dt against the closest separation along the learned run and along the
    middle run of each classical sweep."""
    plt = require_matplotlib()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (cost_axes, dt_axes) = plt.subplots(1, 2, figsize=(12, 5))
    fig.suptitle(f"{report['model']}\n{report['ic']}, t_end = {report['t_end']:.4g}", fontsize=9)
    for name, runs in sweeps.items():
        points = sorted((r.evaluations, r.energy_error_max) for r in runs)
        cost_axes.plot(*zip(*points), "o-", ms=3, lw=1, label=name)
    for run, marker in ((learned, "*"), (learned_other, "D")):
        cost_axes.plot([run.evaluations], [run.energy_error_max], marker, ms=12 if marker == "*" else 7,
                       color="black" if marker == "*" else "gray", label=run.label)
    cost_axes.set(xscale="log", yscale="log", xlabel="force evaluations", ylabel="max |dE/E0| over the run")
    cost_axes.legend(fontsize=8)
    cost_axes.grid(True, which="both", alpha=0.3)
    curves = [(learned.label, learned.recording)]
    curves += [(runs[len(runs) // 2].label, runs[len(runs) // 2].recording) for name, runs in sweeps.items()
               if name != "fixed-dt leapfrog"]
    for label, recording in curves:
        if recording is None or len(recording.dt) < 3:
            continue
        separation, dt = _closest_separation(recording)
        # The first frame has no step into it and the last step is cut at the end time.
        dt_axes.loglog(separation[1:-1], dt[1:-1], ".", ms=2, label=label)
    dt_axes.set(xlabel="closest separation", ylabel="dt")
    dt_axes.legend(fontsize=8, markerscale=4)
    dt_axes.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
