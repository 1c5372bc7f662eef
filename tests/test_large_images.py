"""Large images: the outputs made a strip of rows at a time (equal to the in-memory
functions, atomic, bounded memory) and the image loader's conversions made without
full-size copies."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import matplotlib
import numpy as np
import PIL.ImageFile
import pytest
import torch
from PIL import Image

import xcam.images
from xcam import viz
from xcam.viz import (
    attribution_image,
    attribution_into,
    overlay,
    overlay_into,
    resize_attribution,
    resize_map,
    save_png,
    save_resized,
)

ROOT = Path(__file__).resolve().parent.parent

# (map h, w) -> (image H, W): up and down, non-integer factors, H != W, identity, 1x1
SIZES = [
    ((64, 64), (480, 640)),
    ((64, 64), (37, 53)),
    ((16, 16), (1000, 333)),
    ((7, 5), (100, 37)),
    ((13, 9), (301, 499)),
    ((64, 64), (64, 64)),
    ((64, 64), (64, 200)),
    ((64, 64), (3, 2)),
    ((8, 8), (40, 40)),
    ((1, 1), (50, 70)),
]


def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _smooth_map(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A map like Grad-CAM's: smooth, in [0, 1], with its min at 0 and max at 1."""
    g = torch.Generator().manual_seed(seed)
    m = torch.nn.functional.interpolate(
        torch.rand(1, 1, 4, 4, generator=g), size=(h, w), mode="bicubic", align_corners=False
    )[0, 0]
    m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else torch.zeros_like(m)
    return m.numpy().astype(np.float32)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im).astype(np.int16)


