"""Backends: ORT providers, thread safety, methods on every backend equal eager, the tail."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from conftest import seeded
from torch import nn

import exporters
import xcam
from xcam.core.tail import InjectedTail, split_tail


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory, demo_model):
    path = tmp_path_factory.mktemp("onnx") / "demo.onnx"
    exporters.export(demo_model, ["block2", "block3"], torch.randn(2, 3, 64, 64), path)
    return path


@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript", "pt2"])
@pytest.mark.parametrize("method", ["gradcam", "cam"])
def test_methods_on_backends_equal_eager(demo_model, backend: str, method: str) -> None:
    torch.manual_seed(10)
    x = torch.randn(3, 3, 64, 64)
    layers = ["block2", "block3"] if method == "gradcam" else ["block3"]  # CAM: the GAP layer
    ref = xcam.get_method(method)(demo_model, layers)(x, targets=[0, 1, 3])
    explainer = xcam.get_method(method)(
        demo_model, layers, backend=backend, export_options={"aoti": False}
    )
    got = explainer(x, targets=[0, 1, 3])
    assert got.backend == {"onnxruntime": "onnx"}.get(backend, backend)
    torch.testing.assert_close(got.maps, ref.maps, atol=1e-5, rtol=1e-4)
    for layer in layers:
        torch.testing.assert_close(
            got.layer_maps[layer],
            ref.layer_maps[layer],
            atol=1e-5 * float(ref.layer_maps[layer].max()),
            rtol=1e-4,
        )
    # the export is made once and reused for the same input shape
    again = explainer(torch.randn(2, 3, 64, 64))
    assert len(explainer._exports) == 1 and again.maps.shape == (2, 64, 64)


def test_resnet_on_onnxruntime_equals_eager(resnet18) -> None:
    torch.manual_seed(11)
    x = torch.randn(2, 3, 64, 96)
    ref = xcam.GradCAM(resnet18, ["layer3", "layer4"])(x)
    got = xcam.GradCAM(resnet18, ["layer3", "layer4"], backend="onnxruntime")(x)
    torch.testing.assert_close(got.maps, ref.maps, atol=1e-5, rtol=1e-4)
    assert torch.equal(got.targets, ref.targets)


def test_loaded_backend_usable_as_model(demo_onnx, demo_model) -> None:
    backend = xcam.load(demo_onnx)
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(xcam.XCamError, match=r"needs gradients.*--backend"):
        xcam.GradCAM(backend)(x)
    with pytest.raises(xcam.HeadError, match="eager model"):
        xcam.CAM(backend)(x)
    with pytest.raises(xcam.XCamError, match=r"not an output of demo\.onnx"):
        xcam.GradCAM(backend, "block1")
    # with the eager model for the tail, a loaded backend is just a source of activations
    got = xcam.GradCAM(demo_model, "block3", backend=backend)(x)
    ref = xcam.GradCAM(demo_model, "block3")(x)
    torch.testing.assert_close(got.maps, ref.maps, atol=1e-5, rtol=1e-4)
    logits, a2, _a3 = backend(x)
    assert a2.shape == (2, 32, 16, 16) and logits.shape == (2, 4)
    assert "OnnxRuntimeBackend" in repr(backend)


def test_one_session_shared_across_threads(demo_onnx) -> None:
    backend = xcam.load(demo_onnx)
    inputs = [
        torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(8)
    ]
    expected = [backend.run(x)["block3"] for x in inputs]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = backend.run(inputs[i])["block3"]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, want in enumerate(expected):
        assert torch.equal(results[i], want)


def test_input_cast_to_declared_dtype(demo_onnx) -> None:
    backend = xcam.load(demo_onnx)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(backend.run(x.double())["logits"], backend.run(x)["logits"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_cuda_asked_but_not_given(demo_onnx) -> None:
    from xcam.backends.onnxruntime import ProviderError

    with pytest.raises(ProviderError, match=r"CUDA was asked for demo\.onnx"):
        xcam.load(demo_onnx, device="cuda")
    with pytest.warns(RuntimeWarning, match="falling back to the CPU"):
        backend = xcam.load(demo_onnx, device="cuda", strict=False)
    assert backend.device.type == "cpu" and backend.providers == ["CPUExecutionProvider"]
    assert backend.run(torch.randn(1, 3, 64, 64))["logits"].shape == (1, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript", "pt2"])
def test_cuda_backends_equal_eager(backend: str) -> None:
    model = seeded("resnet18").cuda()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    ref = xcam.GradCAM(model, "layer4")(x)
    got = xcam.GradCAM(model, "layer4", backend=backend)(x)
    assert got.maps.device.type == "cuda"
    torch.testing.assert_close(got.maps, ref.maps, atol=1e-3, rtol=1e-3)


# -- the eager tail --------------------------------------------------------------------


def test_split_tail_reproduces_the_model(resnet18) -> None:
    x = torch.randn(2, 3, 64, 64)
    tail, reason = split_tail(resnet18, "layer3")
    assert tail is not None, reason
    with torch.no_grad():
        _, a3 = xcam.CamModel(resnet18, "layer3")(x)
        torch.testing.assert_close(tail(a3), resnet18(x))
    # the tail holds the model's own modules, nothing before the layer
    names = {n for n, _ in tail.named_modules()}
    assert "layer4" in names and "layer1" not in names and "conv1" not in names


class Branchy(nn.Module):
    """A Python loop over a tensor's size: torch.fx can't trace it, torch.jit.trace can (a
    branch on tensor *values*, this test's model before, is now refused by every exporter:
    issue 12.4)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(12)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        a = self.conv(x)
        a = torch.stack([a[:, c] * 2 for c in range(a.shape[1])], dim=1)
        return self.fc(a.mean((2, 3)))


@pytest.mark.parametrize(
    "make,layer,reason",
    [
        (lambda: Branchy().eval(), "conv", "can't trace"),
        (lambda: seeded("resnet18"), "layer4.0.conv1", "path around it"),
    ],
)
def test_unsplittable_models_fall_back_correctly(make, layer: str, reason: str) -> None:
    model = make()
    tail, why = split_tail(model, layer)
    assert tail is None and reason in why
    x = torch.randn(2, 3, 32, 32)
    ref = xcam.GradCAM(model, layer)(x)
    explainer = xcam.GradCAM(model, layer, backend="torchscript")
    with pytest.warns(RuntimeWarning, match="whole eager model"):
        got = explainer(x)
    assert isinstance(explainer._tails[layer], InjectedTail)
    torch.testing.assert_close(got.maps, ref.maps, atol=1e-5, rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per layer, not per call
        explainer(x)
