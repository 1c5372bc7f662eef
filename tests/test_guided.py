"""Guided Backprop and Guided Grad-CAM: hand-computed maps, peers, side effects, warnings."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_snapshot, seeded, snapshot
from PIL import Image
from torch import nn

import xcam
from xcam.attributions.guided import GuidedBackprop, GuidedGradCAM
from xcam.core.capture import guided_relus
from xcam.methods import get_method
from xcam.methods.gradcam import GradCAM


class SumHead(nn.Module):
    """One logit per sample: the sum of everything."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(1, 2, 3))[:, None]


def _hand_net(inplace: bool) -> nn.Sequential:
    """x -> 1x1 conv (w = 1, 0.5) -> ReLU -> 1x1 conv (w = 2, -3) -> ReLU -> sum."""
    net = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=False),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(2, 1, 1, bias=False),
        nn.ReLU(inplace=inplace),
        SumHead(),
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, 0.5]).view(2, 1, 1, 1))
        net[2].weight.copy_(torch.tensor([2.0, -3.0]).view(1, 2, 1, 1))
    return net.eval()


@pytest.mark.parametrize("inplace", [False, True])
def test_hand_computed_toy(inplace: bool) -> None:
    """x = [1, -2]: z1 = ([1, -2], [.5, -1]), a1 = ([1, 0], [.5, 0]); z2 = [.5, 0], S = .5.

    dS/dz2 = [1, 0]; dS/da1 = ([2, 0], [-3, 0]). Guided: ReLU(.) at z1 > 0 gives
    ([2, 0], [0, 0]), so G = 1·[2, 0] + .5·[0, 0] = [2, 0]. The plain gradient keeps the
    -3 (z1 = .5 > 0): 2 - 1.5 = [.5, 0].
    """
    x = torch.tensor([1.0, -2.0]).view(1, 1, 1, 2)
    net = _hand_net(inplace)
    res = GuidedBackprop(net)(x)
    assert res.maps.shape == (1, 1, 1, 2) and res.maps.dtype == torch.float32
    torch.testing.assert_close(res.maps, torch.tensor([2.0, 0.0]).view(1, 1, 1, 2))
    assert float(res.scores[0]) == pytest.approx(0.5)
    assert res.targets.tolist() == [1]  # the single logit's positive decision
    assert res.layers == [] and res.layer_maps == {} and res.backend == "eager"
    assert res.method == "guidedbackprop" and not bool(res.degenerate[0])
    leaf = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(net(leaf).sum(), leaf)
    torch.testing.assert_close(plain, torch.tensor([0.5, 0.0]).view(1, 1, 1, 2))


class ConvNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> linear head, random 3x3 convs with biases."""

    def __init__(self, inplace: bool = False, seed: int = 4):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(5, 4, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(torch.flatten(a, 1))


def _explicit_guided(net: ConvNet, x: torch.Tensor, target: int) -> torch.Tensor:
    """The same rule written out with masks and transposed convolutions (no autograd)."""
    with torch.no_grad():
        z1 = net.conv1(x)
        z2 = net.conv2(F.relu(z1))
        g = net.fc.weight[target].view(1, 4, 6, 6).expand_as(z2)  # dS/da2
        g = (z2 > 0) * g.clamp(min=0)  # guided ReLU 2
        g = F.conv_transpose2d(g, net.conv2.weight, padding=1)  # dS/da1
        g = (z1 > 0) * g.clamp(min=0)  # guided ReLU 1
        return F.conv_transpose2d(g, net.conv1.weight, padding=1)  # dS/dx


def test_matches_explicit_masks_batched_and_per_sample() -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 3, 6, 6)
    net = ConvNet().eval()
    res = GuidedBackprop(net)(x, targets=[0, 2, 1])
    for i, t in enumerate([0, 2, 1]):
        ref = _explicit_guided(net, x[i : i + 1], t)
        torch.testing.assert_close(res.maps[i : i + 1], ref, atol=1e-6, rtol=1e-5)
        one = GuidedBackprop(net)(x[i : i + 1], targets=t)
        torch.testing.assert_close(one.maps, res.maps[i : i + 1], atol=1e-7, rtol=1e-6)
    assert res.logits.shape == (3, 3) and res.targets.tolist() == [0, 2, 1]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / float(b.abs().max())


def test_agrees_with_captum_and_pytorch_grad_cam(resnet18) -> None:
    from captum.attr import GuidedBackprop as CaptumGuidedBackprop
    from pytorch_grad_cam import GuidedBackpropReLUModel

    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    before = snapshot(resnet18)
    res = GuidedBackprop(resnet18)(x)
    assert_same_snapshot(before, snapshot(resnet18))
    target = int(res.targets[0])
    assert target == int(resnet18(x).argmax())
    assert res.maps.abs().max() > 0
    # peers modify (captum: hooks, pytorch-grad-cam: replaces the ReLUs) and leave .grad: copies
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = CaptumGuidedBackprop(copy.deepcopy(resnet18)).attribute(x.clone(), target=target)
    assert _rel_err(res.maps, theirs) < 1e-5
    pgc = GuidedBackpropReLUModel(copy.deepcopy(resnet18), device="cpu")(
        x.clone(), target_category=target
    )  # [H, W, C] numpy, sample 0
    pgc = torch.from_numpy(pgc).permute(2, 0, 1)[None]
    assert _rel_err(res.maps, pgc) < 1e-5
    # guided really differs from the plain gradient
    leaf = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(resnet18(leaf)[0, target], leaf)
    assert _rel_err(res.maps, plain) > 0.1


def test_inplace_and_not_agree_and_model_is_unchanged() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 6, 6)
    ref = GuidedBackprop(ConvNet(inplace=False).eval())(x)
    net = ConvNet(inplace=True).train()  # explained in eval mode, left in training mode
    net.conv1.weight.requires_grad_(False)
    net.fc.weight.grad = torch.ones_like(net.fc.weight)
    before = snapshot(net)
    xg = x.clone().requires_grad_(True)
    res = GuidedBackprop(net)(xg)
    assert_same_snapshot(before, snapshot(net))
    assert xg.grad is None and net.relu1.inplace
    torch.testing.assert_close(res.maps, ref.maps, atol=0, rtol=0)
    assert torch._C._len_torch_function_stack() == 0
    # no hook left: a later plain gradient is plain again
    leaf = x[:1].clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(net.eval()(leaf)[0, 0], leaf)
    assert _rel_err(plain, GuidedBackprop(net)(x[:1], targets=0).maps) > 1e-3


class Boom(RuntimeError):
    pass


class FailAfterRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.act = nn.SiLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.body(x))
        if a.numel():
            raise Boom("after the ReLU")
        return self.fc(a.mean(dim=(2, 3)))


def test_no_side_effects_after_exceptions() -> None:
    model = FailAfterRelu().train()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an error is not also a warning
        with pytest.raises(Boom):
            GuidedBackprop(model)(torch.randn(2, 3, 8, 8))
    assert_same_snapshot(before, snapshot(model))
    assert torch._C._len_torch_function_stack() == 0

    net = ConvNet().train()
    before = snapshot(net)

    def bad_target(logits: torch.Tensor) -> torch.Tensor:
        raise Boom("target failed")

    for method in (GuidedBackprop(net), GuidedGradCAM(net, "conv2")):
        with pytest.raises(Boom):
            method(torch.randn(2, 3, 6, 6), targets=bad_target)
        assert_same_snapshot(before, snapshot(net))
    assert torch._C._len_torch_function_stack() == 0


def test_works_under_no_grad_and_frozen_parameters() -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 3, 6, 6)
    ref = GuidedBackprop(ConvNet().eval())(x)
    frozen = ConvNet().eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        res = GuidedBackprop(frozen)(x)
    torch.testing.assert_close(res.maps, ref.maps)
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())


class Mixed(nn.Module):
    """ReLU module, SiLU module, a functional relu, and a sigmoid head (not reported)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.silu = nn.SiLU()
        self.fc = nn.Linear(4, 3)
        self.out = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.silu(self.relu(self.conv(x))) - 0.1)
        return self.out(self.fc(a.mean(dim=(2, 3))))


def test_warns_once_naming_unguided_activations() -> None:
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="ends in Sigmoid"):  # saturation, at construction
        method = GuidedBackprop(Mixed().eval())
    with pytest.warns(UserWarning) as record:
        method(x)
    assert len(record) == 1, [f"{r.category.__name__}: {r.message}" for r in record]
    msg = str(record[0].message)
    assert "SiLU module 'silu'" in msg and "F.relu()" in msg and "outside an nn.ReLU" in msg
    assert "Sigmoid" not in msg  # the model's output activation has nothing after it to guide
    assert record[0].filename == __file__  # points at the caller
    with pytest.warns(UserWarning, match="ends in Sigmoid") as record:
        ggc = GuidedGradCAM(Mixed().eval(), "conv")
    assert len(record) == 1
    with pytest.warns(UserWarning, match="F.relu") as record:
        ggc(x)
    assert len(record) == 1


