"""The network that maps a feature vector to a time step.

`FullyConnectedNN`: optional frozen Gaussian Fourier embedding, then Linear -> activation ->
Dropout per hidden width, then Linear -> 2 outputs -> Softplus. Output 0 becomes the step in one
of two ways (`dt_param`):
- `scale-aware` (the default): dt = tau * eta_init * softplus(o0) / ln 2, tau the state's local
  dynamical time (physics/timescale.py). Output 0's row of the last layer starts at zero, so a
  fresh network predicts the classical step eta_init * tau for every state, and what it learns is
  a dimensionless correction to it: the system's own time scale never has to be learned.
  `timescale` names tau: the dynamical time (`acceleration`) or the encounter time
  (`encounter`, physics/timescale.py); the model carries it so that every loop feeding it
  measures tau the same way.
  With `dt_factor_range` R the correction is bounded (`bounded_ratio`): the factor stays within
  [eta_init / R, eta_init * R], so the network can only reshape the classical criterion within
  a range chosen in advance, never replace it by the noise of its training signal.
- `absolute` (the earlier project's): dt = softplus(o0) + dt_min, in the system's time units.
Either way dt is capped at dt_max when set. Output 1 is an auxiliary head. The architecture is
plain data (`architecture()`), saved in checkpoints and rebuilt from them.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from .ops.backends import _core
from .config import TIMESCALES

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "silu": nn.SiLU}
DT_PARAMS = ("scale-aware", "absolute")
# The compiled forward is for small networks on a few rows; beyond that torch's matrix products
# win (one row: 14.7 against 16.1 us for [64, 64], 48 against 18 us for [256, 256]).
COMPILED_MAX_ROWS = 16
COMPILED_MAX_MACS = 8192  # multiply-adds per row
_ACTIVATION_CODES = {"tanh": 1, "relu": 2, "sigmoid": 3, "silu": 4, "softplus": 5}  # aits::cpu::Activation
_ELEMENTWISE = {nn.Tanh: torch.tanh, nn.Softplus: torch.nn.functional.softplus, nn.ReLU: torch.relu,
                nn.Sigmoid: torch.sigmoid, nn.SiLU: torch.nn.functional.silu}


def bounded_ratio(ratio: torch.Tensor, log_range: float) -> torch.Tensor:
    """The learned factor's ratio to eta_init, q = softplus(o0) / ln 2 in (0, inf), mapped
    smoothly into (1/R, R), R = exp(log_range): exp(log_range * tanh(ln q / log_range)). Near
    q = 1 it is q itself (slope 1 in log-log), so a fresh network is still the classical
    criterion; a network output that strays far saturates at a factor R either way."""
    log_ratio = torch.log(ratio.clamp_min(torch.finfo(ratio.dtype).tiny))
    return torch.exp(torch.tanh(log_ratio / log_range) * log_range)


class FourierEmbedding(nn.Module):
    """z = 2 pi x B^T with B ~ Normal(0, scale^2) [dim/2, in] frozen; returns [sin z, cos z]."""

    def __init__(self, in_dim: int, dim: int, scale: float) -> None:
        super().__init__()
        # Drawn from the global torch RNG, which --seed fixes before the network is built.
        self.register_buffer("B", torch.randn(dim // 2, in_dim, dtype=torch.float64) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (2 * math.pi) * (x @ self.B.T)
        return torch.cat([torch.sin(z), torch.cos(z)], -1)


class FullyConnectedNN(nn.Module):
    def __init__(self, input_dim: int, hidden_dims: Sequence[int] = (200, 1000, 1000, 200), activation: str = "tanh",
                 dropout: float = 0.2, fourier_scale: float = 0.0, fourier_dim: int = 64, dt_min: float = 1e-12,
                 dt_max: Optional[float] = None, output_dim: int = 2, dt_param: str = "scale-aware",
                 eta_init: float = 0.02, dt_factor_range: Optional[float] = None,
                 timescale: str = "acceleration") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if dt_param not in DT_PARAMS:
            raise ValueError(f"unknown dt_param {dt_param!r}; choose one of {list(DT_PARAMS)}")
        if timescale not in TIMESCALES:
            raise ValueError(f"unknown timescale {timescale!r}; choose one of {list(TIMESCALES)}")
        self._architecture = {
            "input_dim": int(input_dim), "hidden_dims": [int(w) for w in hidden_dims], "activation": activation,
            "dropout": float(dropout), "fourier_scale": float(fourier_scale), "fourier_dim": int(fourier_dim),
            "dt_min": float(dt_min), "dt_max": None if dt_max is None else float(dt_max), "output_dim": int(output_dim),
            "dt_param": dt_param, "eta_init": float(eta_init),
            "dt_factor_range": None if dt_factor_range is None else float(dt_factor_range),
            "timescale": timescale,
        }
        self.timescale = timescale
        if dt_factor_range is not None and not (dt_factor_range > 1 and math.isfinite(dt_factor_range)):
            raise ValueError(f"dt_factor_range must be a finite number > 1, got {dt_factor_range}")
        self.dt_min = float(dt_min)
        self.dt_max = dt_max
        self.scale_aware = dt_param == "scale-aware"
        # softplus(0) = ln 2: the factor that makes a zero output mean "eta_init".
        self.eta_init = float(eta_init)
        self._factor = float(eta_init) / math.log(2.0)
        # ln R of a bounded factor (scale-aware only); None: unbounded.
        self.log_range = math.log(dt_factor_range) if dt_factor_range is not None and self.scale_aware else None
        self.embedding = FourierEmbedding(input_dim, fourier_dim, fourier_scale) if fourier_scale > 0 else None
        width = fourier_dim if self.embedding is not None else input_dim
        layers: list[nn.Module] = []
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        last = nn.Linear(width, output_dim)
        if self.scale_aware:
            with torch.no_grad():  # a fresh network is the classical criterion at eta_init
                last.weight[0].zero_()
                last.bias[0] = 0.0
        layers += [last, nn.Softplus()]
        self.net = nn.Sequential(*layers)

    def architecture(self) -> dict[str, Any]:
        return dict(self._architecture)

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> "FullyConnectedNN":
        return cls(**arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs [B, 2] (after Softplus)."""
        if self.embedding is not None:
            x = self.embedding(x)
        return self.net(x)

    def dt(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """The predicted step per row, [B], from inputs [B, F] and the states' dynamical times [B]
        (unused by the absolute parametrization)."""
        if self.training or torch.is_grad_enabled() or self.embedding is not None:
            return self.dt_from_output(self(x), tau)
        layers = self._compiled_layers()
        if layers is not None and x.dim() == 2 and x.shape[0] <= COMPILED_MAX_ROWS and x.is_cpu \
                and x.dtype is layers[0][0].dtype and tau.dtype is x.dtype and tau.is_contiguous() \
                and self.log_range is None:  # the compiled head has no bound: outputs only, below
            return self._compiled_forward(x, layers, tau)[1]
        return self.dt_from_output(self._inference(x), tau)

    def bind_dt(self, rows: int, dtype: torch.dtype, device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """`dt(x, tau)` for a loop that asks for `rows` steps at a time (the simulation): where
        the compiled forward applies, one call into preallocated buffers with everything else
        worked out here, once (the returned dt is a buffer the next call overwrites); else
        self.dt. Inference only (eval mode, no gradients), like the loop."""
        layers = self._compiled_layers()
        if layers is None or rows > COMPILED_MAX_ROWS or layers[0][0].dtype is not dtype \
                or torch.device(device).type != "cpu" or self.training:
            return self.dt
        out = torch.empty(rows, self._architecture["output_dim"], dtype=dtype)
        dt = torch.empty(rows, dtype=dtype)
        pointers = [(w.data_ptr(), b.data_ptr(), *rest) for w, b, *rest in layers]
        # The compiled head has no bound: a bounded factor takes the outputs and dt_from_output.
        head = (dtype is torch.float64, dt.data_ptr() if self.log_range is None else 0, self.scale_aware)
        constants = (self._factor, self.dt_min, math.inf if self.dt_max is None else self.dt_max)
        forward = _core.cpu_mlp_forward

        def bound(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
            if not (x.is_contiguous() and tau.is_contiguous() and x.shape[0] == rows):
                return self.dt(x, tau)
            forward(x.data_ptr(), out.data_ptr(), rows, pointers, *head, tau.data_ptr(), *constants)
            return dt if self.log_range is None else self.dt_from_output(out, tau)

        return bound

    def _compiled_forward(self, x: torch.Tensor, layers: list, tau: Optional[torch.Tensor] = None):
        """(outputs, dt or None) of a few CPU rows from one compiled call: the network, and with
        tau also dt_from_output's step, computed in double and rounded once."""
        out = x.new_empty(x.shape[0], self._architecture["output_dim"])
        dt = x.new_empty(x.shape[0]) if tau is not None else None
        # Pointers are read per call: .to() and load_state_dict may move the parameters.
        _core.cpu_mlp_forward(x.contiguous().data_ptr(), out.data_ptr(), x.shape[0],
                              [(w.data_ptr(), b.data_ptr(), *rest) for w, b, *rest in layers],
                              x.dtype is torch.float64, 0 if dt is None else dt.data_ptr(), self.scale_aware,
                              0 if tau is None else tau.data_ptr(), self._factor, self.dt_min,
                              math.inf if self.dt_max is None else self.dt_max)
        return out, dt

    def _inference(self, x: torch.Tensor) -> torch.Tensor:
        """forward() in eval mode without gradients. A few rows on the CPU (the simulation's one
        system per step) go through one compiled call (csrc/cpu/mlp.cpp), where torch's per-
        operator dispatch would cost more than the arithmetic; otherwise the same operators as
        forward() as plain function calls (bitwise its result), without the module machinery."""
        layers = self._compiled_layers()
        if layers is not None and x.dim() == 2 and x.shape[0] <= COMPILED_MAX_ROWS and x.is_cpu \
                and x.dtype is layers[0][0].dtype:
            return self._compiled_forward(x, layers)[0]
        for function, *arguments in self._plan():
            x = function(x, *arguments)
        return x

    def _compiled_layers(self) -> Optional[list]:
        """(weight, bias, in, out, activation code) per Linear layer for cpu_mlp_forward, or None
        where the compiled forward does not apply (no compiled module, a Fourier embedding,
        parameters off the CPU, not contiguous or of mixed dtypes). Built once per placement."""
        weight = self.net[0].weight
        key = (weight.device, weight.dtype, id(weight))  # a new placement or new parameter objects
        if getattr(self, "_compiled_key", None) != key:
            self._compiled_key, self._compiled = key, None
            linears = [m for m in self.net if isinstance(m, nn.Linear)]
            usable = _core is not None and hasattr(_core, "cpu_mlp_forward") and self.embedding is None and all(
                p.is_cpu and p.is_contiguous() and p.dtype is weight.dtype and p.dtype in (torch.float32, torch.float64)
                for m in linears for p in (m.weight, m.bias)) \
                and sum(m.in_features * m.out_features for m in linears) <= COMPILED_MAX_MACS
            if usable:
                activation = _ACTIVATION_CODES[self._architecture["activation"]]
                self._compiled = [(m.weight, m.bias, m.in_features, m.out_features,
                                   _ACTIVATION_CODES["softplus"] if i == len(linears) - 1 else activation)
                                  for i, m in enumerate(linears)]
        return self._compiled

    def _plan(self) -> list:
        """(function, extra arguments) per layer for _inference, built once (weights are shared,
        not copied, so optimizer steps and load_state_dict are seen)."""
        if getattr(self, "_inference_plan", None) is None:
            plan = []
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    plan.append((torch.nn.functional.linear, layer.weight, layer.bias))
                elif type(layer) in _ELEMENTWISE:
                    plan.append((_ELEMENTWISE[type(layer)],))
                elif not isinstance(layer, nn.Dropout):  # dropout is the identity in eval mode
                    plan.append((layer,))
            self._inference_plan = plan
        return self._inference_plan

    def dt_from_output(self, out: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        if self.scale_aware and self.log_range is not None:
            dt = bounded_ratio(out[..., 0] / math.log(2.0), self.log_range) * tau * self.eta_init
        elif self.scale_aware:
            dt = torch.mul(out[..., 0], tau).mul_(self._factor) if not out.requires_grad else \
                out[..., 0] * tau * self._factor
        else:
            dt = out[..., 0] + self.dt_min
        if self.dt_max is not None:
            dt = dt.clamp(max=self.dt_max)
        return dt


def build_model(cfg, input_dim: int) -> FullyConnectedNN:
    """The configured network on cfg's device and dtype; weights drawn from the global torch RNG."""
    model = FullyConnectedNN(input_dim, cfg.hidden_dims, cfg.activation, cfg.dropout, cfg.fourier_scale,
                             cfg.fourier_dim, cfg.dt_min, cfg.dt_max, dt_param=cfg.dt_param, eta_init=cfg.eta_init,
                             dt_factor_range=cfg.dt_factor_range, timescale=cfg.timescale)
    return model.to(device=cfg.device, dtype=getattr(torch, cfg.dtype))


def maybe_compile(model: nn.Module, enabled: bool):
    """torch.compile the network when asked: the callable used for forwards (the module itself
    stays the one saved and optimized)."""
    if not enabled:
        return model
    return torch.compile(model)
