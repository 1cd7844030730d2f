"""Simulation: integrate a batch of systems with a fixed, learned or classical adaptive dt.

Modes (--integrator-mode): `analytic` (fixed --dt), `ml` (dt from the network on the current
state), `history` (the network with history features; its window is filled by the first K
steps, taken with the classical step, before the network takes over), `adaptive` (the classical
criterion dt = eta * tau, tau = min_i sqrt(d_i / |a_i|), d_i the distance from body i to its
nearest neighbour, a_i its acceleration; with --timescale encounter, tau is the encounter time
of physics/timescale.py). A learned scale-aware step is measured in its model's time scale. A
state-dependent step is applied plainly or through the time-reversible recurrence of
`SymmetricSteps` (--step-rule; symmetric for the learned modes).

The loop carries the acceleration from the end of one step to the start of the next, so a
leapfrog step costs one force evaluation however dt changes between steps (ops.step, called
per step, would recompute it at the start of every call), and the learned modes read their
features off the same acceleration. Its state lives in buffers advanced in place by
ops.bind_carried_step (one compiled call per step on the cpu and cuda backends, on CUDA with the
energy after the step), and the features of the state and the step rule are one compiled call
each too (features.py, SymmetricSteps): at batch 1 every torch call costs microseconds,
and a step is then little more than the network's forward. Every loop stops at --step-cap, and
the energy error is measured after every step (the largest is reported as energy_error_max: a
run can end near its starting energy after passing through far larger errors).

The network's architecture, features, history length, normalization and dtype come from the
checkpoint, as do the system settings it was trained on (N, D, masses, G, softening, field,
integrator) unless given explicitly. Each system's result is one strict-JSON object; a system
whose energy error passed --energy-error-bound or whose state became non-finite reports
"diverged": true (non-finite values as null), one whose step stopped moving time "stalled": true.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, TextIO

import torch

from . import distributed, ops
from .checkpoint import check_system, load_checkpoint, resolve_checkpoint, restore_model
from .config import Config, config_from_dict
from .errors import ConfigError
from .guards import check_outputs
from .initial_conditions import Systems, kepler_period, make_systems
from .physics.integrators import substep_weights
from .ops.backends import _core, call_cuda, cuda_kernels_usable
from .physics.timescale import bind_step_time, dynamical_time, step_time

# System settings a checkpoint supplies unless the user gives them explicitly.
INHERITED_FROM_CHECKPOINT = ("num_particles", "dim", "mass", "G", "softening", "integrator", "external_field_mass",
                             "external_field_position", "dtype", "ic", "e_min", "e_max", "a_min", "a_max",
                             "pos_scale", "vel_scale")
CHUNK = 1024  # steps per dt-statistics flush
_COMPILED_RULE = _core is not None and hasattr(_core, "cpu_symmetric_step")
_CUDA_RULE = _core is not None and hasattr(_core, "cuda_symmetric_step")
CHECK_EVERY = 16  # steps between host checks of "all systems finished" in time-limited runs


@dataclass
class Recording:
    """Frames of system 0 for movies and plots, decimated to at most max_frames."""

    max_frames: int
    stride: int = 1
    t: list[float] = field(default_factory=list)
    pos: list[torch.Tensor] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)
    momentum: list[float] = field(default_factory=list)
    angular_momentum: list[float] = field(default_factory=list)
    dt: list[float] = field(default_factory=list)

    def add(self, t: float, pos, energy: float, momentum: float, angular: float, dt: float) -> None:
        self.t.append(t)
        self.pos.append(pos)
        self.energy.append(energy)
        self.momentum.append(momentum)
        self.angular_momentum.append(angular)
        self.dt.append(dt)
        if len(self.t) > self.max_frames:  # keep every other frame, record half as often
            for name in ("t", "pos", "energy", "momentum", "angular_momentum", "dt"):
                setattr(self, name, getattr(self, name)[::2])
            self.stride *= 2


def _norm_of(value: torch.Tensor) -> torch.Tensor:
    """|L| for [B] (2-D) or [B, 3] (3-D) angular momentum; |P| for [B, D]."""
    return value.abs() if value.dim() == 1 else value.norm(dim=-1)


class SymmetricSteps:
    """Applies a state-dependent step function f(s) time-reversibly, at no extra cost.

    The step from s_n is h_(n+1/2) with 1/h_(n+1/2) + 1/h_(n-1/2) = 2/f(s_n) (the explicit
    reversible step-size recurrence of adaptive Verlet integrators): the relation is symmetric
    under exchanging the steps before and after s_n, and a kick-drift-kick step run backwards
    retraces itself, so the run reversed (velocities flipped, the recurrence started from the
    step the forward run would take next) takes the same steps in the opposite order. That
    removes the secular energy drift a plain h = f(s_n) step has, while h follows f to first
    order in its change from step to step. The first step is f(s_0); each h is kept within
    [f/2, 2f] so that a sudden drop of f cannot make the recurrence overshoot. The recurrence
    runs on rho = 1/h (`previous` is h, for callers that seed it).
    """

    def __init__(self) -> None:
        self.rho: Optional[torch.Tensor] = None

    @property
    def previous(self) -> Optional[torch.Tensor]:
        return None if self.rho is None else self.rho.reciprocal()

    @previous.setter
    def previous(self, h: torch.Tensor) -> None:
        self.rho = h.reciprocal()

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        if self.rho is None:
            self.rho = f.reciprocal()
            return f
        compiled = _COMPILED_RULE if f.is_cpu else _CUDA_RULE and f.is_cuda and cuda_kernels_usable()
        if compiled and f.dim() == 1 and f.is_contiguous() and f.dtype is self.rho.dtype \
                and f.dtype in (torch.float32, torch.float64) and self.rho.is_contiguous() and not f.requires_grad:
            # One compiled call (csrc/cpu/mlp.cpp, csrc/cuda/loop.cu) of the formula below.
            h = torch.empty_like(f)
            arguments = (f.data_ptr(), self.rho.data_ptr(), h.data_ptr(), f.shape[0], f.dtype is torch.float64)
            if f.is_cpu:
                _core.cpu_symmetric_step(*arguments)
            else:
                call_cuda(_core.cuda_symmetric_step, f.device, *arguments)
            return h
        inverse = f.reciprocal()
        rho = torch.add(inverse, inverse - self.rho)  # 2/f - 1/h_prev
        # In place: a captured CUDA graph (_GraphedSteps) reads and writes this very buffer.
        torch.clamp(rho, min=0.5 * inverse, max=2 * inverse, out=self.rho)
        return self.rho.reciprocal()


class Simulator:
    """One simulation: the configured systems, the dt policy and the stepping loop."""

    def __init__(self, cfg: Config, checkpoint: Optional[dict[str, Any]] = None) -> None:
        self.cfg = cfg
        self.model = self.featurizer = None
        self.warmup_eta = cfg.eta
        if cfg.integrator_mode in ("ml", "history"):
            self.model, self.featurizer = restore_model(checkpoint, cfg.device)
            self.model.to(dtype=getattr(torch, cfg.dtype))
            self.model_dtype = cfg.dtype
            uses_history = self.featurizer.K > 0
            if cfg.integrator_mode == "history" and not uses_history:
                raise ConfigError("--integrator-mode history needs a checkpoint trained with history_len >= 1; "
                                  "this one has history_len 0 (use --integrator-mode ml)")
            if cfg.integrator_mode == "ml" and uses_history:
                raise ConfigError(f"this checkpoint uses {self.featurizer.K} history states; use "
                                  "--integrator-mode history")
            if self.model.scale_aware:  # training filled its windows with this step too
                self.warmup_eta = self.model.eta_init
            if "timescale" in cfg.explicit and cfg.timescale != self.model.timescale:
                raise ConfigError(f"--timescale {cfg.timescale}: this model measures its step in the "
                                  f"{self.model.timescale} time (fixed by training); leave --timescale out for "
                                  f"--integrator-mode {cfg.integrator_mode}")
        self.physics = cfg.physics_kwargs()
        self.weights = substep_weights(cfg.integrator)
        rule = cfg.step_rule
        if rule == "auto":
            rule = "symmetric" if cfg.integrator_mode in ("ml", "history") else "plain"
        self.step_rule = rule if cfg.integrator_mode != "analytic" else "plain"
        # How the loop runs its steps: "auto" runs blocks of CHECK_EVERY steps as captured CUDA
        # graphs on CUDA (without a recording) and step by step elsewhere; "per-step" always step
        # by step; "blocks" in blocks without capture on any device (the graph's logic, testable
        # on the CPU). All three give the same results.
        self.step_blocks = "auto"
        self.blocks_run = 0  # blocks of CHECK_EVERY steps the last run took as a unit
        self.graph_replays = 0  # of which replays of a captured CUDA graph

    def compiled_policy(self):
        """With --compile (learned modes, state-block features): the step policy's pure-PyTorch
        part, features -> tau -> network -> dt, as one torch.compile'd function of the state
        buffers and the history's feature blocks (None without history), returning (block, tau,
        f). On a GPU inductor fuses its ~60 small kernels into a few; the CUDA graph captures
        the compiled kernels like any other. Built once per Simulator (compiled on first call,
        per shape). None without --compile; delta_mag features are not compiled (a warning)."""
        if not self.cfg.compile or self.featurizer is None:
            return None
        if getattr(self, "_policy", None) is None:
            featurizer, model = self.featurizer, self.model
            if featurizer.feature_type == "delta_mag":
                warnings.warn("--compile: delta_mag features run uncompiled in simulation", stacklevel=2)
                return None

            def policy(pos, vel, mass, acc, past):
                tau = dynamical_time(pos, acc)
                if featurizer.feature_type == "scaled":
                    block = featurizer.scaled_block(pos, vel, mass, acc, tau)
                else:
                    block = featurizer.state_block_reference(pos, vel, mass, acc)
                x = block if past is None else torch.cat([past.flatten(1), block], -1)
                if model.embedding is not None:
                    x = model(x)
                else:  # the network as plain functions (the compiled CPU MLP cannot be traced)
                    for function, *arguments in model._plan():
                        x = function(x, *arguments)
                tau = step_time(pos, vel, acc, model.timescale, tau)
                return block, tau, model.dt_from_output(x, tau)

            model._plan()  # built eagerly, as the feature constants (_Loop)
            self._policy = torch.compile(policy, fullgraph=True, dynamic=False)
        return self._policy

    # ------------------------------------------------------------------
    def run(self, systems: Systems, t_end: Optional[torch.Tensor], recording: Optional[Recording]) -> dict[str, Any]:
        """Integrate the systems; returns their final pos/vel, t, steps, dt statistics and counts."""
        # Inference mode, not just no_grad: no version counters or view tracking on the many small
        # tensors of each step (about 20% of a single-system step). Its tensors cannot be changed
        # in place outside it, so the results leave as ordinary tensors (a clone of a few values).
        with torch.inference_mode(), ops.unchecked():
            out = self._run(systems, t_end, recording)
        out["dt"] = {key: value.clone() for key, value in out["dt"].items()}
        return {key: value.clone() if isinstance(value, torch.Tensor) else value for key, value in out.items()}

    def _run(self, systems: Systems, t_end: Optional[torch.Tensor], recording: Optional[Recording]) -> dict[str, Any]:
        """The stepping loop. Every step: f from the dt policy, h from the step rule, the step cut
        at the end time, one carried step (one force evaluation per substep), the energy error.
        A system stops moving (dt = 0 from then on) when it reaches its end time, when its energy
        error passes --energy-error-bound or turns non-finite (diverged), or when its step can no
        longer advance its time in the working precision (stalled). The host looks at the flags
        every CHECK_EVERY steps, so there is no per-step sync. On CUDA (without a recording) the
        steps between two looks run as one captured CUDA graph (_GraphedSteps)."""
        cfg = self.cfg
        started = time.perf_counter()
        on_cuda = systems.pos.device.type == "cuda"
        blocked = recording is None and (self.step_blocks == "blocks" or (self.step_blocks == "auto" and on_cuda))
        # A block of CHECK_EVERY steps ends in a flush of the dt log (a graph replays whole blocks).
        loop = _Loop(self, systems, t_end, chunk=CHECK_EVERY if blocked else CHUNK)
        limit = min(cfg.steps if t_end is None else cfg.step_cap, cfg.step_cap)
        first_block = max(1, loop.warmup_steps)  # the rule's first step and the warmup run eagerly
        block = _StepBlock(loop, CHECK_EVERY) if blocked else None
        if block is not None and on_cuda and self.step_blocks == "auto":
            block = _GraphedSteps(block)
        self.blocks_run = 0
        taken = 0
        while taken < limit:
            if block is not None and taken >= first_block and taken % CHECK_EVERY == 0 \
                    and limit - taken >= CHECK_EVERY:
                still_moving = block()  # CHECK_EVERY steps and the flag refresh, on the device
                taken += CHECK_EVERY
                self.blocks_run += 1
                if not bool(still_moving):  # the one host sync per block
                    break
                continue
            loop.step(warming=taken < loop.warmup_steps)
            taken += 1
            if recording is not None and taken % recording.stride == 0:
                self._record(recording, loop.t, loop.pos, loop.vel, loop.mass, loop.dt)
            if taken % CHECK_EVERY == 0 and not loop.flags.update(loop.t, loop.h, loop.deviation_max):
                break  # every system finished or stopped
        self.graph_replays = block.replays if isinstance(block, _GraphedSteps) else 0
        t, flags, stats = loop.t, loop.flags, loop.stats
        if taken % CHECK_EVERY or not taken:  # (a second look right after one would see every time frozen)
            flags.update(t, loop.h if taken else None, loop.deviation_max)
        error_max, diverged, stalled = flags.error_max, flags.diverged, flags.stalled
        dt_summary = stats.finish()
        if t_end is None:
            cap_reached = cfg.steps > cfg.step_cap
        else:
            cap_reached = taken >= cfg.step_cap and bool((t < t_end).any())
        wall = time.perf_counter() - started
        return {"pos": loop.pos, "vel": loop.vel, "t": t, "steps": stats.steps, "dt": dt_summary,
                "evaluations": 1 + len(self.weights) * stats.steps, "energy_error_max": error_max,
                "diverged": diverged, "stalled": stalled, "wall_time_s": wall, "step_cap_reached": cap_reached}

    def _record(self, recording: Recording, t, pos, vel, mass, dt) -> None:
        with ops.unchecked():
            self._record_unchecked(recording, t, pos, vel, mass, dt)

    def _record_unchecked(self, recording: Recording, t, pos, vel, mass, dt) -> None:
        step_dt = dt[0].item()
        if step_dt == 0.0:  # system 0 did not move (past its end time, or stopped): no new frame
            return
        energy = ops.total_energy(pos[:1], vel[:1], mass[:1], **self.physics)
        momentum = _norm_of(ops.linear_momentum(vel[:1], mass[:1]))
        angular = _norm_of(ops.angular_momentum(pos[:1], vel[:1], mass[:1]))
        # A copy: the loop's pos is a buffer that the next step overwrites.
        recording.add(t[0].item(), pos[0].to("cpu", copy=True), energy.item(), momentum.item(), angular.item(),
                      step_dt)


class _Loop:
    """The stepping loop's state and one step of it. The state lives in buffers that every step
    updates in place (pos, vel, acc, t, the energy-error maximum, the step rule's recurrence, the
    stop flags, the dt log), so the same step can be captured once as a CUDA graph and replayed."""

    def __init__(self, simulator: "Simulator", systems: Systems, t_end: Optional[torch.Tensor], chunk: int) -> None:
        cfg, physics = simulator.cfg, simulator.physics
        B = systems.pos.shape[0]
        self.cfg, self.physics, self.t_end = cfg, physics, t_end
        self.model, self.warmup_eta = simulator.model, simulator.warmup_eta
        # Contiguous copies the loop owns and advances in place.
        self.pos = pos = systems.pos.clone(memory_format=torch.contiguous_format)
        self.vel = vel = systems.vel.clone(memory_format=torch.contiguous_format)
        self.mass = mass = systems.mass
        self.acc = acc = ops.acceleration(pos, mass, **physics).contiguous()
        self.energy0 = ops.total_energy(pos, vel, mass, **physics)
        self.t = torch.zeros_like(mass[:, 0])
        self.deviation_max = torch.zeros_like(self.t)  # max |E - E0| so far
        self.flags = _StopFlags(B, self.t, cfg.energy_error_bound, self.energy0, t_end)
        self.stats = _DtStats(B, pos.dtype, pos.device, chunk)
        self.history = None
        self.warmup_steps = 0
        featurizer = simulator.featurizer
        if featurizer is not None and featurizer.K:
            self.history = featurizer.new_history(B, *pos.shape[1:], pos.dtype, pos.device)
            self.warmup_steps = featurizer.K  # the window is filled from real states first
        self.rule = SymmetricSteps() if simulator.step_rule == "symmetric" else None
        self.mask = False  # dt = 0 for stopped systems at every step (else only once one has stopped)
        self.h = self.dt = self._block = None
        # Checked once here, then one call per step (one compiled call on the cpu backend).
        self.advance = ops.bind_carried_step(pos, vel, acc, mass, integrator=cfg.integrator, with_energy=True,
                                             **physics)
        self.features = featurizer.bind(pos, vel, mass, acc, self.model.timescale) if featurizer is not None else None
        self.tau = bind_step_time(pos, vel, mass, acc, cfg.G, cfg.softening, cfg.timescale) \
            if self.features is None else None
        self.model_dt = self.model.bind_dt(B, pos.dtype, pos.device) if self.model is not None else None
        self.policy = simulator.compiled_policy() if self.features is not None else None
        if self.policy is not None:
            featurizer._constants(pos, *pos.shape[1:])  # built eagerly: the traced function only reads them

    def step(self, warming: bool = False) -> None:
        """One step of every system; self.h and self.dt hold its h (the rule's step) and dt."""
        t, t_end = self.t, self.t_end
        f = self._f(warming)
        h = self.rule(f) if self.rule is not None else f
        dt = h if t_end is None else torch.minimum(h, (t_end - t).clamp_min(0))
        if self.mask or self.flags.any_stopped:
            dt = torch.where(self.flags.stopped, 0.0, dt)
        dt = self.stats.log(dt, shortened=None if t_end is None else dt < h)  # non-finite dt becomes 0
        if self.history is not None:
            self.history.push(None, self._block, self.pos, self.vel, self.acc, dt)
        self.advance(dt)  # pos, vel, acc in place, and the energy after the step
        t.add_(dt)
        torch.maximum(self.deviation_max, (self.advance.energy - self.energy0).abs(), out=self.deviation_max)
        self.h, self.dt = h, dt

    def _f(self, warming: bool) -> torch.Tensor:
        """f(s) [B], the step the policy asks for at this state; features(history) gives the
        network input of the current state (computed during warmup too: it fills the window)."""
        mode = self.cfg.integrator_mode
        if mode == "analytic":
            return torch.full_like(self.t, self.cfg.dt)
        if mode == "adaptive":
            return self.cfg.eta * self.tau()
        if self.policy is not None:  # --compile: features, tau, network and dt head as one compiled function
            past = self.history.blocks if self.history is not None else None
            self._block, tau, f = self.policy(self.pos, self.vel, self.mass, self.acc, past)
            return self.warmup_eta * tau if warming else f
        inputs, self._block = self.features(self.history)
        if warming:
            return self.warmup_eta * self.features.tau
        return self.model_dt(inputs, self.features.tau)


class _StepBlock:
    """`steps` steps of the loop and the refresh of its stop flags, with no host sync: stopped
    and finished systems are masked (dt = 0) on the device instead. Returns a bool tensor []:
    whether any system is still moving (the caller's one sync per block). Runs eagerly on any
    device; on CUDA _GraphedSteps captures it."""

    def __init__(self, loop: _Loop, steps: int) -> None:
        self.loop, self.steps = loop, steps

    def __call__(self) -> torch.Tensor:
        loop = self.loop
        if loop.stats.pending:
            raise RuntimeError("a step block must start with an empty dt log (after a flush)")
        loop.mask = True  # from now on, eager steps too (the host no longer tracks any_stopped)
        for _ in range(self.steps):
            loop.step()
        return loop.flags.refresh(loop.t, loop.h, loop.deviation_max)[1]


class _GraphedSteps:
    """A _StepBlock captured once as a CUDA graph and replayed: its few hundred kernels go to
    the GPU in one launch. Every tensor the block reads from one replay to the next is a buffer
    it updates in place (see _Loop), so replays continue the run; what the host tracks (the dt
    log's row counter) returns to where it was at the end of each block. The first call runs
    the block eagerly on a side stream (torch's warm-up rule for capture: every kernel, cuBLAS
    handle and cached constant of the block exists before the capture); the second captures
    it, and every call replays it."""

    def __init__(self, block: _StepBlock) -> None:
        self.block = block
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.still_moving: Optional[torch.Tensor] = None
        self.replays = 0

    def __call__(self) -> torch.Tensor:
        if self.still_moving is None:  # warm-up: a real block, eagerly, on a side stream
            side, main = torch.cuda.Stream(), torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                self.still_moving = self.block()
            main.wait_stream(side)
            return self.still_moving
        if self.graph is None:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.still_moving = self.block()
            self.graph = graph
        self.graph.replay()
        self.replays += 1
        return self.still_moving


class _StopFlags:
    """Which systems have stopped, decided every CHECK_EVERY steps (one host sync then): diverged
    (|dE/E0| so far past the bound, or not finite) and stalled (unfinished, yet its time did not
    move over the last check's steps, or its step was not positive). Stopped systems take dt = 0.
    The flags are buffers refreshed in place (a CUDA graph refreshes them without the host)."""

    def __init__(self, B: int, t: torch.Tensor, bound: float, energy0: torch.Tensor, t_end) -> None:
        self.bound, self.energy0, self.t_end = bound, energy0, t_end
        self.diverged = torch.zeros(B, dtype=torch.bool, device=t.device)
        self.stalled = torch.zeros_like(self.diverged)
        self.stopped = torch.zeros_like(self.diverged)
        self.any_stopped = False
        self.error_max = torch.zeros_like(t)
        self.t_checked = t.clone()

    def refresh(self, t: torch.Tensor, h, deviation_max: torch.Tensor) -> torch.Tensor:
        """Refresh the flags on the device; returns a bool tensor [2]: any system stopped, any
        system still moving."""
        torch.nan_to_num(deviation_max / self.energy0.abs(), nan=math.inf, out=self.error_max)
        self.diverged |= self.error_max > self.bound
        unfinished = ~self.stopped if self.t_end is None else ~self.stopped & (t < self.t_end)
        frozen = t == self.t_checked
        if h is not None:
            frozen |= ~(h > 0)
        self.stalled |= unfinished & ~self.diverged & frozen
        torch.bitwise_or(self.diverged, self.stalled, out=self.stopped)
        self.t_checked.copy_(t)
        moving = ~self.stopped if self.t_end is None else ~self.stopped & (t < self.t_end)
        return torch.stack([self.stopped.any(), moving.any()])

    def update(self, t: torch.Tensor, h, deviation_max: torch.Tensor) -> bool:
        """Refresh the flags; False once no system is still moving (one host sync)."""
        self.any_stopped, still_moving = self.refresh(t, h, deviation_max).tolist()
        return still_moving


class _DtStats:
    """Steps taken and sum, min and max of dt per system, kept on the device: each step's dt is
    written into a preallocated [chunk, B] log, reduced once per chunk (no per-step syncs). The
    minimum leaves out steps cut short by the end time (they say nothing about the policy)."""

    def __init__(self, B: int, dtype, device, chunk: int = CHUNK) -> None:
        self.total = torch.zeros(B, dtype=dtype, device=device)
        self.low = torch.full((B,), math.inf, dtype=dtype, device=device)
        self.low_any = torch.full((B,), math.inf, dtype=dtype, device=device)
        self.high = torch.zeros(B, dtype=dtype, device=device)
        self.steps = torch.zeros(B, dtype=torch.long, device=device)
        self._log = torch.empty(chunk, B, dtype=dtype, device=device)  # rows are read only once written
        self._shortened = torch.empty(chunk, B, dtype=torch.bool, device=device)
        self._used = 0

    @property
    def pending(self) -> int:
        """Rows logged since the last flush."""
        return self._used

    def log(self, dt: torch.Tensor, shortened: Optional[torch.Tensor]) -> torch.Tensor:
        """Log one step's dt [B] with non-finite values set to 0 and return it (the logged row
        itself, one call: valid until `chunk` more steps are logged). `shortened` marks the steps
        cut at the end time (None: none were)."""
        row = torch.nan_to_num(dt, nan=0.0, posinf=0.0, neginf=0.0, out=self._log[self._used])
        if shortened is None:
            self._shortened[self._used] = False
        else:
            self._shortened[self._used] = shortened
        self._used += 1
        if self._used == self._log.shape[0]:
            self.flush()
        return row

    def flush(self) -> None:
        if not self._used:
            return
        block = self._log[: self._used]
        moving = block > 0
        self.total += block.sum(0)
        self.steps += moving.sum(0)
        torch.minimum(self.low_any, torch.where(moving, block, math.inf).amin(0), out=self.low_any)
        full = moving & ~self._shortened[: self._used]
        torch.minimum(self.low, torch.where(full, block, math.inf).amin(0), out=self.low)
        torch.maximum(self.high, block.amax(0), out=self.high)
        self._used = 0

    def finish(self) -> dict[str, torch.Tensor]:
        self.flush()
        mean = self.total / self.steps.clamp_min(1)
        nothing = self.steps == 0
        nan = torch.full_like(mean, math.nan)
        low = torch.where(torch.isinf(self.low), self.low_any, self.low)  # only shortened steps: keep them
        return {"dt_mean": torch.where(nothing, nan, mean), "dt_min": torch.where(nothing, nan, low),
                "dt_max": torch.where(nothing, nan, self.high)}


# ----------------------------------------------------------------------------------------------


def simulation_config(cfg: Config, checkpoint: Optional[dict[str, Any]]) -> Config:
    """cfg with the checkpoint's system settings where the user did not set them explicitly."""
    if checkpoint is None:
        return cfg
    saved = checkpoint["config"]
    values = cfg.to_dict()
    for key in INHERITED_FROM_CHECKPOINT:
        if key not in cfg.explicit:
            values[key] = saved[key]
    if "dtype" not in cfg.explicit:
        values["dtype"] = checkpoint["dtype"]
    return config_from_dict(values, explicit=cfg.explicit)


def _strict(value: Any) -> Any:
    """Python values for JSON: tensors to lists/floats, non-finite floats to None."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


def _finite(value: Any) -> bool:
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def results_json(cfg: Config, systems: Systems, out: dict[str, Any], first: int = 0) -> list[dict[str, Any]]:
    """One record per system (the fields the README lists); non-finite values become null.
    `first` is the index of systems[0] among all the run's systems."""
    physics = cfg.physics_kwargs()
    with ops.unchecked():  # a diverged final state is reported, not rejected
        E0 = ops.total_energy(systems.pos, systems.vel, systems.mass, **physics)
        E1 = ops.total_energy(out["pos"], out["vel"], systems.mass, **physics)
        P0, P1 = ops.linear_momentum(systems.vel, systems.mass), ops.linear_momentum(out["vel"], systems.mass)
        L0 = ops.angular_momentum(systems.pos, systems.vel, systems.mass)
        L1 = ops.angular_momentum(out["pos"], out["vel"], systems.mass)
    speed = systems.vel.norm(dim=-1)
    momentum_scale = (systems.mass * speed).sum(-1)
    angular_scale = (systems.mass * systems.pos.norm(dim=-1) * speed).sum(-1)
    momentum_residual = (P1 - P0).norm(dim=-1) / momentum_scale
    angular_residual = _norm_of(L1 - L0) / angular_scale
    finite_state = torch.isfinite(out["pos"]).flatten(1).all(-1) & torch.isfinite(out["vel"]).flatten(1).all(-1)
    # Every column to Python values in one transfer each (per-value .item() calls on a GPU would
    # be a host sync each: millions for a large ensemble).
    tensors = {"steps": out["steps"], "t_final": out["t"], "energy_initial": E0, "energy_final": E1,
               "energy_residual": (E1 - E0) / E0, "momentum_initial": P0, "momentum_final": P1,
               "momentum_residual": momentum_residual, "angular_momentum_initial": L0,
               "angular_momentum_final": L1, "angular_momentum_residual": angular_residual,
               "dt_mean": out["dt"]["dt_mean"], "dt_min": out["dt"]["dt_min"], "dt_max": out["dt"]["dt_max"],
               "energy_error_max": out["energy_error_max"], "force_evaluations": out["evaluations"],
               "stalled": out["stalled"], "diverged": out["diverged"], "finite_state": finite_state}
    columns = {key: value.tolist() for key, value in tensors.items()}
    records = []
    for b in range(systems.pos.shape[0]):
        record = {"system": first + b, "mode": cfg.integrator_mode, "integrator": cfg.integrator}
        for key in ("steps", "t_final", "energy_initial", "energy_final", "energy_residual", "momentum_initial",
                    "momentum_final", "momentum_residual", "angular_momentum_initial", "angular_momentum_final",
                    "angular_momentum_residual", "dt_mean", "dt_min", "dt_max", "energy_error_max",
                    "force_evaluations"):
            record[key] = columns[key][b]
        record["steps"], record["force_evaluations"] = int(record["steps"]), int(record["force_evaluations"])
        record.update({"wall_time_s": out["wall_time_s"], "step_cap_reached": out["step_cap_reached"],
                       "stalled": bool(columns["stalled"][b])})
        diverged = bool(columns["diverged"][b]) or not columns["finite_state"][b] or not all(
            _finite(record[key]) for key in ("energy_final", "energy_residual", "momentum_final",
                                             "angular_momentum_final", "t_final"))
        record = {key: _strict(value) for key, value in record.items()}
        record["diverged"] = diverged
        records.append(record)
    return records


def _t_end(cfg: Config, systems: Systems) -> Optional[torch.Tensor]:
    if cfg.Nperiod is not None:
        t_end = cfg.Nperiod * kepler_period(systems, cfg.G).to(systems.pos)
        if not bool(torch.isfinite(t_end).all()):
            raise ConfigError("--Nperiod needs bound two-body systems; some system here is unbound")
        return t_end
    if cfg.duration is not None:
        return torch.full_like(systems.mass[:, 0], cfg.duration)
    return None


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write text through a temporary file renamed into place; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    try:
        temp.write_text(text)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def check_simulation(cfg: Config, trained: Config) -> None:
    """The checks run_simulation makes before it integrates, for a model that is still to be
    trained with the settings `trained`: the `both` command runs them before it trains."""
    check_outputs(cfg, "simulate")
    values = cfg.to_dict()
    for key in INHERITED_FROM_CHECKPOINT:
        if key not in cfg.explicit:
            values[key] = getattr(trained, key)
    cfg = config_from_dict(values, explicit=cfg.explicit)
    if "integrator_mode" in cfg.explicit and cfg.integrator_mode in ("ml", "history"):
        if (cfg.integrator_mode == "history") != (trained.history_len > 0):
            raise ConfigError(f"--integrator-mode {cfg.integrator_mode} does not fit a model trained with "
                              f"history_len {trained.history_len} (history needs >= 1, ml needs 0)")
    if cfg.movie or cfg.plot is not None:
        from .plotting import require_matplotlib

        require_matplotlib()
    systems = make_systems(cfg, torch.Generator().manual_seed(cfg.seed))
    if (systems.pos.shape[-2], systems.pos.shape[-1]) != (trained.num_particles, trained.dim):
        raise ConfigError(f"the simulated systems have N = {systems.pos.shape[-2]}, D = {systems.pos.shape[-1]} "
                          f"but training uses N = {trained.num_particles}, D = {trained.dim}")
    _t_end(cfg, systems)


def run_simulation(cfg: Config, *, stream: Optional[TextIO] | Literal["stdout"] = "stdout") -> list[dict[str, Any]]:
    """Simulate as configured; print one JSON line per system and write --output-json/--movie/--plot.

    Under torchrun each rank integrates its contiguous block of the systems; rank 0 gathers the
    records and alone prints and writes them, in system order, as one process would (the run's
    wall time is the slowest rank's; the step cap counts as reached if it was on any rank)."""
    if stream == "stdout":  # the stream of the moment (a default bound at import would go stale)
        stream = sys.stdout
    group = distributed.join(cfg.device, cfg.threads, cfg.collective_timeout)
    cfg = cfg.replace(device=group.device(cfg.device))
    check_outputs(cfg, "simulate")
    checkpoint = None
    if cfg.integrator_mode in ("ml", "history"):
        if not cfg.model_path:
            raise ConfigError(f"--integrator-mode {cfg.integrator_mode} needs --model-path CHECKPOINT")
        checkpoint = load_checkpoint(resolve_checkpoint(cfg.model_path), map_location=cfg.device)
        cfg = simulation_config(cfg, checkpoint)
        check_system(checkpoint, cfg.num_particles, cfg.dim, cfg.model_path)
    if cfg.movie or cfg.plot is not None:
        from .plotting import require_matplotlib

        require_matplotlib()
    simulator = Simulator(cfg, checkpoint)
    systems = make_systems(cfg, torch.Generator().manual_seed(cfg.seed))
    if checkpoint is not None:
        check_system(checkpoint, systems.pos.shape[-2], systems.pos.shape[-1], cfg.model_path)
    t_end = _t_end(cfg, systems)
    count = systems.pos.shape[0]
    if count < group.size:
        raise ConfigError(f"{count} system(s) cannot be shared among {group.size} ranks: simulate at least "
                          f"{group.size} (--num-orbits) or start fewer ranks")
    block = group.shard(count)
    systems = Systems(systems.pos[block], systems.vel[block], systems.mass[block],
                      None if systems.periods is None else systems.periods[block])
    t_end = t_end[block] if t_end is not None else None
    # The recorded system is system 0, which rank 0 integrates.
    recording = (Recording(cfg.movie_max_frames)
                 if (cfg.movie or cfg.plot is not None) and group.rank == 0 else None)
    if recording is not None:
        # No step leads into the first frame: its dt is NaN, which the plot leaves out (not a 0).
        simulator._record(recording, torch.zeros(1), systems.pos, systems.vel, systems.mass,
                          torch.full((1,), float("nan")))
    out = simulator.run(systems, t_end, recording)
    records = results_json(cfg, systems, out, first=block.start)
    if group.distributed:
        group.wait_for_all()  # without a time limit: shards may take very different times
        records = _merged(group.all_gather(records))
        if group.rank != 0:
            return records
    lines = "".join(json.dumps(record, allow_nan=False) + "\n" for record in records)
    if stream is not None:
        stream.write(lines)
        stream.flush()
    written = []
    if cfg.output_json:
        written.append(write_text_atomic(cfg.output_json, lines))
    if recording is not None:
        from .plotting import write_movie, write_plot

        title = f"{cfg.integrator_mode} mode, {simulator.step_rule} steps" + (
            f", model {cfg.model_path}" if checkpoint is not None else
            f", dt = {cfg.dt:g}" if cfg.integrator_mode == "analytic" else f", eta = {cfg.eta:g}")
        if cfg.plot is not None:
            written.append(write_plot(recording, cfg.plot or str(Path(cfg.movie_dir) / f"{cfg.save_name}.png"),
                                      cfg.movie_dpi, title))
        if cfg.movie:
            written.append(write_movie(recording, Path(cfg.movie_dir) / cfg.save_name, cfg.movie_fps, cfg.movie_dpi,
                                       title))
    report_written(written)
    return records


def _merged(shards: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The ranks' records as one run's: in system order, with the run-wide fields made whole."""
    records = [record for shard in shards for record in shard]
    wall = max(record["wall_time_s"] for record in records)
    cap_reached = any(record["step_cap_reached"] for record in records)
    for record in records:
        record["wall_time_s"], record["step_cap_reached"] = wall, cap_reached
    return records


def report_written(paths) -> None:
    """One line on stderr naming the files a command wrote (stdout stays JSON)."""
    if paths:
        print("wrote: " + ", ".join(str(p) for p in paths), file=sys.stderr)
