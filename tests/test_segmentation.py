"""Segmentation targets (issue 17, item 3): a class over a region of a segmentation model's
``[B, K, H, W]`` output, eager — against a hand-written masked sum and pytorch-grad-cam's
``SemanticSegmentationTarget``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

import xcam
from xcam.core.layers import default_layer

SIZE, K = 64, 4
LAYER = "backbone.16"  # LR-ASPP's "high" features, the classifier's main input


@pytest.fixture(scope="module")
def seg_model():
    torch.manual_seed(0)
    return torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=K
    ).eval()


def _x(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _mask(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(SIZE, SIZE, generator=g) > 0.6).float()


def test_the_region_score_and_its_gradient_are_the_masked_sum(seg_model) -> None:
    x, mask, k = _x(), _mask(), 2
    result = xcam.GradCAM(seg_model, LAYER, output="out")(x, targets=xcam.RegionTarget(k, mask))
    seen = {}
    handle = seg_model.get_submodule(LAYER).register_forward_hook(
        lambda m, i, o: seen.setdefault("a", o)
    )
    try:
        y = seg_model(x)["out"]
    finally:
        handle.remove()
    score = (y[:, k] * mask).sum(dim=(1, 2))  # the reference, written out
    (g,) = torch.autograd.grad(score.sum(), seen["a"])
    a = seen["a"].detach()
    expected = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))
    assert torch.allclose(result.scores, score.detach(), rtol=1e-5, atol=1e-4)
    assert torch.allclose(result.layer_maps[LAYER], expected, rtol=1e-4, atol=1e-6)
    assert not result.degenerate.any()


def test_the_default_region_is_the_predicted_one(seg_model) -> None:
    x, k = _x(seed=2), 1
    with torch.no_grad():
        predicted = (seg_model(x)["out"].argmax(1) == k).float()  # [B, H, W]
    cam = xcam.GradCAM(seg_model, LAYER, output="out")
    found = cam(x, targets=xcam.RegionTarget(k))
    given = cam(x, targets=xcam.RegionTarget(k, predicted))
    assert torch.equal(found.maps, given.maps)
    per_sample = cam(x, targets=[xcam.RegionTarget(k, m) for m in predicted])  # one per sample
    assert torch.allclose(per_sample.maps, found.maps, atol=1e-6)


def test_region_gradcam_matches_pytorch_grad_cam(seg_model) -> None:
    from pytorch_grad_cam import GradCAM as PeerGradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    class Out(torch.nn.Module):  # the peer's tutorial wrapper: the dict's "out" tensor
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)["out"]

    x, k = _x(seed=3), 3
    masks = [_mask(4), _mask(5)]
    ours = xcam.GradCAM(seg_model, LAYER, output="out")(
        x, targets=[xcam.RegionTarget(k, m) for m in masks]
    )
    wrapped = Out(seg_model).eval()
    peer_targets = [SemanticSegmentationTarget(k, m.numpy()) for m in masks]
    with PeerGradCAM(wrapped, [wrapped.model.get_submodule(LAYER)]) as cam:
        theirs = torch.as_tensor(cam(input_tensor=x, targets=peer_targets))
    for i in range(2):
        corr = torch.corrcoef(torch.stack([ours.maps[i].flatten(), theirs[i].flatten()]))[0, 1]
        assert float(corr) >= 0.99


def test_region_targets_say_what_is_wrong(seg_model) -> None:
    cam = xcam.GradCAM(seg_model, LAYER, output="out")
    with pytest.raises(xcam.TargetError, match="category 9 is out of range for 4 classes"):
        cam(_x(1), targets=xcam.RegionTarget(9))
    with pytest.raises(xcam.TargetError, match=r"mask is \(32, 32\).*\(64, 64\)"):
        cam(_x(1), targets=xcam.RegionTarget(1, torch.ones(32, 32)))
    with pytest.raises(xcam.TargetError, match="segmentation output"):
        xcam.RegionTarget(0)(torch.zeros(2, 4))
    without = xcam.GradCAM(seg_model, LAYER)  # the dict output, no output="out"
    with pytest.raises(xcam.TargetError, match="output='out'"):
        without(_x(1), targets=xcam.RegionTarget(1))


def test_segmentation_models_default_to_the_backbone_features(seg_model) -> None:
    assert default_layer(seg_model, _x(1)) == LAYER
    torch.manual_seed(0)
    deeplab = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=K
    ).eval()
    assert default_layer(deeplab, _x(1)) == "backbone.16"
    result = xcam.GradCAM(deeplab, output="out")(_x(1), targets=xcam.RegionTarget(0))
    assert result.layers == ["backbone.16"] and result.maps.shape == (1, SIZE, SIZE)
