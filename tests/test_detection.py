"""Detection targets (issue 17, item 5), eager: torchvision's detectors explained one box at a
time — the box-score target (the class score of the detection that overlaps the box most,
plus that overlap) at a backbone or FPN layer — against a hand-written reference and
pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``; ``targets="boxes"`` explains every box.

The detectors are seeded at random, small (128² inside, 5 classes, 4 boxes per image),
their batch norms calibrated on random images and their class scores biased towards class
1, so that they detect boxes with high scores.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.ops import box_iou as tv_box_iou

import xcam
from xcam.core.errors import TargetError
from xcam.core.layers import default_layer
from xcam.core.targets import box_iou

SIZE = 128
LAYERS = {
    "fasterrcnn_mobilenet_v3_large_fpn": "backbone.body.16",
    "retinanet_resnet50_fpn": "backbone.body.layer4",
}
# an FPN level the top boxes come through (at the others their gradient is 0 here)
FPN = {
    "fasterrcnn_mobilenet_v3_large_fpn": "backbone.fpn.layer_blocks.0",
    "retinanet_resnet50_fpn": "backbone.fpn.layer_blocks.1",
}


def _detector(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = {"weights": None, "weights_backbone": None, "num_classes": 5}
    kw |= {"min_size": SIZE, "max_size": SIZE}
    kw |= {"box_detections_per_img" if "rcnn" in name else "detections_per_img": 4}
    model = torchvision.models.get_model(name, **kw).eval()
    if "mobilenet" in name:
        _calibrate(model.backbone.body)
    with torch.no_grad():
        if name.startswith("fasterrcnn"):  # its calibrated features would saturate softmax
            model.roi_heads.box_predictor.cls_score.weight *= 0.01
            model.roi_heads.box_predictor.cls_score.bias[1] = 3.0
        else:  # RetinaNet's logits: [anchors x classes] channels, sigmoid scores
            model.head.classification_head.cls_logits.bias[1::5] = 3.0
    return model


def _calibrate(body: torch.nn.Module) -> None:
    """Batch norms' statistics set from a few random images (a random MobileNet's features
    otherwise fade to ~1e-8 by its last stage, and every gradient with them)."""
    for m in body.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration batches
    body.train()
    with torch.no_grad():
        body(torch.rand(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(99)))
    body.eval()


@pytest.fixture(scope="module", params=list(LAYERS))
def detector(request):
    return request.param, _detector(request.param)


def _x(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def test_box_iou_is_torchvisions() -> None:
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(7, 2, generator=g) * 50
    a = torch.cat([lo, lo + 1 + torch.rand(7, 2, generator=g) * 40], 1)
    b = torch.cat([a[:3] + 5, torch.tensor([[200.0, 200, 210, 210]])])
    torch.testing.assert_close(box_iou(a, b), tv_box_iou(a, b))


def test_the_box_score_is_overlap_plus_score_of_the_best_overlap() -> None:
    """By hand: the detection that overlaps most counts, only if of the box's class and
    above the threshold; its score's gradient is 1, its box's is the IoU's."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 8]], requires_grad=True)
    scores = torch.tensor([0.9, 0.6], requires_grad=True)
    out = {"boxes": boxes, "labels": torch.tensor([3, 2]), "scores": scores}
    s = xcam.BoxTarget(3, (0, 0, 10, 9))(out)  # IoU 0.9 with box 0, 8/9 with box 1
    assert abs(float(s.detach()) - (0.9 + 0.9)) < 1e-6
    (gs,) = torch.autograd.grad(s, scores)
    assert gs.tolist() == [1.0, 0.0]
    assert float(xcam.BoxTarget(2, (0, 0, 10, 9))(out).detach()) == 0.0  # best is class 3
    assert float(xcam.BoxTarget(3, (0, 0, 10, 9), iou_threshold=0.95)(out).detach()) == 0.0
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    assert float(xcam.BoxTarget(1, (0, 0, 1, 1))(empty | {"scores": torch.zeros(0)})) == 0.0
    assert repr(xcam.BoxTarget(3, [0, 0, 10.5, 9])) == "BoxTarget(3, (0, 0, 10.5, 9))"


