"""xcam.quality: the pointing game and deletion / insertion, against hand computations on a
linear toy model whose class probability is a known function of the pixels."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from xcam.core.errors import InputError, TargetError
from xcam.quality import (
    auc,
    baseline_image,
    deletion_insertion,
    deletion_insertion_curves,
    gaussian_blur,
    pointing_game,
)

ROOT = Path(__file__).resolve().parents[1]


class LinearPixels(nn.Module):
    """logits = [s, 0] with s = sum_cij W_cij x_cij, so p(class 0) = sigmoid(s)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        s = (x * self.weight).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def expected_curves(
    weight: torch.Tensor, x: torch.Tensor, base: torch.Tensor, order: list[int], steps: int
) -> tuple[list[float], list[float], list[float]]:
    """Fractions, deletion and insertion probabilities of class 0 for one [C, H, W] image,
    pixel by pixel in ``order`` (flat row-major indices), computed without xcam."""
    _, h, w = x.shape
    n = h * w
    fractions, deletion, insertion = [], [], []
    for k in range(steps + 1):
        changed = order[: k * n // steps]
        deleted, inserted = x.clone(), base.clone()
        for p in changed:
            r, c = divmod(p, w)
            deleted[:, r, c] = base[:, r, c]
            inserted[:, r, c] = x[:, r, c]
        fractions.append(len(changed) / n)
        deletion.append(1 / (1 + math.exp(-float((weight * deleted).sum()))))
        insertion.append(1 / (1 + math.exp(-float((weight * inserted).sum()))))
    return fractions, deletion, insertion


def trapezoid(xs: list[float], ys: list[float]) -> float:
    return sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))


# --- pointing game -------------------------------------------------------------------------


def test_pointing_game_hand_cases():
    maps = torch.tensor(
        [
            [[0.1, 0.9, 0.2], [0.0, 0.3, 0.4]],  # peak at (0, 1): inside
            [[0.1, 0.9, 0.2], [0.0, 0.3, 0.4]],  # same map, mask elsewhere: miss
            [[0.5, 0.0, 0.5], [0.0, 0.0, 0.0]],  # tie (0, 0) / (0, 2): (0, 2) inside -> hit
            [[0.7, 0.7, 0.7], [0.7, 0.7, 0.7]],  # constant: points nowhere -> miss
            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],  # degenerate zero map -> miss
        ]
    )
    masks = torch.tensor(
        [
            [[0, 1, 0], [0, 0, 0]],
            [[0, 0, 0], [1, 1, 1]],
            [[0, 0, 1], [0, 0, 0]],
            [[1, 1, 1], [1, 1, 1]],
            [[1, 1, 1], [1, 1, 1]],
        ],
        dtype=torch.bool,
    )
    assert pointing_game(maps, masks).tolist() == [True, False, True, False, False]
    # a 0/1 mask of another dtype counts its non-zeros
    assert pointing_game(maps, masks.float()).tolist() == [True, False, True, False, False]


def test_pointing_game_guided_maps_use_absolute_channel_sum():
    # |.| summed over channels: (1, 0) has |−3| + 1 = 4, the largest
    maps = torch.zeros(1, 3, 2, 2)
    maps[0, 0, 0, 0] = 2.0
    maps[0, 1, 1, 0] = -3.0
    maps[0, 2, 1, 0] = 1.0
    inside = torch.zeros(1, 2, 2, dtype=torch.bool)
    inside[0, 1, 0] = True
    assert pointing_game(maps, inside).tolist() == [True]
    assert pointing_game(maps, ~inside).tolist() == [False]


@pytest.mark.parametrize(
    ("maps", "masks"),
    [
        (torch.rand(4, 4), torch.ones(4, 4, dtype=torch.bool)),  # no batch dimension
        (torch.rand(1, 4, 4), torch.ones(1, 4, 5, dtype=torch.bool)),  # size mismatch
        (torch.rand(2, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool)),  # batch mismatch
        (torch.full((1, 2, 2), float("nan")), torch.ones(1, 2, 2, dtype=torch.bool)),
        (torch.ones(1, 2, 2, dtype=torch.bool), torch.ones(1, 2, 2, dtype=torch.bool)),
    ],
)
def test_pointing_game_rejects_bad_inputs(maps, masks):
    with pytest.raises(InputError):
        pointing_game(maps, masks)


# --- AUC ----------------------------------------------------------------------------------


def test_auc_is_the_trapezoidal_rule():
    f = torch.tensor([0.0, 0.25, 0.5, 1.0])
    v = torch.tensor([[1.0, 0.5, 0.25, 0.0], [0.0, 0.0, 1.0, 1.0]])
    # row 0: .25·.75 + .25·.375 + .5·.125 = .34375; row 1: .25·0 + .25·.5 + .5·1 = .625
    assert auc(f, v).tolist() == pytest.approx([0.34375, 0.625])
    assert float(auc(torch.tensor([0.0, 1.0]), torch.tensor([0.3, 0.3]))) == pytest.approx(0.3)


