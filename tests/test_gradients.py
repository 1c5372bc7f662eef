"""Gradients inside the exported graph vs eager autograd, for every torchvision family."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torchvision
from conftest import replicating, seeded, shallow
from torch import nn

import exporters
import xcam
from xcam.core.artifact import grad_name

SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "pt2": ".pt2"}


def _export(model, layers, tmp_path, fmt="onnx", size=64, **kw):
    if fmt == "pt2":
        kw.setdefault("aoti", False)
    path = tmp_path / f"g{SUFFIX[fmt]}"
    return exporters.export(
        model, layers, torch.randn(2, 3, size, size), path, format=fmt, gradients=True, **kw
    )


def _eager_grads(model, layers, x, targets=None):
    """dS/dA by eager autograd, independent of the export machinery."""
    cm = xcam.CamModel(model, layers, grad_handles=True)
    with torch.enable_grad():
        logits, *acts = cm(x)
        idx = logits.argmax(1) if targets is None else torch.as_tensor(targets)
        grads = torch.autograd.grad(logits.gather(1, idx[:, None]).sum(), acts)
    return logits.detach(), [a.detach() for a in acts], list(grads), idx


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def small_vgg() -> nn.Module:
    """vgg11_bn's feature stack (max-pool backward) with a small classifier for speed."""
    torch.manual_seed(0)
    model = torchvision.models.vgg11_bn(weights=None, num_classes=10)
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 10)
    )
    return model.eval()


