"""Features of an N-body state and of its recent history: the network's input.

Feature sets: `scaled` (the default: 13 dimensionless values in the state's own units, so the
scale-aware step is unit-aware; see Featurizer.scaled_block), `basic` (11) and `rich` (23)
(divided by the training set's normalization scales when --normalize-inputs is on), and
`delta_mag` (10 per transition between consecutive states of the history window).

One `Featurizer` serves training and simulation alike, so both build the same vector from the
same state. Everything is batched over systems ([B, N, D] in, [B, F] out) and vectorized over
bodies and pairs. The history lives in a preallocated `History` per batch whose slots start as
zeros: a padded slot contributes an all-zero block (and a transition touching it all zeros),
never NaN, and the blocks are read as views, oldest first.

Each state block has one formula in PyTorch (`Featurizer.state_block_reference` for basic and
rich, `Featurizer.scaled_block` for scaled; any device, with autograd). On CPU tensors that need
no gradient the same block comes from one compiled call (csrc/cpu/features.cpp; for scaled
together with the step time tau), and so does the scaled block on CUDA tensors of up to 32
bodies (csrc/cuda/loop.cu), each tested against that reference: the simulation computes it every
step, where the ~23 torch calls of a formula (~55 kernels on a GPU) cost more at batch 1 than
everything else but the network.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch

from .ops.backends import _core, call_cuda, cuda_kernels_usable
from .physics.timescale import dynamical_time, step_time
from .transfer import to_device
from .ops.custom import _is_plain_eager

STATE_FEATURES = {"scaled": 13, "basic": 11, "rich": 23}
TRANSITION_FEATURES = 10


@dataclass(frozen=True)
class Scales:
    """Length, velocity, acceleration and time units the features are divided by."""

    L0: float = 1.0
    V0: float = 1.0
    A0: float = 1.0
    T0: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def auto_scales(pos: torch.Tensor, vel: torch.Tensor, mass: torch.Tensor, acc: torch.Tensor) -> Scales:
    """From training ICs [B, N, D]: L0 = mean pair distance, V0 = rms speed about VCOM,
    A0 = rms |a|, each averaged over the batch; T0 = L0 / V0."""
    N = pos.shape[-2]
    iu = torch.triu_indices(N, N, offset=1, device=pos.device)
    pair = torch.cdist(pos, pos)[..., iu[0], iu[1]]
    vcom = (mass.unsqueeze(-1) * vel).sum(-2, keepdim=True) / mass.sum(-1)[..., None, None]
    L0 = pair.mean(-1).mean().item()
    V0 = (vel - vcom).square().sum(-1).mean(-1).sqrt().mean().item()
    A0 = acc.square().sum(-1).mean(-1).sqrt().mean().item()
    for name, value in (("L0", L0), ("V0", V0), ("A0", A0)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"automatic normalization found {name} = {value}; use --norm-mode manual")
    return Scales(L0, V0, A0, L0 / V0)


def scales_from_config(cfg, pos, vel, mass, acc) -> Scales:
    """The scales a training run uses: all 1 without --normalize-inputs."""
    if not cfg.normalize_inputs:
        return Scales()
    if cfg.norm_mode == "auto":
        return auto_scales(pos, vel, mass, acc)
    L0, V0 = cfg.norm_L0, cfg.norm_V0
    return Scales(L0, V0, cfg.norm_A0 or V0 * V0 / L0, cfg.norm_T0 or L0 / V0)


class History:
    """The K most recent accepted states of each of B systems, oldest first, zero-padded.

    blocks [B, K, F]: each state's feature block (basic/rich); states [B, K, 3, N, D]: its
    position, velocity and acceleration, dts [B, K]: the dt that led into it, and valid [B, K]
    (1 for a real state) for delta_mag. current_dt [B] is the dt that led into the current
    state. The count of states each system has pushed (its warmup is over at K) is kept as a
    shared count plus per-row extras, so a whole-batch push costs O(1) on the host.
    """

    def __init__(self, K: int, B: int, N: int, D: int, F: int, keep_states: bool, dtype, device) -> None:
        self.K = K
        zeros = lambda *shape: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        self.blocks = zeros(B, K, F) if not keep_states else None
        self.states = zeros(B, K, 3, N, D) if keep_states else None
        self.dts = zeros(B, K) if keep_states else None
        self.valid = zeros(B, K) if keep_states else None
        self.current_dt = zeros(B)
        self._pushed_by_all = 0
        self._pushed_by_row = [0] * B

    @property
    def filled(self) -> list[int]:
        return [self._pushed_by_all + extra for extra in self._pushed_by_row]

    def warm(self, b: int) -> bool:
        """True once system b's window holds no padding (its steps may be kept for Part 2)."""
        return self._pushed_by_all + self._pushed_by_row[b] >= self.K

    def push(self, rows: Optional[Sequence[int]], block, pos, vel, acc, dt) -> None:
        """After an accepted step from the current state: push it (with its incoming dt) and
        remember `dt` [B] as the new current state's incoming dt. `rows` None means every system;
        block/pos/vel/acc/dt are given for all B rows."""
        index = slice(None) if rows is None else to_device(list(rows), self.current_dt.device)
        if self.K:
            if self.blocks is not None:
                _shift_in(self.blocks, index, block[index])
            else:
                _shift_in(self.states, index, torch.stack([pos, vel, acc], 1)[index])
                _shift_in(self.dts, index, self.current_dt[index])
                _shift_in(self.valid, index, torch.ones_like(self.current_dt[index]))
        self.current_dt[index] = dt[index].detach()
        if rows is None:
            self._pushed_by_all += 1
        else:
            for b in rows:
                self._pushed_by_row[b] += 1

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in ("blocks", "states", "dts", "valid", "current_dt", "filled")}

    def load_state_dict(self, data: dict) -> None:
        for key, value in data.items():
            if key == "filled":
                self._pushed_by_all, self._pushed_by_row = 0, list(value)
            else:
                setattr(self, key, value)