# --- deletion / insertion on the linear toy model -----------------------------------------


def test_curves_by_hand_with_ties_broken_by_index():
    # contributions W·x = [[1, -1], [2, 3]]; the saliency ties (0,0) and (1,0) at 5: the
    # lower row-major index, (0,0), goes first; then (1,1), then (0,1)
    weight = torch.tensor([[[1.0, -1.0], [1.0, 3.0]]])
    x = torch.tensor([[[[1.0, 1.0], [2.0, 1.0]]]])
    maps = torch.tensor([[[5.0, 0.0], [5.0, 1.0]]])
    curves = deletion_insertion_curves(LinearPixels(weight), x, maps, [0], steps=4, baseline=0.0)
    sig = torch.sigmoid
    # deletion logits: 5 -> 4 (−(0,0)) -> 2 (−(1,0)) -> -1 (−(1,1)) -> 0 (−(0,1))
    want_del = sig(torch.tensor([5.0, 4.0, 2.0, -1.0, 0.0]))
    # insertion logits: 0 -> 1 -> 3 -> 6 -> 5
    want_ins = sig(torch.tensor([0.0, 1.0, 3.0, 6.0, 5.0]))
    assert curves.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    torch.testing.assert_close(curves.deletion[0], want_del)
    torch.testing.assert_close(curves.insertion[0], want_ins)
    d, i = deletion_insertion(LinearPixels(weight), x, maps, [0], steps=4, baseline=0.0)
    f = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert float(d[0]) == pytest.approx(trapezoid(f, want_del.tolist()), abs=1e-6)
    assert float(i[0]) == pytest.approx(trapezoid(f, want_ins.tolist()), abs=1e-6)


@pytest.mark.parametrize("baseline", ["mean", 0.5, "blur"])
def test_curves_match_an_independent_computation(baseline):
    # 2x3 pixels, 4 steps: 0, 1, 3, 4, 6 pixels changed (steps need not divide H·W)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 2, 3, generator=g)
    x = torch.randn(2, 3, 2, 3, generator=g)
    maps = torch.rand(2, 2, 3, generator=g)
    model = LinearPixels(weight)
    curves = deletion_insertion_curves(model, x, maps, [0, 0], steps=4, baseline=baseline)
    base = baseline_image(x, baseline)
    for b in range(2):
        order = sorted(range(6), key=lambda p: (-float(maps[b].flatten()[p]), p))
        fr, de, ins = expected_curves(weight, x[b], base[b], order, 4)
        assert curves.fractions.tolist() == pytest.approx(fr)
        assert curves.deletion[b].tolist() == pytest.approx(de, abs=1e-6)
        assert curves.insertion[b].tolist() == pytest.approx(ins, abs=1e-6)
    if baseline == "mean":  # the end of deletion is the per-channel mean image
        torch.testing.assert_close(base[:, :, 0, 0], x.mean(dim=(2, 3)))


def test_true_contributions_beat_reversed_ones():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(1, 8, 8, generator=g)
    x = torch.randn(4, 1, 8, 8, generator=g)
    model = LinearPixels(weight)
    contributions = (weight * x)[:, 0]  # with a zero baseline, what each pixel adds to s
    kw = {"steps": 16, "baseline": 0.0}
    good_del, good_ins = deletion_insertion(model, x, contributions, 0, **kw)
    bad_del, bad_ins = deletion_insertion(model, x, -contributions, 0, **kw)
    assert bool((good_del < bad_del).all())
    assert bool((good_ins > bad_ins).all())
    assert bool(((good_del >= 0) & (good_ins <= 1)).all())


def test_guided_maps_rank_by_absolute_channel_sum():
    g = torch.Generator().manual_seed(2)
    model = LinearPixels(torch.randn(3, 4, 4, generator=g))
    x = torch.randn(2, 3, 4, 4, generator=g)
    guided = torch.randn(2, 3, 4, 4, generator=g)
    a = deletion_insertion(model, x, guided, [0, 1], steps=4)
    b = deletion_insertion(model, x, guided.abs().sum(1), [0, 1], steps=4)
    torch.testing.assert_close(a, b)