@pytest.mark.slow
def test_warns_for_densenet_functional_relu() -> None:
    model = seeded("densenet121")
    before = snapshot(model)
    with pytest.warns(UserWarning, match=r"F\.relu\(\) called outside an nn\.ReLU module") as rec:
        res = GuidedBackprop(model)(torch.randn(1, 3, 32, 32))
    assert len(rec) == 1 and "module '" not in str(rec[0].message)  # its ReLU modules are guided
    assert res.maps.shape == (1, 3, 32, 32) and bool(torch.isfinite(res.maps).all())
    assert_same_snapshot(before, snapshot(model))


def test_no_warning_for_relu_only_models_and_report_counts() -> None:
    net = ConvNet().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GuidedBackprop(net)(torch.randn(1, 3, 6, 6))
        with guided_relus(net) as report:
            net(torch.randn(1, 3, 6, 6))
    assert report.guided == 2 and report.unguided == [] and report.message() is None
    shared = nn.Sequential(nn.Conv2d(3, 3, 1), nn.GELU())
    with pytest.warns(UserWarning, match=r"GELU module '1'"), guided_relus(shared) as report:
        shared(torch.randn(1, 3, 2, 2))
    assert report.unguided == [("GELU", "1")]


class HeadPoseNet(nn.Module):
    """A head-pose-like regressor: yaw, pitch, roll as 66 bins each, ``[B, 3, 66]``."""

    def __init__(self, as_dict: bool = False):
        super().__init__()
        torch.manual_seed(6)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2)
        )
        self.heads = nn.Linear(32, 3 * 66)
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor):
        bins = self.heads(torch.flatten(self.body(x), 1)).view(-1, 3, 66)
        return {"pose": bins, "aux": bins.sum()} if self.as_dict else bins


def expected_angles(bins: torch.Tensor) -> torch.Tensor:
    """Sum over yaw, pitch, roll of the softmax expectation in degrees (3° bins)."""
    idx = torch.arange(66, dtype=bins.dtype, device=bins.device)
    return ((bins.softmax(dim=-1) * idx).sum(dim=-1) * 3 - 99).sum(dim=-1)


def test_callable_target_on_multi_output_regression() -> None:
    torch.manual_seed(7)
    x = torch.randn(3, 3, 12, 12)
    model = HeadPoseNet().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the softmax of the target is not the model's
        res = GuidedBackprop(model)(x, targets=expected_angles)
    assert res.maps.shape == x.shape and res.logits.shape == (3, 3, 66)
    assert res.targets is expected_angles
    torch.testing.assert_close(res.scores, expected_angles(model(x)).detach())
    for i in range(3):
        one = GuidedBackprop(model)(x[i : i + 1], targets=expected_angles)
        torch.testing.assert_close(one.maps, res.maps[i : i + 1], atol=1e-6, rtol=1e-5)
    # the same model returning a dict: the output is chosen by key
    keyed = GuidedBackprop(HeadPoseNet(as_dict=True).eval(), output="pose")
    torch.testing.assert_close(keyed(x, targets=expected_angles).maps, res.maps)
    with pytest.raises(xcam.TargetError, match="output=KEY"):
        GuidedBackprop(HeadPoseNet(as_dict=True).eval())(x, targets=expected_angles)


def test_score_independent_of_input_is_degenerate() -> None:
    net = ConvNet().eval()
    x = torch.randn(2, 3, 6, 6)
    for target in (lambda logits: logits[:, 0] * 0, lambda logits: torch.zeros(len(logits))):
        res = GuidedBackprop(net)(x, targets=target)
        assert torch.equal(res.maps, torch.zeros_like(x)) and res.degenerate.tolist() == [1, 1]