@pytest.mark.parametrize("box", [(0, 0, -1, 5), (1, 2, 3), (0, 0, float("nan"), 4), "abc"])
def test_a_bad_box_is_named(box) -> None:
    with pytest.raises(TargetError, match=r"\(x1, y1, x2, y2\)"):
        xcam.BoxTarget(1, box)


def test_a_box_target_on_a_classifier_says_what_it_needs(resnet18) -> None:
    with pytest.raises(TargetError, match="'boxes' \\[N, 4\\], 'labels' \\[N\\] and 'scores'"):
        xcam.GradCAM(resnet18, "layer4")(
            torch.rand(1, 3, 64, 64), [xcam.BoxTarget(1, (0, 0, 9, 9))]
        )
    with pytest.raises(TargetError, match="'boxes'"):
        xcam.GradCAM(resnet18, "layer4")(torch.rand(1, 3, 64, 64), "boxes")


def _hand_gradcam(model, layer: str, x: torch.Tensor, targets) -> torch.Tensor:
    """Grad-CAM of a batch, ``targets[i]`` scoring image ``i``, by a hook and autograd alone."""
    seen = {}
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    try:
        out = model(x)
    finally:
        h.remove()
    score = sum(t(o) for t, o in zip(targets, out, strict=True))
    (g,) = torch.autograd.grad(score, seen["a"])
    a = seen["a"].detach()
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))
    cam = torch.nn.functional.interpolate(cam[:, None], x.shape[-2:], mode="bilinear")[:, 0]
    lo, hi = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    return (cam - lo) / (hi - lo)


def test_every_detected_box_is_explained_by_its_own_target(detector) -> None:
    """``targets="boxes"``: a row per box scored ≥ 0.5 (best first), ``samples`` says whose,
    ``targets`` the BoxTarget of each; the maps are those of a hand-written Grad-CAM of each
    row's image for its box. (Rows are compared on the same batch: a random detector's near
    ties among boxes can order differently at another batch size.)"""
    name, model = detector
    layer = LAYERS[name]
    x = _x(2)
    with torch.no_grad():
        dets = model(x)
    want = [(i, float(s)) for i, d in enumerate(dets) for s in d["scores"].sort(descending=True)[0]]
    want = [(i, s) for i, s in want if s >= 0.5]
    assert len(want) >= 2, "the biased detector should find boxes"
    res = xcam.GradCAM(model, layer)(x, "boxes")
    assert res.samples.tolist() == [i for i, _ in want]
    assert res.maps.shape == (len(want), SIZE, SIZE)
    assert all(isinstance(t, xcam.BoxTarget) for t in res.targets)
    for (i, s), t in zip(want, res.targets, strict=True):
        d = dets[i]
        j = int(box_iou(torch.tensor([t.box]), d["boxes"])[0].argmax())
        assert int(d["labels"][j]) == t.label and abs(float(d["scores"][j]) - s) < 1e-6
    assert not bool(res.degenerate.any())
    xs = x[res.samples]
    hand = _hand_gradcam(model, layer, xs, res.targets)
    assert float((hand - res.maps).abs().max()) < 1e-3
    again = xcam.GradCAM(model, layer)(xs, list(res.targets))
    assert float((again.maps - res.maps).abs().max()) < 1e-5


def test_box_maps_match_pytorch_grad_cam(detector) -> None:
    """The peer's box-score target and its GradCAM on the same layer (the backbone's last
    stage, an FPN level): correlation ≥ 0.99 for each of the top boxes."""
    from pytorch_grad_cam import GradCAM as PeerGradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    name, model = detector
    x = _x(1, seed=3)
    with torch.no_grad():
        d = model(x)[0]
    for layer in (LAYERS[name], FPN[name]):
        compared = 0
        for j in range(min(3, len(d["scores"]))):
            box, label = d["boxes"][j], int(d["labels"][j])
            ours = xcam.GradCAM(model, layer)(x, [xcam.BoxTarget(label, box)])
            with PeerGradCAM(model, [model.get_submodule(layer)]) as peer:
                theirs = torch.from_numpy(peer(x, [FasterRCNNBoxScoreTarget([label], [box])]))
            if bool(ours.degenerate[0]):  # no evidence at this level: a constant map for both
                assert float(theirs.max() - theirs.min()) < 1e-6 and float(ours.maps.max()) == 0
                continue
            corr = _corr(ours.maps[0], theirs[0])
            assert corr >= 0.99, (name, layer, j, corr)
            compared += 1
        assert compared >= 1, (name, layer)


