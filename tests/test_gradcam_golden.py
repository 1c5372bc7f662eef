"""Grad-CAM and CAM against hand-computed maps, identities and an independent reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TOY_X, SpatialHeadNet, ToyNet

import xcam

# hand computations, with x = [[1, 2, 0], [0, -1, 4]], A_0 = x, A_1 = -x, h·w = 6:
#  class 0: alpha = [1/6, 2/6] -> ReLU(x/6 - 2x/6) = ReLU(-x/6)
#  class 1: alpha = [3/6, -1/6] -> ReLU(3x/6 + x/6) = ReLU(2x/3)
GOLDEN_TOY = {
    0: torch.tensor([[0.0, 0.0, 0.0], [0.0, 1 / 6, 0.0]]),
    1: torch.tensor([[2 / 3, 4 / 3, 0.0], [0.0, 0.0, 8 / 3]]),
}
ATOL = 1e-6


@pytest.mark.parametrize("cls", [0, 1])
def test_gradcam_toy_hand_computed(cls: int) -> None:
    res = xcam.GradCAM(ToyNet(), "conv")(TOY_X, targets=cls)
    torch.testing.assert_close(res.layer_maps["conv"][0], GOLDEN_TOY[cls], atol=ATOL, rtol=0)
    # the fused map is that map min-max normalised (same size as the input: no resampling)
    g = GOLDEN_TOY[cls]
    torch.testing.assert_close(res.maps[0], (g - g.min()) / (g.max() - g.min()), atol=ATOL, rtol=0)
    assert res.targets.tolist() == [cls]


def test_cam_toy_hand_computed() -> None:
    # CAM class 1 = ReLU(3x + x) = ReLU(4x): 6 times the Grad-CAM map
    res = xcam.CAM(ToyNet(), "conv")(TOY_X, targets=1)
    torch.testing.assert_close(res.layer_maps["conv"][0], 6 * GOLDEN_TOY[1], atol=ATOL, rtol=0)


def test_gradcam_non_pooled_single_logit_head() -> None:
    # alpha = [mean V, mean U] = [1, 0.5] -> ReLU(x - x/2) = ReLU(x/2); negative: ReLU(-x/2)
    net = SpatialHeadNet()
    pos = xcam.GradCAM(net, "conv")(TOY_X, targets="positive")
    neg = xcam.GradCAM(net, "conv")(TOY_X, targets="negative")
    x = TOY_X[0, 0]
    torch.testing.assert_close(pos.layer_maps["conv"][0], F.relu(x / 2), atol=ATOL, rtol=0)
    torch.testing.assert_close(neg.layer_maps["conv"][0], F.relu(-x / 2), atol=ATOL, rtol=0)
    assert pos.targets.tolist() == [1] and neg.targets.tolist() == [0]
    logit = float(net(TOY_X).detach())
    assert float(pos.scores) == pytest.approx(logit) and float(neg.scores) == pytest.approx(-logit)


def test_single_logit_default_target_is_the_decision() -> None:
    net = SpatialHeadNet()
    x = torch.cat([TOY_X, -TOY_X])  # logits of opposite sign
    res = xcam.GradCAM(net, "conv")(x)
    logits = net(x)[:, 0]
    assert res.targets.tolist() == [int(v >= 0) for v in logits]
    assert bool((res.scores >= 0).all())


def test_cam_rejects_non_pooled_head() -> None:
    with pytest.raises(xcam.HeadError, match="Grad-CAM"):
        xcam.CAM(SpatialHeadNet(), "conv")(TOY_X)


@pytest.mark.parametrize("model_name", ["demo_model", "resnet18"])
def test_gradcam_equals_relu_cam_over_hw(model_name: str, request) -> None:
    """For GAP + Linear heads, Grad-CAM = ReLU(CAM) / (h·w) exactly (up to float error)."""
    model = request.getfixturevalue(model_name)
    layer = "block3" if model_name == "demo_model" else "layer4"
    torch.manual_seed(1)
    x = torch.randn(3, 3, 64, 80)
    g = xcam.GradCAM(model, layer)(x, targets=[0, 1, 2])
    c = xcam.CAM(model, layer)(x, targets=[0, 1, 2])
    h, w = g.layer_maps[layer].shape[-2:]
    scale = float(c.layer_maps[layer].abs().max())
    torch.testing.assert_close(
        g.layer_maps[layer] * (h * w), c.layer_maps[layer], atol=1e-5 * scale, rtol=1e-4
    )


def _reference_gradcam(model, x, split: str, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM by hand: run the resnet up to ``split``, differentiate the rest with autograd."""
    stem = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    blocks = ["layer1", "layer2", "layer3", "layer4"]
    k = blocks.index(split) + 1
    with torch.no_grad():
        a = stem(x)
        for name in blocks[:k]:
            a = getattr(model, name)(a)
    a = a.clone().requires_grad_(True)
    y = a
    for name in blocks[k:]:
        y = getattr(model, name)(y)
    logits = model.fc(torch.flatten(model.avgpool(y), 1))
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)
    alpha = grad.mean(dim=(2, 3))
    return F.relu((alpha[:, :, None, None] * a).sum(1)).detach()


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_gradcam_matches_independent_autograd_reference(resnet18, layer: str) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 96, 64)
    target = torch.tensor([3, 907])
    res = xcam.GradCAM(resnet18, layer)(x, targets=target)
    ref = _reference_gradcam(resnet18, x, layer, target)
    scale = float(ref.abs().max())
    assert scale > 0
    torch.testing.assert_close(res.layer_maps[layer], ref, atol=1e-5 * scale, rtol=1e-4)
    assert res.maps.shape == (2, 96, 64)


def test_fully_convolutional_sigmoid_head_logits_b_k_1_1() -> None:
    """A [B, K, 1, 1] output (conv classifier ending in a sigmoid) is taken as [B, K]."""
    torch.manual_seed(3)
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    conv_head = torch.nn.Sequential(
        body, torch.nn.Conv2d(8, 4, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Sigmoid()
    )
    x = torch.randn(2, 3, 20, 28)
    res = xcam.GradCAM(conv_head, "0")(x, targets=2)
    assert res.logits.shape == (2, 4)
    # reference: same score read from the flattened output
    flat = torch.nn.Sequential(conv_head, torch.nn.Flatten())
    ref = xcam.GradCAM(flat, "0.0")(x, targets=2)
    torch.testing.assert_close(res.maps, ref.maps, atol=1e-6, rtol=0)
    assert res.maps.shape == (2, 20, 28)
