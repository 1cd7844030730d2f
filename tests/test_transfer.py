"""transfer.to_device: small host-to-device copies (on CUDA through pinned memory, non-blocking)."""
import pytest
import torch

from aitimestepper.ops import backends
from aitimestepper.transfer import to_device


def test_to_device_on_the_cpu_is_the_host_tensor():
    rows = to_device([2, 0, 1], "cpu")
    assert rows.dtype == torch.long and rows.tolist() == [2, 0, 1]
    mask = to_device([True, False], torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.tolist() == [True, False]
    host = torch.arange(4)
    assert to_device(host, "cpu") is host


@pytest.mark.skipif(not backends.cuda_kernels_usable(), reason="needs a GPU")
def test_to_device_on_cuda_copies_without_a_host_sync():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a synchronizing copy would raise
    try:
        rows = to_device([3, 1, 2], "cuda")
        picked = torch.arange(10, device="cuda")[rows]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert rows.device.type == "cuda" and picked.tolist() == [3, 1, 2]
