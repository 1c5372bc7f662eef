"""CUDA: the same maps on the GPU as on the CPU (skipped without a CUDA device)."""

from __future__ import annotations

import pytest
import torch

import xcam

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("method", ["gradcam", "cam"])
def test_cuda_maps_equal_cpu(resnet18, method: str) -> None:
    torch.manual_seed(9)
    x = torch.randn(2, 3, 96, 128)
    cpu = xcam.get_method(method)(resnet18, "layer4")(x)
    gpu_model = resnet18.to("cuda")
    try:
        gpu = xcam.get_method(method)(gpu_model, "layer4")(x.cuda())
    finally:
        resnet18.to("cpu")
    assert gpu.maps.device.type == "cuda"  # tensors stay on their device
    torch.testing.assert_close(gpu.maps.cpu(), cpu.maps, atol=1e-3, rtol=1e-3)
    assert torch.equal(gpu.targets.cpu(), cpu.targets)
