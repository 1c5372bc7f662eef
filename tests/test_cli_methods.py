"""Every registered method from the command line: `xcam explain --method NAME`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import xcam
from xcam.cli import main
from xcam.demo import sample_images


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("imgs")
    for p in sample_images()[:2]:
        shutil.copy(p, folder / p.name)
    return folder


def test_explain_help_lists_every_method() -> None:
    res = CliRunner().invoke(main, ["explain", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    for name in xcam.list_methods():
        assert name in text, name
    assert "--aug-smooth" in text and "--eigen-smooth" in text


@pytest.mark.parametrize("name", xcam.list_methods())
def test_every_method_end_to_end(images: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["explain", "demo", str(images), "-m", name, "-o", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "predictions.json").read_text())
    assert report["method"] == name and len(report["images"]) == 2 and not report["errors"]
    for item in report["images"]:
        src = Image.open(item["image"])
        png = Image.open(out / item["overlay"])
        arr = np.load(out / item["map"])
        assert png.size == src.size
        assert np.isfinite(arr).all()
        if name.startswith("guided"):
            assert item["kind"] == "attribution" and arr.shape == (3, src.height, src.width)
        else:
            assert item["kind"] == "heatmap" and arr.shape == (src.height, src.width)
            assert arr.min() >= 0 and arr.max() <= 1


def test_smoothing_flags(images: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["explain", "demo", str(images), "-m", "gradcam"]
    plain = runner.invoke(main, [*base, "-o", str(tmp_path / "a")])
    smooth = runner.invoke(
        main, [*base, "--aug-smooth", "--eigen-smooth", "-o", str(tmp_path / "b")]
    )
    assert plain.exit_code == 0 and smooth.exit_code == 0, smooth.output
    stem = sample_images()[0].stem + "_gradcam.npy"
    a, b = np.load(tmp_path / "a" / stem), np.load(tmp_path / "b" / stem)
    assert a.shape == b.shape and not np.allclose(a, b, atol=1e-3)


def test_method_option_errors(images: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = str(tmp_path / "o")
    res = runner.invoke(main, ["explain", "demo", str(images), "-m", "nosuch", "-o", out])
    assert res.exit_code == 2 and "gradcam++" in res.output  # the available ones are listed
    res = runner.invoke(
        main, ["explain", "demo", str(images), "-m", "fullgrad", "-l", "block3", "-o", out]
    )
    assert res.exit_code == 1 and "no target layer" in res.output
    res = runner.invoke(
        main, ["explain", "demo", str(images), "-m", "guidedbackprop", "--aug-smooth", "-o", out]
    )
    assert res.exit_code == 1 and "aug_smooth" in res.output
    assert "Traceback" not in res.output
