"""The network that maps a feature vector to a time step (SPEC.md section 5).

`FullyConnectedNN`: optional frozen Gaussian Fourier embedding, then Linear -> activation ->
Dropout per hidden width, then Linear -> 2 outputs -> Softplus. Output 0 is the step:
dt = softplus(o0) + dt_min, capped at dt_max when set; output 1 is an auxiliary head. The
architecture is plain data (`architecture()`), saved in checkpoints and rebuilt from them.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "silu": nn.SiLU}


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
                 dt_max: Optional[float] = None, output_dim: int = 2) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self._architecture = {
            "input_dim": int(input_dim), "hidden_dims": [int(w) for w in hidden_dims], "activation": activation,
            "dropout": float(dropout), "fourier_scale": float(fourier_scale), "fourier_dim": int(fourier_dim),
            "dt_min": float(dt_min), "dt_max": None if dt_max is None else float(dt_max), "output_dim": int(output_dim),
        }
        self.dt_min = float(dt_min)
        self.dt_max = dt_max
        self.embedding = FourierEmbedding(input_dim, fourier_dim, fourier_scale) if fourier_scale > 0 else None
        width = fourier_dim if self.embedding is not None else input_dim
        layers: list[nn.Module] = []
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers += [nn.Linear(width, output_dim), nn.Softplus()]
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

    def dt(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted step per row, [B]."""
        return self.dt_from_output(self(x))

    def dt_from_output(self, out: torch.Tensor) -> torch.Tensor:
        dt = out[..., 0] + self.dt_min
        if self.dt_max is not None:
            dt = dt.clamp(max=self.dt_max)
        return dt


def build_model(cfg, input_dim: int) -> FullyConnectedNN:
    """The configured network on cfg's device and dtype; weights drawn from the global torch RNG."""
    model = FullyConnectedNN(input_dim, cfg.hidden_dims, cfg.activation, cfg.dropout, cfg.fourier_scale,
                             cfg.fourier_dim, cfg.dt_min, cfg.dt_max)
    return model.to(device=cfg.device, dtype=getattr(torch, cfg.dtype))


def maybe_compile(model: nn.Module, enabled: bool):
    """torch.compile the network when asked: the callable used for forwards (the module itself
    stays the one saved and optimized)."""
    if not enabled:
        return model
    return torch.compile(model)