def _shift_in(buffer: torch.Tensor, index, new: torch.Tensor) -> None:
    """Drop the oldest slot of the selected rows and append `new` as the most recent."""
    if isinstance(index, slice):
        buffer[:, :-1] = buffer[:, 1:].clone()
        buffer[:, -1] = new
    else:
        rows = buffer[index]
        buffer[index] = torch.cat([rows[:, 1:], new.unsqueeze(1)], 1)


_HAS_COMPILED_FEATURES = _core is not None and hasattr(_core, "cpu_state_features")
_HAS_COMPILED_SCALED = _core is not None and hasattr(_core, "cpu_scaled_features")
_HAS_CUDA_SCALED = _core is not None and hasattr(_core, "cuda_scaled_features")


def compiled_scaled_applies(pos, vel, mass, acc) -> bool:
    """True when a compiled kernel computes the scaled block and tau of these tensors: on the
    CPU csrc/cpu/features.cpp, on CUDA csrc/cuda/loop.cu for up to CUDA_SCALED_FEATURES_MAX_N
    bodies (one thread per system: larger systems take the PyTorch formula on the device)."""
    if pos.is_cuda:
        return _HAS_CUDA_SCALED and _compiled_applies(pos, vel, mass, acc, device=pos.device) \
            and pos.shape[1] <= _core.CUDA_SCALED_FEATURES_MAX_N and cuda_kernels_usable()
    return _HAS_COMPILED_SCALED and _compiled_applies(pos, vel, mass, acc)


def _compiled_applies(pos, vel, mass, acc, device: Optional[torch.device] = None) -> bool:
    """True when csrc/cpu/features.cpp can compute the state block of these tensors: CPU (or,
    with `device`, all four on that device), float32/64, one dtype, [B, N, D] (mass [B, N]) with
    N >= 2, no gradient wanted, plain eager. Written for speed (it runs every simulated step):
    dtypes are singletons, `is_cpu` is cheap."""
    dtype = pos.dtype
    if not (_HAS_COMPILED_FEATURES and (dtype is torch.float64 or dtype is torch.float32)):
        return False
    if not (vel.dtype is dtype and mass.dtype is dtype and acc.dtype is dtype):
        return False
    if device is None:
        if not (pos.is_cpu and vel.is_cpu and mass.is_cpu and acc.is_cpu):
            return False
    elif not (pos.device == device and vel.device == device and mass.device == device and acc.device == device):
        return False
    shape = pos.shape
    if len(shape) != 3 or shape[1] < 2 or vel.shape != shape or acc.shape != shape or mass.shape != shape[:2]:
        return False
    if torch.is_grad_enabled() and (pos.requires_grad or vel.requires_grad or mass.requires_grad or acc.requires_grad):
        return False  # the reference carries the gradient
    return _is_plain_eager([pos, vel, mass, acc])