def test_a_detector_defaults_to_its_backbones_last_stage(detector) -> None:
    """``layers=None`` on a detector: the body's last stage, before the FPN (the layers after
    it see proposals or anchors, not the batch)."""
    name, model = detector
    assert default_layer(model, _x(1)) == LAYERS[name]
    with pytest.raises(TargetError, match='targets="boxes"'):
        xcam.GradCAM(model)(_x(1), 3)


def test_a_box_drawn_on_its_map(tmp_path) -> None:
    from PIL import Image

    from xcam.viz import draw_box, overlay

    img = Image.new("RGB", (64, 32), "black")
    shown = draw_box(overlay(img, torch.zeros(16, 16)), (8, 4, 24, 12), "cat 0.9", size=(16, 32))
    # the box's corner, scaled 2x into the 64x32 picture; its inside keeps the map's colour
    assert shown.getpixel((16, 8)) == (255, 255, 255) and shown.getpixel((30, 16)) != (
        255,
        255,
        255,
    )
    assert img.getpixel((16, 8)) == (0, 0, 0)  # the image given is untouched


DET_SOURCE = """
import torch, torchvision


def retinanet():
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        "retinanet_resnet50_fpn", weights=None, weights_backbone=None, num_classes=5,
        min_size=128, max_size=128, detections_per_img=3,
    ).eval()
    with torch.no_grad():
        model.head.classification_head.cls_logits.bias[1::5] = 3.0
    return model
"""


def test_the_cli_explains_every_box_and_draws_it(runner, tmp_path) -> None:
    """``xcam explain DETECTOR imgs --class boxes``: a map and an overlay per box found, the
    box drawn on the overlay; predictions.json lists the boxes in the image's pixels; a
    second run finds the job done; a class index on a detector, or boxes on a classifier,
    is bad usage named before any work."""
    import json

    import numpy as np
    from conftest import importable
    from PIL import Image

    from xcam.cli import main

    noise = torch.rand(SIZE * 2, SIZE * 2, 3, generator=torch.Generator().manual_seed(5))
    Image.fromarray((noise * 255).byte().numpy()).save(tmp_path / "a.png")
    base = ["explain", "det_models:retinanet", str(tmp_path / "a.png"), "--input-size", "128"]
    out = tmp_path / "o"
    with importable(tmp_path, "det_models", DET_SOURCE):
        res = runner.invoke(main, [*base, "--class", "boxes", "--out", str(out)])
        assert res.exit_code == 0, res.output
        row = json.loads((out / "predictions.json").read_text())["images"][0]
        assert row["target"] == "boxes" and len(row["boxes"]) == 3
        for n, box in enumerate(row["boxes"]):
            assert box["overlay"] == f"a_box{n}_{box['class']}_gradcam.png"
            assert np.load(out / box["map"]).shape == (SIZE * 2, SIZE * 2)  # the image's size
            x1, y1, x2, y2 = box["box"]  # in the image's pixels: the input was 128, it is 256
            assert 0 <= x1 < x2 <= SIZE * 2 and 0 <= y1 < y2 <= SIZE * 2
            shown = Image.open(out / box["overlay"]).convert("RGB")
            assert shown.getpixel((int(x1) + 1, int((y1 + y2) / 2))) == (255, 255, 255)
        again = runner.invoke(main, [*base, "--class", "boxes", "--out", str(out)])
        assert again.exit_code == 0 and "1 of 1 image(s) already explained" in again.output
        wrong = runner.invoke(main, [*base, "--class", "1", "--out", str(tmp_path / "o2")])
        assert wrong.exit_code == 2 and "--class boxes" in wrong.output
    demo = ["explain", "demo", str(tmp_path / "a.png"), "--class", "boxes", "--out", str(out)]
    res = runner.invoke(main, demo)
    assert res.exit_code == 2 and "boxes is for detectors" in res.output
