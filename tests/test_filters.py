"""Filter views: kernel grids, feature maps, activation maximisation, ``xcam filters``."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_same_snapshot, snapshot
from PIL import Image

from xcam.cli import main
from xcam.core.errors import InputError, LayerNotFoundError, LayerTypeError, XCamError
from xcam.demo import MEAN, STD, sample_images
from xcam.filters import (
    activation_maximisation,
    feature_map_grid,
    feature_maps,
    kernel_grid,
    maximisation_grid,
)
from xcam.viz import colorize

M = torch.tensor(MEAN).view(1, 3, 1, 1)
S = torch.tensor(STD).view(1, 3, 1, 1)


@pytest.fixture()
def model(demo_model):
    return copy.deepcopy(demo_model)  # tests may set weights or flags


def _x(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- kernels


def test_kernel_grid_size_and_hand_set_colours(model) -> None:
    conv = model.block1[0]  # 16 filters, 3x3, RGB input
    with torch.no_grad():
        conv.weight[0] = torch.stack(
            [torch.full((3, 3), 2.0), torch.zeros(3, 3), -torch.ones(3, 3)]
        )
        conv.weight[1].zero_()
        conv.weight[1, 1, 0, 2] = 0.5  # one green pixel at the top right, the rest 0
    img = kernel_grid(model, "block1.0", cell_size=48, pad=2)
    # 16 filters -> 4 x 4 cells of 3 * 16 = 48 px, 2 px gaps
    assert img.size == (4 * 48 + 5 * 2, 4 * 48 + 5 * 2)
    arr = np.asarray(img)
    # filter 0: R = +max -> 255, G = 0 -> mid-grey 128, B = -max/2 -> 64
    cell0 = arr[2 : 2 + 48, 2 : 2 + 48]
    assert (cell0 == [255, 128, 64]).all()
    # filter 1: every pixel mid-grey except its top-right 16x16 block, where G is 255
    cell1 = arr[2 : 2 + 48, 52 : 52 + 48].astype(int)
    block = cell1[:16, 32:]
    assert (block == [128, 255, 128]).all()
    rest = cell1.copy()
    rest[:16, 32:] = 128
    assert (rest == 128).all()
    # the gaps are the background
    assert (arr[:2] == 40).all() and (arr[:, 50:52] == 40).all()


def test_kernel_grid_layer_scale_and_max_filters(model) -> None:
    with torch.no_grad():
        model.block1[0].weight[1] *= 0.0
    img = np.asarray(kernel_grid(model, "block1.0", max_filters=4, scale="layer"))
    assert img.shape == (2 * 48 + 3 * 2, 2 * 48 + 3 * 2, 3)
    assert (img[2:50, 52:100] == 128).all()  # an all-zero kernel is mid-grey


def test_kernel_grid_deeper_layer_is_a_diverging_map(model) -> None:
    conv = model.block2[0]  # 32 filters over 16 input channels
    with torch.no_grad():
        conv.weight[0] = 1.0  # mean over inputs = +1 everywhere -> the reddest colour
        conv.weight[1] = -1.0  # -> the bluest
    arr = np.asarray(kernel_grid(model, "block2.0", cell_size=30))
    assert arr.shape == (6 * 30 + 7 * 2, 6 * 30 + 7 * 2, 3)  # 32 cells -> 6 x 6
    ends = colorize(np.array([[1.0, 0.0, 0.5]]), "RdBu_r")[0]  # the colormap's +, -, 0
    assert (arr[2 : 2 + 30, 2 : 2 + 30] == ends[0]).all()
    assert (arr[2 : 2 + 30, 34 : 34 + 30] == ends[1]).all()
    assert ends[0, 0] > ends[0, 2] and ends[1, 2] > ends[1, 0]  # red and blue


def test_kernel_grid_errors(model) -> None:
    with pytest.raises(LayerNotFoundError, match="closest: block1"):
        kernel_grid(model, "block1.9")
    with pytest.raises(LayerTypeError, match=r"'block1' is a Sequential.*block1\.0, block1\.3"):
        kernel_grid(model, "block1")
    with pytest.raises(XCamError, match="'fc' is a Linear, not a Conv2d"):
        kernel_grid(model, "fc")
    with pytest.raises(InputError, match="max_filters"):
        kernel_grid(model, "block1.0", max_filters=0)


# --------------------------------------------------------------------------- feature maps


def test_feature_maps_equal_the_layer_output(model) -> None:
    x = _x()
    model.train()  # the call must run in eval mode and restore this
    before = snapshot(model)
    got = feature_maps(model, "block1", x)
    assert_same_snapshot(before, snapshot(model))
    model.eval()
    with torch.no_grad():
        want = model.block1(x)
        want2 = model.block2[1](model.block2[0](want))
    assert got.shape == (2, 16, 32, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got2 = feature_maps(model, "block2.1", x, max_channels=5)
    torch.testing.assert_close(got2, want2[:, :5], rtol=0, atol=0)
    assert not got.requires_grad


def test_feature_maps_errors(model) -> None:
    with pytest.raises(LayerNotFoundError):
        feature_maps(model, "nope", _x(1))
    with pytest.raises(InputError, match=r"'fc' outputs a tensor of shape \(1, 4\), not"):
        feature_maps(model, "fc", _x(1))
    with pytest.raises(InputError, match=r"\[B, C, H, W\] tensor"):
        feature_maps(model, "block1", torch.zeros(3, 64, 64))


def test_feature_map_grid_picture(model) -> None:
    x = _x(1)
    pil = Image.new("RGB", (64, 64), (255, 0, 0))
    img = feature_map_grid(model, "block2", x, image=pil, cell_size=64, max_channels=8)
    # 1 input + 8 channels of 16x16 upscaled x4 -> 3 x 3 cells of 64 px
    assert img.size == (3 * 64 + 4 * 2, 3 * 64 + 4 * 2)
    arr = np.asarray(img)
    assert tuple(arr[40, 30]) == (255, 0, 0)  # the input image comes first
    with pytest.raises(InputError, match="one image"):
        feature_map_grid(model, "block2", _x(2))


# --------------------------------------------------------------------------- maximisation


def _channel_means(model, layer: str, images: torch.Tensor, chans: list[int]) -> torch.Tensor:
    acts = feature_maps(model, layer, (images - M) / S)
    return acts[torch.arange(len(chans)), torch.tensor(chans)].mean(dim=(1, 2))


def test_activation_maximisation_raises_the_channel_and_leaves_the_model(model) -> None:
    chans = [0, 5, 7]
    model.train()
    for p in model.block1.parameters():
        p.requires_grad_(False)
    before = snapshot(model)
    kwargs = dict(size=(32, 32), mean=MEAN, std=STD, seed=3)
    start = activation_maximisation(model, "block2", chans, steps=0, **kwargs)
    best = activation_maximisation(model, "block2", chans, steps=15, **kwargs)
    assert_same_snapshot(before, snapshot(model))
    assert all(p.grad is None for p in model.parameters())
    assert best.shape == (3, 3, 32, 32) and not best.requires_grad
    assert best.min() >= 0 and best.max() <= 1
    assert (start - 0.5).abs().mean() < 0.06  # small noise around grey
    model.eval()
    gain = _channel_means(model, "block2", best, chans) - _channel_means(
        model, "block2", start, chans
    )
    assert (gain > 0.1).all(), gain
    # seeded: the same call gives the same images
    again = activation_maximisation(model, "block2", chans, steps=15, **kwargs)
    torch.testing.assert_close(again, best)


def test_activation_maximisation_errors(model) -> None:
    with pytest.raises(InputError, match=r"channel\(s\) 16 out of range: .*16 channels \(0..15\)"):
        activation_maximisation(model, "block1", [0, 16], steps=1, size=(32, 32))
    with pytest.raises(InputError, match="out of range"):
        activation_maximisation(model, "block1", [-1], steps=1, size=(32, 32))
    with pytest.raises(InputError, match="empty"):
        activation_maximisation(model, "block1", [], size=(32, 32))
    with pytest.raises(LayerNotFoundError):
        activation_maximisation(model, "block9", [0], size=(32, 32))
    with pytest.raises(InputError, match="not \\[B, C, H, W\\]"):
        activation_maximisation(model, "fc", [0], steps=1, size=(32, 32))


def test_maximisation_grid_labels_and_size() -> None:
    images = torch.zeros(2, 3, 32, 32)
    images[1] = 1.0
    img = maximisation_grid(images, [4, 9], cell_size=64)
    assert img.size == (2 * 64 + 3 * 2, 64 + 2 * 2)
    arr = np.asarray(img)
    assert tuple(arr[50, 50]) == (0, 0, 0) and tuple(arr[50, 120]) == (255, 255, 255)


# --------------------------------------------------------------------------- CLI


def test_cli_filters_writes_pngs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sample = sample_images()[0]
    res = CliRunner().invoke(
        main,
        [
            *("filters", "demo", "--layer", "block1.0", "--out", str(out)),
            *("--image", str(sample), "--channels", "0,3", "--steps", "5", "--max-filters", "9"),
        ],
    )
    assert res.exit_code == 0, res.output
    names = {
        "kernels_block1.0.png": (3 * 48 + 4 * 2, 3 * 48 + 4 * 2),  # 9 kernels
        f"features_block1.0_{sample.stem}.png": (4 * 64 + 5 * 2, 3 * 64 + 4 * 2),  # 1 + 9
        "maximise_block1.0.png": (2 * 128 + 3 * 2, 128 + 2 * 2),  # 64x64 upscaled x2
    }
    for name, size in names.items():
        assert f"wrote {out / name}" in res.output
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size == size
            assert np.asarray(im.convert("L")).std() > 5  # not a blank picture
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


def test_cli_filters_non_conv_layer_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    sample = str(sample_images()[1])
    res = runner.invoke(main, ["filters", "demo", "-l", "block3", "-o", str(out), "-i", sample])
    assert res.exit_code == 0, res.output
    assert "no kernels" in res.output and "block3.0, block3.3" in res.output
    assert [p.name for p in out.iterdir()] == [f"features_block3_{Path(sample).stem}.png"]

    res = runner.invoke(main, ["filters", "demo", "-l", "block3", "-o", str(out)])
    assert res.exit_code == 1 and "is a Sequential, not a Conv2d" in res.output
    res = runner.invoke(main, ["filters", "demo", "-l", "blok2", "-o", str(out)])
    assert res.exit_code == 1 and "closest: block2" in res.output
    res = runner.invoke(
        main, ["filters", "demo", "-l", "block2.0", "-o", str(out), "--channels", "1,40"]
    )
    assert res.exit_code == 1 and "40 out of range" in res.output
    res = runner.invoke(
        main, ["filters", "demo", "-l", "block2.0", "-o", str(out), "--channels", "a,b"]
    )
    assert res.exit_code == 2 and "--channels" in res.output
    res = runner.invoke(
        main, ["filters", "demo", "-l", "block2.0", "-o", str(out), "-i", str(tmp_path / "x.png")]
    )
    assert res.exit_code == 1 and "no such file" in res.output
    assert (out / "kernels_block2.0.png").is_file()  # the rest of the job was done
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
