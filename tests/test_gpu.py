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


def test_cuda_target_input_file_explains_the_classes_asked(demo_model, tmp_path) -> None:
    """A file exported with a target input, run on CUDA through ONNX Runtime's I/O binding,
    explains the classes given, as on the CPU (the target is bound with the image)."""
    import exporters

    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        pytest.skip("ONNX Runtime has no CUDA provider here")
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / "t.onnx"
    exporters.export(demo_model, "block3", x, path, gradients=True, target_input=True)
    cpu = xcam.GradCAM(xcam.load(path))(x, targets=[1, 2])
    gpu = xcam.GradCAM(xcam.load(path, device="cuda"))(x.cuda(), targets=[1, 2])
    assert gpu.targets.cpu().tolist() == cpu.targets.tolist() == [1, 2]
    torch.testing.assert_close(gpu.maps.cpu(), cpu.maps, atol=1e-3, rtol=1e-3)
