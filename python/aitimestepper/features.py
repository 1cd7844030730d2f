"""Features of an N-body state and of its recent history: the network's input (SPEC.md section 4).

One `Featurizer` serves training and simulation alike, so both build the same vector from the
same state. Everything is batched over systems ([B, N, D] in, [B, F] out) and vectorized over
bodies and pairs. The history lives in a preallocated `History` per batch whose slots start as
zeros: a padded slot contributes an all-zero block (and a transition touching it all zeros),
never NaN, and the blocks are read as views, oldest first.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch

STATE_FEATURES = {"basic": 11, "rich": 23}
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
        index = slice(None) if rows is None else torch.as_tensor(rows, device=self.current_dt.device)
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


class Featurizer:
    """Builds the network input from the current state and a History (training == simulation)."""

    def __init__(self, feature_type: str, history_len: int, scales: Scales, softening: float = 0.0) -> None:
        if feature_type == "delta_mag" and history_len == 0:
            warnings.warn("feature_type 'delta_mag' needs history_len >= 1; using 'basic' features", stacklevel=2)
            feature_type = "basic"
        if feature_type not in ("basic", "rich", "delta_mag"):
            raise ValueError(f"unknown feature_type {feature_type!r}")
        self.feature_type = feature_type
        self.K = history_len
        self.scales = scales
        self.softening = softening
        self._iu: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._divisors: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

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

    def _pairs(self, N: int, device) -> torch.Tensor:
        key = (N, device)
        if key not in self._iu:
            self._iu[key] = torch.triu_indices(N, N, offset=1, device=device)
        return self._iu[key]

    def _constants(self, like: torch.Tensor, N: int, D: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached per dtype/device: [1, L0, V0, A0] as a [4, 1] column (mass, positions,
        velocities, accelerations) and the constant head [N, D]."""
        key = (like.dtype, like.device, N, D)
        if key not in self._divisors:
            s = self.scales
            divisor = torch.tensor([[1.0], [s.L0], [s.V0], [s.A0]], dtype=like.dtype, device=like.device)
            self._divisors[key] = (1 / divisor, torch.tensor([float(N), float(D)], dtype=like.dtype, device=like.device))
        return self._divisors[key]

    def state_block(self, pos: torch.Tensor, vel: torch.Tensor, mass: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """Features of each state alone: [B, N, D] (mass [B, N]) -> [B, 11] basic or [B, 23] rich.

        Written for few torch calls (it runs once per simulated step): the COM position and
        velocity come from one batched matmul, all magnitudes from one norm.
        """
        B, N, D = pos.shape
        inverse_scales, head = self._constants(pos, N, D)
        total = mass.sum(-1, keepdim=True)  # [B, 1]
        weights = (mass / total)[:, None, None, :]  # [B, 1, 1, N]
        stacked = torch.stack([pos, vel, acc], 1)  # [B, 3, N, D]
        centre = torch.matmul(weights, stacked[:, :2])  # [B, 2, 1, D]: COM and VCOM
        magnitudes = torch.linalg.vector_norm(torch.cat([stacked[:, :2] - centre, stacked[:, 2:]], 1), dim=-1)
        q = torch.cat([mass.unsqueeze(1), magnitudes], 1) * inverse_scales  # [B, 4, N]: mass, r/L0, s/V0, a/A0
        iu = self._pairs(N, pos.device)
        d = torch.cdist(pos, pos)[:, iu[0], iu[1]] * inverse_scales[1]  # [B, pairs] / L0
        head = torch.cat([head.expand(B, 2), total], -1)
        if self.feature_type == "rich":
            low, high = torch.aminmax(q, dim=-1)
            stats = torch.stack([q.mean(-1), low, high, q.square().mean(-1).sqrt()], -1)
            low_d, high_d = torch.aminmax(d, dim=-1)
            pair = torch.stack([low_d, d.mean(-1), high_d, torch.full_like(low_d, self.softening / self.scales.L0)], -1)
            return torch.cat([head, stats.flatten(1), pair], -1)
        stats = torch.stack([q[:, 1:].mean(-1), q[:, 1:].amax(-1)], -1)  # [B, 3, 2]: mean, max
        pair = torch.stack([d.amin(-1), d.mean(-1)], -1)
        return torch.cat([head, stats.flatten(1), pair], -1)

    def _transitions(self, history: History, pos, vel, acc) -> torch.Tensor:
        """delta_mag: 10 values per consecutive pair of [history..., current], [B, 10 K]."""
        current = torch.stack([pos, vel, acc], 1).unsqueeze(1)  # [B, 1, 3, N, D]
        states = torch.cat([history.states, current], 1)  # [B, K+1, 3, N, D]
        ones = torch.ones_like(history.current_dt).unsqueeze(1)
        valid = torch.cat([history.valid, ones], 1)
        dts = torch.cat([history.dts, history.current_dt.unsqueeze(1)], 1)
        inverse_scales = self._constants(pos, *pos.shape[1:])[0]
        delta = (states[:, 1:] - states[:, :-1]).norm(dim=-1) * inverse_scales[1:]  # [B, K, 3, N]
        stats = torch.stack([delta.mean(-1), delta.amax(-1), delta.square().mean(-1).sqrt()], -1)
        block = torch.cat([stats.flatten(2), (dts[:, 1:] / self.scales.T0).unsqueeze(-1)], -1)  # [B, K, 10]
        return (block * (valid[:, 1:] * valid[:, :-1]).unsqueeze(-1)).flatten(1)

    def inputs(self, history: History, pos, vel, mass, acc) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The network input [B, input_dim] and the current state's block (to push on accept)."""
        if self.feature_type == "delta_mag":
            return self._transitions(history, pos, vel, acc), None
        block = self.state_block(pos, vel, mass, acc)
        if self.K == 0:
            return block, block
        return torch.cat([history.blocks.flatten(1), block], -1), block