@pytest.mark.parametrize("layers", ["block3", ["block2", "block3"]])
def test_guided_gradcam_is_guided_times_upsampled_gradcam(demo_model, layers) -> None:
    torch.manual_seed(8)
    x = torch.randn(2, 3, 64, 64)
    res = GuidedGradCAM(demo_model, layers)(x)
    guided = GuidedBackprop(demo_model)(x)
    cam = GradCAM(demo_model, layers)(x, targets=guided.targets)
    assert torch.equal(res.maps, guided.maps * cam.maps[:, None])
    assert torch.equal(res.targets, guided.targets) and torch.equal(res.scores, guided.scores)
    assert res.layers == cam.layers and res.method == "guidedgradcam"
    assert res.layer_maps.keys() == cam.layer_maps.keys()
    for name in cam.layer_maps:
        assert torch.equal(res.layer_maps[name], cam.layer_maps[name])
    assert res.maps.shape == x.shape and not bool(res.degenerate.any())
    # the default layer is Grad-CAM's (the last spatial layer), and it is reported
    method = GuidedGradCAM(demo_model)
    method(x[:1])
    assert method.layers == ["block3"]


def test_guided_gradcam_callable_target() -> None:
    torch.manual_seed(9)
    x = torch.randn(2, 3, 12, 12)
    model = HeadPoseNet().eval()
    res = GuidedGradCAM(model, "body.0")(x, targets=expected_angles)
    guided = GuidedBackprop(model)(x, targets=expected_angles)
    cam = GradCAM(model, "body.0")(x, targets=expected_angles)
    assert torch.equal(res.maps, guided.maps * cam.maps[:, None])


@pytest.mark.parametrize("cls", [GuidedBackprop, GuidedGradCAM])
@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript", "pt2"])
def test_non_eager_backend_is_a_clear_error(demo_model, cls, backend) -> None:
    with pytest.raises(xcam.XCamError, match="eager PyTorch only"):
        cls(demo_model, "block3", backend=backend)


def test_registered_by_name() -> None:
    assert get_method("guidedbackprop") is GuidedBackprop
    assert get_method("Guided-Grad-CAM") is GuidedGradCAM
    assert GuidedBackprop(nn.Sequential(nn.Conv2d(3, 3, 1)), "0").layers == []


def test_attribution_image() -> None:
    from xcam.viz import attribution_image, resize_attribution

    rng = np.random.default_rng(0)
    attr = rng.normal(size=(3, 10, 20)).astype(np.float32)
    img = attribution_image(torch.from_numpy(attr))
    assert img.mode == "RGB" and img.size == (20, 10)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    assert abs(arr.mean() - 0.5) < 0.02  # standardised around grey
    grey = np.asarray(attribution_image(attr[:1]))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    flat = np.asarray(attribution_image(np.zeros((3, 4, 4))))
    assert (flat == 128).all()
    with pytest.raises(ValueError, match="NaN"):
        attribution_image(np.full((3, 2, 2), np.nan))
    big = resize_attribution(attr, (20, 40))
    assert big.shape == (3, 20, 40) and big.dtype == np.float32
    assert big.max() > 1.0 and big.min() < -1.0  # raw values, not rescaled


@pytest.mark.parametrize("cls", [GuidedBackprop, GuidedGradCAM])
def test_pipeline_writes_attribution_png_and_npy(tmp_path, cls) -> None:
    from xcam.demo import sample_images
    from xcam.models import load_model
    from xcam.pipeline import explain_files

    info = load_model("demo")
    paths = sample_images()[:3]
    out = tmp_path / "out"
    report = explain_files(info, paths, cls(info.model, "block3"), out, batch_size=2)
    assert report.errors == [] and len(report.items) == 3
    payload = json.loads((out / "predictions.json").read_text())
    assert payload["method"] == cls.name
    assert payload["layers"] == ([] if cls is GuidedBackprop else ["block3"])
    for item in payload["images"]:
        assert item["kind"] == "attribution"
        assert item["overlay"].endswith(f"_{cls.name}.png")
        with Image.open(item["image"]) as src:
            size = src.size
        with Image.open(out / item["overlay"]) as png:
            assert png.format == "PNG" and png.size == size and png.mode == "RGB"
        attr = np.load(out / item["map"])
        assert attr.shape == (3, size[1], size[0]) and attr.dtype == np.float32
        assert np.isfinite(attr).all() and np.abs(attr).max() > 0
        assert item["target"] == item["predictions"][0]["class"]
    gradcam = explain_files(info, paths[:1], GradCAM(info.model, "block3"), tmp_path / "g")
    assert gradcam.items[0]["kind"] == "heatmap"
