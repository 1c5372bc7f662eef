"""The image loader: orientation, modes, bit depths, transparency, bombs, broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xcam.core.errors import InputError
from xcam.images import load_image


def test_exif_orientation_is_applied_and_sizes_never_swap(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high; left half red
    arr[:, :20] = (255, 0, 0)
    plain = tmp_path / "plain.jpg"
    Image.fromarray(arr).save(plain, quality=95)
    assert load_image(plain).size == (40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(rotated, quality=95, exif=exif)
    im = load_image(rotated)
    assert im.size == (20, 40)  # upright: 20 wide, 40 high
    top = np.asarray(im)[:5].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[1] < 60  # the red half is now on top


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr", "RGB"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    src = Image.fromarray(np.full((8, 12, 3), (200, 100, 50), np.uint8)).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "YCbCr") else "x.png")
    src.save(path)
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (12, 8)
    expected = np.asarray(src.convert("RGB"))
    assert np.abs(np.asarray(im).astype(int) - expected).max() <= 1


def test_transparency_is_composited_on_the_documented_background(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top opaque red, bottom fully transparent
    rgba[2:, :, 3] = 0
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = np.asarray(load_image(path))
    assert (out[0, 0] == (255, 0, 0)).all() and (out[3, 3] == (255, 255, 255)).all()
    black = np.asarray(load_image(path, background=(0, 0, 0)))
    assert (black[3, 3] == (0, 0, 0)).all()
    la = tmp_path / "la.png"
    Image.fromarray(rgba, "RGBA").convert("LA").save(la)
    assert (np.asarray(load_image(la))[3, 3] == (255, 255, 255)).all()
    pal = tmp_path / "p.png"
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    p.save(pal, transparency=0)
    out = np.asarray(load_image(pal))
    assert (out[0, 0] == (255, 255, 255)).all() and (out[0, 1] == (10, 20, 30)).all()


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 16384, 32768, 65535]], np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    out = np.asarray(load_image(path))[0, :, 0]
    assert out.tolist() == [0, 64, 128, 255]


def test_float_images(tmp_path: Path) -> None:
    unit = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F").save(unit)
    assert np.asarray(load_image(unit))[0, :, 0].tolist() == [0, 128, 255]
    wide = tmp_path / "w.tif"
    Image.fromarray(np.array([[-10.0, 0.0, 10.0]], np.float32), "F").save(wide)
    assert np.asarray(load_image(wide))[0, :, 0].tolist() == [0, 128, 255]


def test_decompression_bomb_cap(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (30, 20)).save(path)
    with pytest.raises(InputError, match="600 pixels is above the limit of 100"):
        load_image(path, max_pixels=100)
    assert load_image(path, max_pixels=None).size == (30, 20)


def test_broken_files_are_named_with_the_reason(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cases = {
        truncated: "not a readable image",
        empty: "empty file",
        text: "not a readable image",
        tmp_path: "is a folder",
        tmp_path / "missing.png": "no such file",
    }
    for path, reason in cases.items():
        with pytest.raises(InputError, match=reason) as info:
            load_image(path)
        assert str(path) in str(info.value)
