"""Small host-to-device copies that do not make the host wait for the device.

`torch.tensor(values, device="cuda")` (and `.to("cuda")` of a CPU tensor) copies from pageable
memory and synchronizes the stream: the host waits for every kernel queued before it. In a
training attempt that would be a second host sync beside the accept decision (the row indices
of the accepted orbits wait for the retrain step's backward and Adam update). Staged through
pinned memory with non_blocking=True, the copy is queued behind those kernels instead, and
torch's caching host allocator keeps the pinned buffer until the copy has run.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch


def to_device(values: Union[Sequence, torch.Tensor], device: Union[str, torch.device],
              dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """`values` (a list or a CPU tensor) as a tensor on `device`, without a host sync on CUDA."""
    host = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    device = torch.device(device)
    if device.type == "cpu":
        return host
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
