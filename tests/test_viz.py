"""Overlays and grids, written and read back as real PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xcam.viz import colorize, grid, overlay, panel, resize_map, save_png


def _image(h: int = 30, w: int = 50) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_overlay_alpha_extremes_and_size() -> None:
    img = _image()
    cam = torch.linspace(0, 1, 15 * 25).view(15, 25)
    assert np.array_equal(np.asarray(overlay(img, cam, alpha=0.0)), np.asarray(img))
    full = np.asarray(overlay(img, cam, alpha=1.0))
    assert np.array_equal(full, colorize(resize_map(cam, (30, 50))))
    half = overlay(img, cam, alpha=0.5)
    assert half.size == img.size


def test_colormap_ends() -> None:
    rgb = colorize(np.array([[0.0, 1.0]]), "gray")
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(np.zeros((2, 2)), "no-such-map")


def test_bad_maps_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        overlay(_image(), np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="2-D"):
        overlay(_image(), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="alpha"):
        overlay(_image(), np.zeros((4, 4)), alpha=2)


def test_grid_png_roundtrip(tmp_path) -> None:
    cells = [[_image(), _image(20, 20)], [_image()]]
    g = grid(cells, ["a", "b"], ["r1", "r2"], cell_size=64, pad=4)
    path = save_png(g, tmp_path / "sub" / "grid.png")
    with Image.open(path) as back:
        assert back.format == "PNG"
        assert back.size == g.size
        assert back.width == 64 // 2 + 2 * (64 + 4) + 4
    with pytest.raises(ValueError):
        grid([])


def test_panel_layers_side_by_side(tmp_path) -> None:
    imgs = [_image(), _image()]
    maps = {"layer1": torch.rand(2, 8, 8), "layer2": torch.rand(2, 4, 4)}
    p = panel(imgs, maps, cell_size=48)
    assert p.width == 3 * (48 + 4) + 4  # image + two overlays, no row labels
    with pytest.raises(ValueError, match="3 maps for 2 images"):
        panel(imgs, {"x": torch.rand(3, 4, 4)})


def test_method_layer_grid_resnet18_layers_by_methods(resnet18) -> None:
    """The layer1..layer4 x methods view of a resnet18: one cell per (method, layer)."""
    from PIL import Image

    import xcam
    from xcam.viz import method_layer_grid

    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    img = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).astype("uint8"))
    layers = ["layer1", "layer2", "layer3", "layer4"]
    maps = {
        name: {layer: xcam.get_method(name)(resnet18, layer)(x).maps[0] for layer in layers}
        for name in ("gradcam", "layercam", "hirescam")
    }
    picture = method_layer_grid(img, maps, cell_size=64)
    # a column per layer and a row per method, with label margins (64 // 2 left, 64 // 7 top)
    assert picture.size == (32 + 4 * 68 + 4, 9 + 3 * 68 + 4)
    cell = np.asarray(picture)[9 + 4 : 9 + 4 + 64, 32 + 4 : 32 + 4 + 64]
    assert cell.std() > 0  # an overlay, not a blank cell
    with pytest.raises(ValueError, match="layer4"):
        method_layer_grid(img, {"a": {"layer4": maps["gradcam"]["layer4"]}, "b": {}})