def test_batching_targets_and_model_state():
    g = torch.Generator().manual_seed(3)
    model = LinearPixels(torch.randn(1, 4, 4, generator=g)).train()
    x = torch.randn(3, 1, 4, 4, generator=g)
    maps = torch.rand(3, 4, 4, generator=g)
    one = deletion_insertion_curves(model, x, maps, [0, 1, 0], steps=5, batch_size=1)
    big = deletion_insertion_curves(model, x, maps, [0, 1, 0], steps=5, batch_size=1000)
    torch.testing.assert_close(one.deletion, big.deletion)
    torch.testing.assert_close(one.insertion, big.insertion)
    # class 1 has probability 1 - p(class 0)
    as_zero = deletion_insertion_curves(model, x[1:2], maps[1:2], [0], steps=5)
    torch.testing.assert_close(one.deletion[1], 1 - as_zero.deletion[0])
    # None: the top-1 class of the unmodified input
    top = model(x).argmax(1)
    model.modes.clear()
    curves = deletion_insertion_curves(model, x, maps, None, steps=2)
    assert curves.targets.tolist() == top.tolist()
    assert (
        model.modes and not any(model.modes) and model.training
    )  # ran in eval mode, restored after


def test_single_logit_head_uses_signed_sigmoid():
    class OneLogit(nn.Module):
        def forward(self, x):
            return x.flatten(1).sum(1, keepdim=True)

    x = torch.tensor([[[[1.0, 2.0]]]])
    maps = torch.tensor([[[0.0, 1.0]]])
    pos = deletion_insertion_curves(OneLogit(), x, maps, [1], steps=2, baseline=0.0)
    neg = deletion_insertion_curves(OneLogit(), x, maps, [0], steps=2, baseline=0.0)
    torch.testing.assert_close(pos.deletion[0], torch.sigmoid(torch.tensor([3.0, 1.0, 0.0])))
    torch.testing.assert_close(neg.deletion[0], torch.sigmoid(torch.tensor([-3.0, -1.0, 0.0])))


def test_blur_keeps_constants_and_smooths():
    flat = torch.full((1, 3, 9, 9), 0.25)
    torch.testing.assert_close(gaussian_blur(flat, 3.0), flat)
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1.0
    blurred = gaussian_blur(spike, 1.0)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(blurred.max()) < 0.2 and float(blurred[0, 0, 4, 4]) == float(blurred.max())


@pytest.mark.parametrize(
    ("x", "maps", "kwargs", "error"),
    [
        (torch.rand(1, 4, 4), torch.rand(1, 4, 4), {}, InputError),  # x without batch
        (torch.rand(1, 1, 4, 4), torch.rand(1, 2, 2), {}, InputError),  # map not upsampled
        (torch.rand(2, 1, 4, 4), torch.rand(1, 4, 4), {}, InputError),  # batch mismatch
        (torch.rand(1, 1, 4, 4), torch.rand(4, 4), {}, InputError),  # map without batch
        (torch.rand(1, 1, 4, 4), torch.rand(1, 1, 1, 4, 4), {}, InputError),  # 5-D map
        (torch.rand(1, 1, 4, 4), torch.rand(1, 4, 4), {"steps": 0}, InputError),
        (torch.rand(1, 1, 4, 4), torch.rand(1, 4, 4), {"batch_size": 0}, InputError),
        (torch.rand(1, 1, 4, 4), torch.rand(1, 4, 4), {"baseline": "zeros"}, InputError),
        (torch.rand(1, 1, 4, 4), torch.rand(1, 4, 4), {"baseline": torch.ones(2, 4)}, InputError),
        (torch.rand(1, 1, 4, 4), torch.rand(1, 4, 4), {"targets": 5}, TargetError),
        (torch.rand(1, 1, 4, 4), torch.rand(1, 4, 4), {"targets": lambda z: z[:, 0]}, TargetError),
    ],
)
def test_deletion_insertion_rejects_bad_inputs(x, maps, kwargs, error):
    model = LinearPixels(torch.ones(1, 4, 4))
    targets = kwargs.pop("targets", 0)
    with pytest.raises(error):
        deletion_insertion(model, x, maps, targets, **kwargs)


# --- the benchmark script -----------------------------------------------------------------


def test_quality_benchmark_runs(tmp_path):
    out = tmp_path / "quality"
    cmd = [sys.executable, "benchmarks/quality.py", "--images", "4", "--steps", "4"]
    cmd += ["--methods", "gradcam", "eigencam", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.with_suffix(".json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == ["gradcam", "eigencam", "random map", "centre Gaussian"]
    for row in rows.values():
        assert row["images"] == 4
        assert 0.0 <= row["pointing_game"] <= 1.0
        assert 0.0 <= row["deletion_auc"] <= 1.0 and 0.0 <= row["insertion_auc"] <= 1.0
    assert rows["gradcam"]["ms_per_image"] > 0 and rows["random map"]["ms_per_image"] is None
    assert data["env"]["images"] == 4 and data["env"]["steps"] == 4
    md = out.with_suffix(".md").read_text()
    assert "| gradcam |" in md and "python benchmarks/quality.py --images 4" in md


def test_module_example_runs():
    import doctest

    import xcam.quality

    assert doctest.testmod(xcam.quality, verbose=False).failed == 0