def _diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def _assert_overlay_close(got, expected, alpha: float, colormap: str) -> None:
    """Within 1 of ``overlay``'s pixels, except where the map, an ulp or two off
    ``F.interpolate``'s, falls in the next colormap entry: a few pixels in a million, each
    off by at most ``alpha`` times the colormap's largest step between entries."""
    step = np.abs(np.diff(viz._colormap_table(colormap).astype(np.int16), axis=0)).max()
    d = np.abs(np.asarray(got, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    assert d.max() <= int(np.ceil(alpha * step)) + 1
    assert (d.max(axis=2) > 1).mean() <= 1e-4


@pytest.fixture(params=[None, 1, 7], ids=["default", "1row", "7rows"])
def strip_rows(request, monkeypatch):
    """Strips of the default height (one strip for these sizes), 1 row, or 7 rows."""
    if request.param is not None:
        real = viz._resized_strips

        def strips(x, size):
            monkeypatch.setattr(viz, "_STRIP_PIXELS", request.param * size[1])
            return real(x, size)

        monkeypatch.setattr(viz, "_resized_strips", strips)
    return request.param


# -- equal to the in-memory functions ------------------------------------------------------


@pytest.mark.parametrize(("small", "size"), SIZES)
def test_heatmap_equals_resize_map_and_overlay(tmp_path, small, size, strip_rows) -> None:
    rng = np.random.default_rng(1)
    for cam in (_smooth_map(*small), rng.random(small, dtype=np.float32)):
        ref = resize_map(cam, size)
        npy = save_resized(torch.from_numpy(cam), size, tmp_path / "h.npy")
        got = np.load(npy)
        assert got.dtype == np.float32 and got.shape == size
        assert np.abs(got - ref).max() <= 1e-6
        for alpha, colormap in ((0.5, "jet"), (0.3, "viridis")):
            img = _image(*size)
            expected = overlay(img, cam, alpha=alpha, colormap=colormap)
            same_map = overlay(img, got, alpha=alpha, colormap=colormap)  # the .npy's values
            assert overlay_into(img, cam, alpha, colormap) is img  # drawn into it
            _assert_overlay_close(img, expected, alpha, colormap)
            assert _diff(img, same_map) == 0
            save_png(img, tmp_path / "h.png")
            assert _diff(_png(tmp_path / "h.png"), img) == 0
    # the .npy is what np.save writes, header included
    buf = io.BytesIO()
    np.save(buf, ref)
    assert npy.read_bytes()[:128] == buf.getvalue()[:128]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.npy", "h.png"]


@pytest.mark.parametrize(("small", "size"), SIZES)
@pytest.mark.parametrize("channels", [3, 1, 4])
def test_attribution_equals_resize_attribution_and_attribution_image(
    tmp_path, small, size, channels, strip_rows
) -> None:
    rng = np.random.default_rng(2)
    attr = rng.standard_normal((channels, *small)).astype(np.float32)
    ref = resize_attribution(attr, size)
    got = np.load(save_resized(torch.from_numpy(attr), size, tmp_path / "a.npy", clamp=False))
    assert got.dtype == np.float32 and got.shape == (channels, *size)
    # float32 rounding, so relative to the values (these reach 4 or so)
    assert np.abs(got - ref).max() <= 1e-6 * max(1.0, float(np.abs(ref).max()))
    img = _image(*size)
    assert attribution_into(img, torch.from_numpy(attr)) is img
    if small != (1, 1):  # constant, its std float32 noise: both pictures standardise noise
        assert _diff(img, attribution_image(ref)) <= 1


def test_two_dimensional_and_constant(tmp_path) -> None:
    attr = torch.rand(10, 12)
    assert np.load(save_resized(attr, (30, 20), tmp_path / "a.npy", clamp=False)).shape == (30, 20)
    img = attribution_into(_image(30, 20), attr)  # [h, w]: one grey channel
    assert _diff(img, attribution_image(resize_attribution(attr, (30, 20)))) <= 1
    # constant: plain grey, whatever the rounding of its mean
    const = torch.full((1, 300, 200), 0.1)
    assert (np.asarray(attribution_into(_image(300, 200), const)) == 128).all()
    assert (np.asarray(attribution_image(const)) == 128).all()


def test_overlay_and_colorize_unchanged() -> None:
    """The lookup tables give what matplotlib's colormap and the float32 blend gave."""
    img = _image(40, 60)
    cam = np.random.default_rng(3).random((40, 60), dtype=np.float32)
    cam[0, :4] = [0.0, 1.0, 0.5, 255.5 / 256]
    for colormap, alpha in (("jet", 0.5), ("viridis", 0.25), ("tab10", 0.7)):
        heat = (matplotlib.colormaps[colormap](cam)[..., :3] * 255.0 + 0.5).astype(np.uint8)
        assert np.array_equal(viz.colorize(cam, colormap), heat)
        mixed = (1 - alpha) * np.asarray(img, dtype=np.float32) + alpha * heat.astype(np.float32)
        expected = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
        assert np.array_equal(np.asarray(overlay(img, cam, alpha, colormap)), expected)
        assert np.array_equal(np.asarray(overlay_into(img.copy(), cam, alpha, colormap)), expected)


def test_bad_inputs_rejected_before_any_change(tmp_path) -> None:
    img = _image(20, 30)
    before = np.asarray(img).copy()
    with pytest.raises(ValueError, match="NaN"):
        overlay_into(img, np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="2-D"):
        overlay_into(img, np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="alpha"):
        overlay_into(img, np.zeros((4, 4)), alpha=2)
    with pytest.raises(ValueError, match="unknown colormap"):
        overlay_into(img, np.zeros((4, 4)), colormap="x")
    with pytest.raises(ValueError, match="RGB"):
        overlay_into(img.convert("L"), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="infinite"):
        attribution_into(img, np.full((3, 4, 4), np.inf))
    assert np.array_equal(np.asarray(img), before)
    with pytest.raises(ValueError, match="NaN"):
        save_resized(np.full((4, 4), np.nan), (20, 30), tmp_path / "a.npy")
    with pytest.raises(ValueError, match="positive"):
        save_resized(np.zeros((3, 4, 4)), (0, 30), tmp_path / "a.npy")
    assert list(tmp_path.iterdir()) == []


# -- atomic: an error leaves nothing half-written ------------------------------------------


def test_error_midway_leaves_old_files_and_no_temp(tmp_path, monkeypatch) -> None:
    npy, png = tmp_path / "x.npy", tmp_path / "x.png"
    npy.write_bytes(b"old npy")
    png.write_bytes(b"old png")
    real = viz._resized_strips

    def failing(x, size):  # strips of 4 rows, the third one fails
        monkeypatch.setattr(viz, "_STRIP_PIXELS", 4 * size[1])
        for i, strip in enumerate(real(x, size)):
            if i == 2:
                raise RuntimeError("disk on fire")
            yield strip

    def failing_encoder(im, fp, *args, **kwargs):  # Pillow's encoder, after some bytes
        fp.write(b"\0" * 1000)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(viz, "_resized_strips", failing)
    for attr in (_smooth_map(8, 8), torch.randn(3, 8, 8)):
        with pytest.raises(RuntimeError, match="disk on fire"):
            save_resized(attr, (50, 40), npy, clamp=False)
    monkeypatch.setattr(PIL.ImageFile, "_save", failing_encoder)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_png(_image(50, 40), png)
    assert npy.read_bytes() == b"old npy" and png.read_bytes() == b"old png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "x.png"]
    # and a fresh folder gets no file at all
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        save_resized(_smooth_map(8, 8), (50, 40), fresh / "x.npy")
    with pytest.raises(RuntimeError):
        save_png(_image(50, 40), fresh / "x.png")
    assert list(fresh.iterdir()) == []


# -- the loader: no full-size copies, same pixels ------------------------------------------


def test_load_image_rgb_is_not_copied(tmp_path, monkeypatch) -> None:
    path = tmp_path / "rgb.png"
    _image(30, 40).save(path)
    copies = []
    real = Image.Image.copy

    def spy(self):
        copies.append(self.size)
        return real(self)

    monkeypatch.setattr(Image.Image, "copy", spy)
    im = xcam.images.load_image(path)
    assert im.mode == "RGB" and copies == []
    assert np.array_equal(np.asarray(im), np.asarray(_image(30, 40)))


def test_load_image_strips_equal_whole_conversions(tmp_path, monkeypatch) -> None:
    """Alpha compositing and deep images, converted a few rows at a time, give the pixels
    of the whole-image conversions."""
    monkeypatch.setattr(xcam.images, "_STRIP_PIXELS", 50)  # many strips of one or two rows
    rng = np.random.default_rng(4)
    rgba = Image.fromarray(rng.integers(0, 256, (23, 31, 4), dtype=np.uint8), "RGBA")
    pal = _image(23, 31).convert("P")
    pal.info["transparency"] = 3
    files = {"rgba.png": rgba, "la.png": rgba.convert("LA"), "p.png": pal}
    for name, im in files.items():
        im.save(tmp_path / name, **({"transparency": 3} if name == "p.png" else {}))
    for name in files:
        with Image.open(tmp_path / name) as src:
            rgba_src = src.convert("RGBA")
            canvas = Image.new("RGBA", rgba_src.size, (10, 200, 30, 255))
            expected = np.asarray(Image.alpha_composite(canvas, rgba_src).convert("RGB"))
        got = np.asarray(xcam.images.load_image(tmp_path / name, background=(10, 200, 30)))
        assert np.array_equal(got, expected), name
    deep = {
        "u16.png": Image.fromarray(rng.integers(0, 65536, (23, 31), dtype=np.uint16)),
        "i32.tif": Image.fromarray(rng.integers(-(2**31), 2**31 - 1, (23, 31)).astype(np.int32)),
        "f.tif": Image.fromarray((rng.standard_normal((23, 31)) * 50).astype(np.float32)),
    }
    for name, im in deep.items():
        im.save(tmp_path / name)
        arr = np.asarray(im).astype(np.float64)
        if name == "u16.png":
            arr = arr / 65535.0
        elif name == "i32.tif":
            arr = (arr - arr.min()) / (2.0**32 - 1)
        else:
            arr = (arr - arr.min()) / (arr.max() - arr.min())
        expected = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        got = np.asarray(xcam.images.load_image(tmp_path / name))
        assert np.array_equal(got[..., 0], expected), name


# -- bounded memory, measured in a subprocess as benchmarks/large_image_memory.py does -----


def _bench():
    path = ROOT / "benchmarks" / "large_image_memory.py"
    spec = importlib.util.spec_from_file_location("large_image_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The pipeline's path: load_image -> preprocess -> method -> save_resized -> overlay_into /
# attribution_into -> save_png. Measured on a 2-core CPU at 4000x3000: heatmap 4.5 bytes a
# source pixel, attribution 5.1; 4 of them are the decoded image itself (Pillow keeps RGB in
# 4 bytes a pixel), the attribution's [3, H, 224] float32 height pass 0.7 more, the rest a
# few MB of strips. In memory: 45 and 64 (benchmarks/results/large_image_memory.md).
BUDGET = {"heatmap": 8.0, "attribution": 6.0}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["heatmap", "attribution"])
def test_peak_memory_per_source_pixel(tmp_path, kind) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("peak RSS is read from /proc (Linux only)")
    bench = _bench()
    if reason := bench.can_reset_peak():
        pytest.skip(reason)
    image = bench.make_image(tmp_path / "big.png", 4000, 3000)
    warm = bench.make_image(tmp_path / "warm.png", 320, 240, seed=1)
    row = bench.run_arm(kind, "new", image, warm, tmp_path / "out")
    assert row["pixels"] == 4000 * 3000
    assert row["bytes_per_pixel"] <= BUDGET[kind], row
    npy = np.load(tmp_path / "out" / "big.npy", mmap_mode="r")
    assert npy.shape == ((3000, 4000) if kind == "heatmap" else (3, 3000, 4000))