# family: (factory, [middle layer, last layer])
FAMILIES = {
    "resnet18": (lambda: seeded("resnet18"), ["layer3", "layer4"]),
    "vgg11_bn": (small_vgg, ["features.20", "features"]),
    "densenet121": (lambda: shallow("densenet121"), ["features.denseblock3", "features"]),
    "mobilenet_v2": (lambda: shallow("mobilenet_v2"), ["features.6", "features"]),
    "mobilenet_v3_small": (lambda: shallow("mobilenet_v3_small"), ["features.4", "features"]),
    "efficientnet_b0": (lambda: shallow("efficientnet_b0"), ["features.5", "features"]),
    "convnext_tiny": (lambda: shallow("convnext_tiny"), ["features.5", "features"]),
    "regnet_y_400mf": (lambda: shallow("regnet_y_400mf"), ["trunk_output.block3", "trunk_output"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_in_graph_gradients_match_eager(family: str, fmt: str, tmp_path) -> None:
    make, layers = FAMILIES[family]
    model = make()
    report = _export(model, layers, tmp_path, fmt)
    backend = xcam.load(report.path, trust_code=True)
    assert backend.has_gradients
    for b in (1, 3):
        x = torch.randn(b, 3, 64, 64, generator=torch.Generator().manual_seed(b))
        outs = backend.run(x)
        logits, _acts, grads, _ = _eager_grads(model, layers, x)
        torch.testing.assert_close(outs["logits"], logits, atol=1e-4, rtol=1e-4)
        for name, g in zip(layers, grads, strict=True):
            assert _rel(outs[grad_name(name)], g) < 1e-3, (name, _rel(outs[grad_name(name)], g))
        ref = xcam.GradCAM(model, layers)(x)
        assert float((outs["gradcam"] - ref.maps).abs().max()) < 1e-3
        # and the main library's methods run on the file alone, no eager model
        got = xcam.GradCAM(backend, layers)(x)
        assert float((got.maps - ref.maps).abs().max()) < 1e-3
        assert torch.equal(got.targets, ref.targets)


@pytest.mark.slow
def test_pt2_gradients(tmp_path) -> None:
    model = seeded("resnet18")
    report = _export(model, ["layer3", "layer4"], tmp_path, "pt2")
    backend = xcam.load(report.path, trust_code=True)
    x = torch.randn(3, 3, 64, 64)
    ref = xcam.GradCAM(model, ["layer3", "layer4"])(x)
    got = xcam.GradCAM(backend, ["layer3", "layer4"])(x)
    assert float((got.maps - ref.maps).abs().max()) < 1e-3


def test_closed_form_for_pooled_linear_head(demo_model, tmp_path) -> None:
    report = _export(demo_model, ["block2", "block3"], tmp_path)
    meta = report.metadata
    assert meta.closed_form == ["block3"] and meta.gradients
    assert meta.output_names == [
        "logits",
        "block2",
        "block3",
        "block2.grad",
        "block3.grad",
        "gradcam",
    ]
    backend = xcam.load(report.path, trust_code=True)
    x = torch.randn(3, 3, 64, 64)
    outs = backend.run(x)
    _, _, grads, idx = _eager_grads(demo_model, ["block2", "block3"], x)
    assert _rel(outs["block3.grad"], grads[1]) < 1e-5  # W/(h·w), exact
    assert _rel(outs["block2.grad"], grads[0]) < 1e-4
    w = demo_model.fc.weight[idx] / 256
    torch.testing.assert_close(outs["block3.grad"], w[:, :, None, None].expand(-1, -1, 16, 16))


def test_target_input(demo_model, tmp_path) -> None:
    report = _export(demo_model, "block3", tmp_path, target_input=True)
    backend = xcam.load(report.path, trust_code=True)
    assert backend.metadata.input_names == ["input", "target"]
    x = torch.randn(3, 3, 64, 64)
    for targets in ([0, 2, 3], 1, None):
        ref = xcam.GradCAM(demo_model, "block3")(x, targets=targets)
        got = xcam.GradCAM(backend, "block3")(x, targets=targets)
        assert torch.equal(got.targets, ref.targets)
        torch.testing.assert_close(got.maps, ref.maps, atol=1e-4, rtol=1e-4)
    with pytest.raises(xcam.TargetError, match="out of range"):
        xcam.GradCAM(backend)(x, targets=9)


def test_without_target_input_only_top1(demo_model, tmp_path) -> None:
    backend = xcam.load(_export(demo_model, "block3", tmp_path).path, trust_code=True)
    x = torch.randn(2, 3, 64, 64)
    top = demo_model(x).argmax(1)
    xcam.GradCAM(backend)(x, targets=top)  # the top-1 classes, stated: fine
    other = (top + 1) % 4
    with pytest.raises(xcam.XCamError, match="--target-input"):
        xcam.GradCAM(backend)(x, targets=other)
    with pytest.raises(xcam.XCamError, match=r"needs gradients|callable"):
        xcam.GradCAM(backend)(x, targets=lambda y: y[:, 0])


class OneLogit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Conv2d(8, 1, 1), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return self.head(self.body(x))  # [B, 1, 1, 1]: a sigmoid head's logit


def test_single_logit_head_in_graph(tmp_path) -> None:
    model = OneLogit().eval()
    report = _export(model, "body.1", tmp_path, size=32, target_input=True)
    backend = xcam.load(report.path, trust_code=True)
    x = torch.randn(4, 3, 32, 32)
    for targets in (None, "positive", "negative"):
        ref = xcam.GradCAM(model, "body.1")(x, targets=targets)
        got = xcam.GradCAM(backend, "body.1")(x, targets=targets)
        assert torch.equal(got.targets, ref.targets)
        torch.testing.assert_close(got.maps, ref.maps, atol=1e-4, rtol=1e-4)


def test_backward_without_forward_form_is_named(tmp_path) -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ConvTranspose2d(4, 4, 2, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()
    with pytest.raises(exporters.UnsupportedOpError, match="transposed convolution"):
        _export(model, "0", tmp_path, size=16)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 16, 16), (2, 1, 4, 9)])
def test_lite_upsample_matches_torch(shape) -> None:
    from xcam.lite import upsample

    x = torch.rand(shape[0], shape[2], shape[3])
    for size in ((32, 48), (shape[2], shape[3] * 2), (64, 64)):
        ref = torch.nn.functional.interpolate(
            x[:, None], size=size, mode="bilinear", align_corners=False
        )[:, 0]
        np.testing.assert_allclose(upsample(x.numpy(), size), ref.numpy(), atol=1e-6)


def test_a_map_flat_up_to_rounding_is_flat_in_torch_and_lite() -> None:
    """A map whose spread is float rounding of its level is zeros and flagged (min-max would
    blow the rounding up to [0, 1]); a small but real spread is still scaled."""
    from xcam.core.ops import normalize
    from xcam.lite import normalize as lite_normalize

    level = torch.full((3, 6, 6), 3e-4, dtype=torch.float64)
    noise = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    maps = (level + noise * torch.tensor([1e-11, 1e-6, 0.0])[:, None, None]).float()
    maps[2] = 0.0
    scaled, flat = normalize(maps)
    assert flat.tolist() == [True, False, True]
    assert not scaled[0].any() and not scaled[2].any()
    assert float(scaled[1].min()) == 0.0 and float(scaled[1].max()) == 1.0
    np.testing.assert_allclose(lite_normalize(maps.numpy()), scaled.numpy(), atol=1e-6)
    # an overflow is not flat: it stays non-finite, for the callers to name
    maps[0, 2, 3] = float("inf")
    scaled, flat = normalize(maps)
    assert not flat[0] and not bool(scaled[0].isfinite().all())
    with np.errstate(invalid="ignore"):  # inf / inf
        assert not np.isfinite(lite_normalize(maps.numpy())[0]).all()


def test_a_replicating_pool_exports_with_parity(tmp_path) -> None:
    """AlexNet / VGG at a small input: ``AdaptiveAvgPool2d`` replicates a 1x1 map to 3x3, so
    the Grad-CAM there is constant up to rounding. It was scaled to noise (the export's parity
    failed at max abs 1); now eager, the file and xcam.lite agree it's flat."""
    model = replicating()
    report = _export(model, "3", tmp_path, size=16)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = xcam.GradCAM(model, "3")(x)
    assert ref.degenerate.all() and not ref.maps.any()
    got = xcam.GradCAM(xcam.load(report.path, trust_code=True), "3")(x)
    assert got.degenerate.all() and not got.maps.any()
    from xcam.lite import OnnxExplainer

    assert not OnnxExplainer(report.path)(x.numpy()).maps.any()


def _torch_rule(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The weighting rules written from the papers in torch, independent of xcam.lite."""
    if method == "gradcam":
        return (g.mean((2, 3), keepdim=True) * a).sum(1)
    if method == "gradcam++":
        num = g**2
        den = 2 * g**2 + a.sum((2, 3), keepdim=True) * g**3
        alpha = torch.where(
            g != 0,
            num / torch.where(den != 0, den, torch.full_like(den, 1e-7)),
            torch.zeros_like(g),
        )
        return ((alpha * g.clamp_min(0)).sum((2, 3), keepdim=True) * a).sum(1)
    if method == "xgradcam":
        w = (g * a).sum((2, 3), keepdim=True) / (a.sum((2, 3), keepdim=True) + 1e-7)
        return (w * a).sum(1)
    if method == "hirescam":
        return (g * a).sum(1)
    return (g.clamp_min(0) * a).sum(1)  # layercam


LITE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    import numpy as np

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "torch" or name.startswith(("torch.", "torchvision")):
                raise ImportError("torch is not installed here")
            return None

    sys.meta_path.insert(0, NoTorch())
    from xcam.lite import METHODS, OnnxExplainer

    x = np.load(sys.argv[2])
    out = {}
    explainer = OnnxExplainer(sys.argv[1])
    for m in METHODS:
        r = explainer(x, method=m)
        out[m] = {"maps": r.maps.tolist(), "targets": r.targets.tolist(),
                  "layer_maps": {k: v.tolist() for k, v in r.layer_maps.items()}}
    r = explainer(x, targets=[1, 2])
    out["with_targets"] = {"maps": r.maps.tolist(), "targets": r.targets.tolist()}
    print(json.dumps({"torch_loaded": "torch" in sys.modules, "results": out}))
    """
)


def test_lite_runs_without_torch_and_matches(demo_model, tmp_path) -> None:
    layers = ["block2", "block3"]
    report = _export(demo_model, layers, tmp_path, target_input=True)
    x = torch.randn(2, 3, 64, 64)
    np.save(tmp_path / "x.npy", x.numpy())
    proc = subprocess.run(
        [sys.executable, "-c", LITE_SCRIPT, str(report.path), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data["torch_loaded"] is False
    res = data["results"]
    _, acts, grads, idx = _eager_grads(demo_model, layers, x)
    ref = xcam.GradCAM(demo_model, layers)(x)
    np.testing.assert_allclose(np.array(res["gradcam"]["maps"]), ref.maps.numpy(), atol=1e-4)
    assert res["gradcam"]["targets"] == idx.tolist()
    for method in ("gradcam++", "xgradcam", "hirescam", "layercam"):
        for name, a, g in zip(layers, acts, grads, strict=True):
            want = torch.relu(_torch_rule(method, a, g))
            got = torch.tensor(res[method]["layer_maps"][name])
            scale = float(want.abs().max()) or 1.0
            assert float((got - want).abs().max()) / scale < 1e-3, (method, name)
        maps = np.array(res[method]["maps"])
        assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    with_t = xcam.GradCAM(demo_model, layers)(x, targets=[1, 2])
    np.testing.assert_allclose(
        np.array(res["with_targets"]["maps"]), with_t.maps.numpy(), atol=1e-4
    )


def test_lite_errors(demo_model, tmp_path) -> None:
    from xcam.lite import OnnxExplainer

    plain = exporters.export(demo_model, "block3", torch.randn(2, 3, 64, 64), tmp_path / "p.onnx")
    with pytest.raises(ValueError, match="--gradients"):
        OnnxExplainer(plain.path)
    report = _export(demo_model, "block3", tmp_path)
    with pytest.raises(ValueError, match="unknown method"):
        OnnxExplainer(report.path, method="scorecam")
    explainer = OnnxExplainer(report.path)
    with pytest.raises(ValueError, match="top-1 class only"):
        explainer(np.zeros((1, 3, 64, 64), np.float32), targets=[1])
    with pytest.raises(ValueError, match="NaN"):
        explainer(np.full((1, 3, 64, 64), np.nan, np.float32))


def test_a_multi_layer_file_fuses_all_its_layers_everywhere(demo_model, tmp_path) -> None:
    """Issue 12.3: one rule for a file exported with several layers — all of them, fused,
    in the file's own map, in ``xcam.lite``, in ``xcam.load`` + a method, and on the CLI;
    ``layers=`` / ``--layer`` selects a subset in every path."""
    import json

    from click.testing import CliRunner

    from xcam.cli import main
    from xcam.demo import sample_images
    from xcam.images import load_image, preprocess
    from xcam.lite import OnnxExplainer
    from xcam.viz import resize_map

    layers = ["block1", "block2", "block3"]
    path = _export(demo_model, layers, tmp_path).path
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    eager = xcam.GradCAM(demo_model, layers)(x).maps
    in_file = xcam.load(path).run(x)["gradcam"]
    lite = torch.from_numpy(OnnxExplainer(path)(x.numpy()).maps)
    loaded = xcam.GradCAM(xcam.load(path))(x).maps
    with_model = xcam.GradCAM(demo_model, backend=xcam.load(path))(x).maps
    for got in (in_file, lite, loaded, with_model):
        assert torch.allclose(got, eager, atol=1e-4), float((got - eager).abs().max())
    one = xcam.GradCAM(xcam.load(path), "block3")(x).maps
    assert torch.allclose(one, xcam.GradCAM(demo_model, "block3")(x).maps, atol=1e-4)

    image = sample_images()[0]
    im = load_image(image)
    info = xcam.load_model(str(path))
    xi = preprocess([im], info.input_size, info.mean, info.std)  # as the CLI makes it
    for extra, want in (([], layers), (["--layer", "block3"], ["block3"])):
        out = tmp_path / f"out{len(extra)}"
        res = CliRunner().invoke(main, ["explain", str(path), str(image), "-o", str(out), *extra])
        assert res.exit_code == 0, res.output
        item = json.loads((out / "predictions.json").read_text())["images"][0]
        ref = resize_map(xcam.GradCAM(demo_model, want)(xi).maps[0], (im.height, im.width))
        assert np.abs(np.load(out / item["map"]) - ref).max() < 1e-4


def test_lite_validates_as_the_main_library_does(demo_model, tmp_path) -> None:
    """Issue 12.7: ``xcam.lite`` took ``-1`` (and reported it), ``1.7`` (as 1), ``4`` / ``99``
    (ONNX Runtime's raw INVALID_ARGUMENT) and a 1e38 input (NaN maps). Same checks, same
    errors as ``xcam.GradCAM(xcam.load(file))``."""
    from xcam.core.errors import InputError, NumericalError, TargetError
    from xcam.lite import OnnxExplainer

    path = _export(demo_model, "block3", tmp_path, target_input=True).path
    lite, main = OnnxExplainer(path), xcam.GradCAM(xcam.load(path))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    for bad in (-1, 1.7, 4, 99, [0, 1, 2], True, "positive", [[0, 1]], [0.5, 1.0]):
        with pytest.raises(TargetError) as want:
            main(x, targets=bad)
        with pytest.raises(TargetError) as got:
            lite(x.numpy(), targets=bad)
        if bad not in (1.7, [0.5, 1.0], [[0, 1]]):  # these name torch's / numpy's dtype
            assert str(got.value) == str(want.value), bad
    huge = torch.full((1, 3, 64, 64), 1e38)
    with pytest.raises(NumericalError):
        main(huge)
    with pytest.raises(NumericalError, match="non-finite"):
        lite(huge.numpy())
    for bad_input in (np.zeros((3, 64, 64), np.float32), np.full((1, 3, 64, 64), np.nan)):
        with pytest.raises(InputError):
            lite(bad_input)
    ok = lite(x.numpy(), targets=[1, 2])
    assert ok.targets.tolist() == [1, 2]
    assert np.allclose(ok.maps, main(x, targets=[1, 2]).maps.numpy(), atol=1e-4)