def scaled_kernel(pos: torch.Tensor, arguments: tuple) -> None:
    """Run the compiled scaled-features kernel of pos's device (see compiled_scaled_applies) on
    `arguments`, cpu_scaled_features's (on CUDA on the current stream)."""
    if pos.is_cuda:
        call_cuda(_core.cuda_scaled_features, pos.device, *arguments)
    else:
        _core.cpu_scaled_features(*arguments)


class Featurizer:
    """Builds the network input from the current state and a History (training == simulation)."""

    def __init__(self, feature_type: str, history_len: int, scales: Scales, softening: float = 0.0,
                 G: float = 1.0) -> None:
        if feature_type == "delta_mag" and history_len == 0:
            warnings.warn("feature_type 'delta_mag' needs history_len >= 1; using 'basic' features", stacklevel=2)
            feature_type = "basic"
        if feature_type not in ("scaled", "basic", "rich", "delta_mag"):
            raise ValueError(f"unknown feature_type {feature_type!r}")
        self.feature_type = feature_type
        self.K = history_len
        self.scales = scales
        self.softening = softening
        self.G = G
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}

    @property
    def block_dim(self) -> int:
        return STATE_FEATURES.get(self.feature_type, STATE_FEATURES["basic"])

    @property
    def input_dim(self) -> int:
        if self.feature_type == "delta_mag":
            return TRANSITION_FEATURES * self.K
        return (self.K + 1) * self.block_dim

    def new_history(self, B: int, N: int, D: int, dtype, device) -> History:
        return History(self.K, B, N, D, self.block_dim, self.feature_type == "delta_mag", dtype, device)

    def _constants(self, like: torch.Tensor, N: int, D: int) -> dict[str, torch.Tensor]:
        """Per dtype/device/N/D, built once: the constant head, the averaging vectors, the pair
        indices i < j and the divisor of each output column (its scale, or 1)."""
        key = (like.dtype, like.device, N, D)
        if key not in self._cache:
            s = self.scales
            pairs = N * (N - 1) // 2
            first, second = torch.triu_indices(N, N, offset=1, device=like.device)
            as_tensor = lambda values: torch.tensor(values, dtype=like.dtype, device=like.device)  # noqa: E731
            if self.feature_type == "rich":  # head 3, then mean/min/max/rms of mass, r, s, alpha, then d min/mean/max
                per_column = [1.0] * 3 + [1.0] * 4 + [s.L0] * 4 + [s.V0] * 4 + [s.A0] * 4 + [s.L0] * 3
            else:  # head 3, then mean/max of r, s, alpha, then d min/mean
                per_column = [1.0] * 3 + [s.L0] * 2 + [s.V0] * 2 + [s.A0] * 2 + [s.L0] * 2
            self._cache[key] = {
                "head": as_tensor([float(N), float(D)]),
                "ones": as_tensor([[1.0]] * N),  # [N, 1]: mass [B, N] @ ones = total [B, 1]
                "mean_bodies": as_tensor([1.0 / N] * N),  # [N]
                "mean_pairs": as_tensor([[1.0 / pairs]] * pairs),  # [P, 1]
                "first": first, "second": second,
                "inverse_scales": as_tensor([1.0 / value for value in per_column]),
            }
        return self._cache[key]

    def state_block(self, pos: torch.Tensor, vel: torch.Tensor, mass: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """Features of each state alone: [B, N, D] (mass [B, N]) -> [B, 13] scaled, [B, 11] basic
        or [B, 23] rich.

        The compiled kernel where it applies (CPU, float32/64, no gradient wanted, plain eager
        tensors of these shapes), else state_block_reference."""
        if self.feature_type == "scaled":
            if compiled_scaled_applies(pos, vel, mass, acc):
                return _BoundScaled(self, *(t.contiguous() for t in (pos, vel, mass, acc))).block()
            return self.scaled_block(pos, vel, mass, acc)
        if _compiled_applies(pos, vel, mass, acc):
            return self._state_block_compiled(pos, vel, mass, acc)
        return self.state_block_reference(pos, vel, mass, acc)

    def _state_block_compiled(self, pos, vel, mass, acc) -> torch.Tensor:
        return _BoundStateBlock(self, pos.contiguous(), vel.contiguous(), mass.contiguous(), acc.contiguous()).block()

    # Written for few torch calls, each fast at any batch size (it runs per step on GPU tensors).
    # Averages over bodies or pairs are matrix products with a constant vector over the innermost
    # dimension (torch's sum/mean over a tiny dimension is many times slower at large batch;
    # amax/amin are fast); the feature scales divide the finished row once (mean, min and max
    # commute with a positive scale).

    def state_block_reference(self, pos: torch.Tensor, vel: torch.Tensor, mass: torch.Tensor,
                              acc: torch.Tensor) -> torch.Tensor:
        """The state block in PyTorch: the formula itself (and the compiled kernel's reference)."""
        B, N, D = pos.shape
        c = self._constants(pos, N, D)
        total = torch.mm(mass, c["ones"])  # [B, 1]
        both = torch.cat([pos, vel], -1)  # [B, N, 2D]
        centred = both - torch.bmm((mass / total).unsqueeze(1), both)  # about the COM and the VCOM
        q = torch.linalg.vector_norm(torch.stack([centred[..., :D], centred[..., D:], acc], 1), dim=-1)  # [B, 3, N]
        d = torch.linalg.vector_norm(pos.index_select(1, c["first"]) - pos.index_select(1, c["second"]), dim=-1)
        head = c["head"].expand(B, 2)
        if self.feature_type == "rich":
            q = torch.cat([mass.unsqueeze(1), q], 1)  # [B, 4, N]: mass, r, s, alpha
            # amin and amax, not aminmax: on tiny inputs torch's aminmax enters an OpenMP parallel
            # region, which on a loaded 2-core machine waits milliseconds for the second thread.
            stats = torch.stack([q @ c["mean_bodies"], q.amin(-1), q.amax(-1), ((q * q) @ c["mean_bodies"]).sqrt()], -1)
            row = torch.cat([head, total, stats.flatten(1), d.amin(-1, keepdim=True), torch.mm(d, c["mean_pairs"]),
                             d.amax(-1, keepdim=True)], -1)
            return torch.cat([row * c["inverse_scales"], torch.full_like(total, self.softening / self.scales.L0)], -1)
        stats = torch.stack([q @ c["mean_bodies"], q.amax(-1)], -1)  # [B, 3, 2]: mean, max
        row = torch.cat([head, total, stats.flatten(1), d.amin(-1, keepdim=True), torch.mm(d, c["mean_pairs"])], -1)
        return row * c["inverse_scales"]

    def scaled_block(self, pos: torch.Tensor, vel: torch.Tensor, mass: torch.Tensor, acc: torch.Tensor,
                     tau: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`scaled`: 13 dimensionless features in the state's own units, so that rescaling lengths,
        masses and G leaves them unchanged (and a step dt = tau * g(features) scales as the physics
        does). Units: M the total mass, l the mean pair distance, T = sqrt(l^3 / (G M)), V = l / T,
        A = l / T^2. Columns: min and max m_i / M; min and max d_ij / l; mean and max r_i / l;
        mean and max s_i / V; mean and max alpha_i / A; tau / T (physics.timescale); the virial
        ratio K / |U| (U softened, without the external field; on a Kepler orbit it is
        1 - d / 2a, the orbit's phase); softening / l. `tau` [B]: dynamical_time(pos, acc) when the
        caller has it already."""
        B, N, D = pos.shape
        c = self._constants(pos, N, D)
        total = torch.mm(mass, c["ones"])  # [B, 1]
        both = torch.cat([pos, vel], -1)
        centred = both - torch.bmm((mass / total).unsqueeze(1), both)
        speed2 = centred[..., D:].square().sum(-1)  # [B, N]
        q = torch.linalg.vector_norm(torch.stack([centred[..., :D], centred[..., D:], acc], 1), dim=-1)  # [B, 3, N]
        d = torch.linalg.vector_norm(pos.index_select(1, c["first"]) - pos.index_select(1, c["second"]), dim=-1)
        length = torch.mm(d, c["mean_pairs"])  # [B, 1]
        GM = self.G * total
        velocity = torch.sqrt(GM / length)
        time = length / velocity
        units = torch.cat([length, velocity, GM / length.square()], -1).unsqueeze(-1)  # [B, 3, 1]
        q = q / units
        fraction = mass / total
        kinetic = 0.5 * (mass * speed2).sum(-1, keepdim=True)
        pair_mass = mass.index_select(1, c["first"]) * mass.index_select(1, c["second"])
        potential = self.G * (pair_mass / torch.sqrt(d.square() + self.softening ** 2)).sum(-1, keepdim=True)
        return torch.cat([
            fraction.amin(-1, keepdim=True), fraction.amax(-1, keepdim=True),
            d.amin(-1, keepdim=True) / length, d.amax(-1, keepdim=True) / length,
            torch.stack([q @ c["mean_bodies"], q.amax(-1)], -1).flatten(1),
            (dynamical_time(pos, acc) if tau is None else tau).unsqueeze(-1) / time,
            kinetic / potential,
            self.softening / length,
        ], -1)

    def _transition_scales(self, like: torch.Tensor) -> torch.Tensor:
        """[3, 1]: 1/L0, 1/V0, 1/A0 for the |dx|, |dv|, |da| rows of a transition."""
        key = ("transition", like.dtype, like.device)
        if key not in self._cache:
            s = self.scales
            self._cache[key] = torch.tensor([[1 / s.L0], [1 / s.V0], [1 / s.A0]], dtype=like.dtype, device=like.device)
        return self._cache[key]

    def _transitions(self, history: History, pos, vel, acc) -> torch.Tensor:
        """delta_mag: 10 values per consecutive pair of [history..., current], [B, 10 K]."""
        B, N, D = pos.shape
        c = self._constants(pos, N, D)
        current = torch.stack([pos, vel, acc], 1).unsqueeze(1)  # [B, 1, 3, N, D]
        states = torch.cat([history.states, current], 1)  # [B, K+1, 3, N, D]
        delta = torch.linalg.vector_norm(states[:, 1:] - states[:, :-1], dim=-1) * self._transition_scales(pos)
        mean_bodies = c["mean_bodies"].unsqueeze(-1)  # [N, 1]: delta [B, K, 3, N] @ it = mean [B, K, 3, 1]
        stats = torch.cat([delta @ mean_bodies, delta.amax(-1, keepdim=True), (delta * delta @ mean_bodies).sqrt()], -1)
        # dt of the later state of each transition: the history's dts after the oldest, then the current one.
        later_dt = torch.cat([history.dts[:, 1:], history.current_dt.unsqueeze(1)], 1) / self.scales.T0
        block = torch.cat([stats.flatten(2), later_dt.unsqueeze(-1)], -1)  # [B, K, 10]
        # A transition touching a padded slot is all zeros: both of its states must be real.
        later_valid = torch.cat([history.valid[:, 1:], torch.ones_like(history.valid[:, :1])], 1)
        return (block * (history.valid * later_valid).unsqueeze(-1)).flatten(1)

    def inputs(self, history: History, pos, vel, mass, acc) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The network input [B, input_dim] and the current state's block (to push on accept)."""
        if self.feature_type == "delta_mag":
            return self._transitions(history, pos, vel, acc), None
        return self._with_history(history, self.state_block(pos, vel, mass, acc))

    def _with_history(self, history: History, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.K == 0:
            return block, block
        return torch.cat([history.blocks.flatten(1), block], -1), block

    def bind(self, pos: torch.Tensor, vel: torch.Tensor, mass: torch.Tensor, acc: torch.Tensor,
             timescale: str = "acceleration"):
        """`inputs(history)` of state buffers that the caller advances in place (the simulation
        loop): the same values as `self.inputs(history, pos, vel, mass, acc)`, with the compiled
        kernel's applicability checked once, here, instead of at every call. After each call,
        the function's `tau` holds the state's step time [B] in `timescale`
        (physics/timescale.py step_time)."""
        contiguous = all(t.is_contiguous() for t in (pos, vel, mass, acc))
        if self.feature_type == "scaled" and contiguous and compiled_scaled_applies(pos, vel, mass, acc):
            return _BoundScaled(self, pos, vel, mass, acc, timescale)
        if self.feature_type in ("delta_mag", "scaled") or not _compiled_applies(pos, vel, mass, acc) \
                or not contiguous:
            return _BoundReference(self, pos, vel, mass, acc, timescale)
        return _BoundStateBlock(self, pos, vel, mass, acc, timescale)


class _BoundReference:
    """Featurizer.bind's function where no compiled kernel applies: the PyTorch formulas."""

    def __init__(self, featurizer: Featurizer, pos, vel, mass, acc, timescale: str = "acceleration") -> None:
        self.featurizer = featurizer
        self.buffers = (pos, vel, mass, acc)
        self.timescale = timescale
        self.tau: Optional[torch.Tensor] = None

    def __call__(self, history: Optional[History]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        pos, vel, mass, acc = self.buffers
        tau = dynamical_time(pos, acc)
        self.tau = step_time(pos, vel, acc, self.timescale, tau)
        if self.featurizer.feature_type == "scaled":  # the block reuses tau (GPU tensors take this path)
            return self.featurizer._with_history(history, self.featurizer.scaled_block(pos, vel, mass, acc, tau))
        return self.featurizer.inputs(history, pos, vel, mass, acc)


class _BoundScaled:
    """Featurizer.bind's function for the scaled block: block and tau from one compiled call (on
    the CPU or on CUDA)."""

    def __init__(self, featurizer: Featurizer, pos, vel, mass, acc, timescale: str = "acceleration") -> None:
        B, N, D = pos.shape
        self.featurizer = featurizer
        self.buffers = (pos, vel, mass, acc)
        self.shape = (B, STATE_FEATURES["scaled"])
        self.tau = pos.new_empty(B)
        self.args = (pos.data_ptr(), vel.data_ptr(), mass.data_ptr(), acc.data_ptr())
        self.sizes = (B, N, D, featurizer.G, featurizer.softening, pos.dtype == torch.float64,
                      timescale == "encounter")

    def block(self) -> torch.Tensor:
        out = self.buffers[0].new_empty(self.shape)
        scaled_kernel(self.buffers[0], (*self.args, out.data_ptr(), self.tau.data_ptr(), *self.sizes))
        return out

    def __call__(self, history: Optional[History]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.featurizer._with_history(history, self.block())


class _BoundStateBlock:
    """Featurizer.bind's function for the compiled basic/rich kernel: it holds the buffers it reads
    through (tau comes from the PyTorch formula)."""

    def __init__(self, featurizer: Featurizer, pos, vel, mass, acc, timescale: str = "acceleration") -> None:
        B, N, D = pos.shape
        rich = featurizer.feature_type == "rich"
        self.timescale = timescale
        scale = featurizer._constants(pos, N, D)["inverse_scales"]
        self.featurizer = featurizer
        self.buffers = (pos, vel, mass, acc, scale)
        self.pointers = tuple(t.data_ptr() for t in self.buffers)
        self.sizes = (B, N, D, rich, featurizer.softening / featurizer.scales.L0 if rich else 0.0,
                      pos.dtype == torch.float64)
        self.shape = (B, featurizer.block_dim)

    def block(self) -> torch.Tensor:
        out = self.buffers[0].new_empty(self.shape)
        _core.cpu_state_features(*self.pointers, out.data_ptr(), *self.sizes)
        return out

    def __call__(self, history: Optional[History]) -> tuple[torch.Tensor, torch.Tensor]:
        pos, vel, _, acc, _ = self.buffers
        self.tau = step_time(pos, vel, acc, self.timescale)
        return self.featurizer._with_history(history, self.block())
