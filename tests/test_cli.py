"""The command line, through click's runner and as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from xcam.cli import main
from xcam.demo import sample_images


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def test_help_lists_commands(runner) -> None:
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0
    for cmd in ("layers", "explain", "export", "bench", "demo"):
        assert cmd in res.output
    for cmd in ("layers", "explain", "export", "bench", "demo"):
        assert runner.invoke(main, [cmd, "--help"]).exit_code == 0


def test_python_dash_m() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "xcam", "--version"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "xcam" in out.stdout


def test_layers_demo(runner) -> None:
    res = runner.invoke(main, ["layers", "demo"])
    assert res.exit_code == 0, res.output
    assert "* block3" in res.output and "1x64x16x16" in res.output
    assert "block1.0" in res.output


def test_explain_writes_overlays_maps_and_predictions(runner, images, tmp_path) -> None:
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    res = runner.invoke(
        main,
        [
            "explain",
            "demo",
            str(images),
            "--out",
            str(out),
            "--method",
            "gradcam",
            "--layer",
            "block3",
        ],
    )
    assert res.exit_code == 0, res.output
    payload = json.loads((out / "predictions.json").read_text())
    assert payload["method"] == "gradcam" and payload["layers"] == ["block3"]
    assert len(payload["images"]) == 3 and payload["errors"] == []
    for item in payload["images"]:
        src = Image.open(item["image"])
        with Image.open(out / item["overlay"]) as ov:
            assert ov.format == "PNG" and ov.size == src.size
        cam = np.load(out / item["map"])
        assert cam.shape == (src.height, src.width) and cam.dtype == np.float32
        assert cam.min() >= 0.0 and cam.max() <= 1.0
        assert item["predictions"][0]["name"] == Path(item["image"]).stem.rsplit("_", 1)[0]
        assert item["target"] == item["predictions"][0]["class"]
    # nothing the user gave is modified
    assert before == {p.name: p.read_bytes() for p in images.iterdir()}


def test_explain_with_class_and_cam(runner, images, tmp_path) -> None:
    out = tmp_path / "o"
    res = runner.invoke(
        main, ["explain", "demo", str(images), "-o", str(out), "-m", "cam", "--class", "2"]
    )
    assert res.exit_code == 0, res.output
    payload = json.loads((out / "predictions.json").read_text())
    assert {i["target"] for i in payload["images"]} == {2}
    assert {i["target_name"] for i in payload["images"]} == {"triangle"}


def test_wrong_layer_names_closest(runner, images, tmp_path) -> None:
    res = runner.invoke(
        main, ["explain", "demo", str(images), "--out", str(tmp_path / "o"), "--layer", "blok3"]
    )
    assert res.exit_code != 0
    assert "blok3" in res.output and "block3" in res.output
    assert "Traceback" not in res.output


def test_unreadable_image_is_reported_rest_finishes(runner, images, tmp_path) -> None:
    (images / "broken.png").write_text("this is not a png")
    out = tmp_path / "o"
    res = runner.invoke(main, ["explain", "demo", str(images), "--out", str(out)])
    assert res.exit_code == 1
    assert "broken.png" in res.output and "not a readable image" in res.output
    payload = json.loads((out / "predictions.json").read_text())
    assert len(payload["images"]) == 3
    assert payload["errors"][0]["image"].endswith("broken.png")


def test_missing_image_and_bad_options(runner, tmp_path) -> None:
    res = runner.invoke(
        main, ["explain", "demo", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o")]
    )
    assert res.exit_code == 1 and "no such file" in res.output
    res = runner.invoke(main, ["explain", "demo", str(tmp_path), "-o", str(tmp_path / "o")])
    assert res.exit_code != 0 and "no images found" in res.output
    res = runner.invoke(
        main, ["explain", "demo", str(tmp_path), "-o", str(tmp_path / "o"), "-m", "nosuch"]
    )
    assert res.exit_code != 0 and "available" in res.output


def test_class_out_of_range(runner, images, tmp_path) -> None:
    res = runner.invoke(
        main, ["explain", "demo", str(images), "-o", str(tmp_path / "o"), "--class", "9"]
    )
    assert res.exit_code != 0 and "out of range for 4 classes" in res.output
    assert "Traceback" not in res.output


def test_explain_torchvision_model(runner, images, tmp_path) -> None:
    out = tmp_path / "o"
    res = runner.invoke(
        main,
        [
            "explain",
            "torchvision:resnet18",
            str(images / "circle_1.png"),
            "-o",
            str(out),
            "--input-size",
            "64,96",
            "--layer",
            "layer3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "random weights" in res.output
    payload = json.loads((out / "predictions.json").read_text())
    assert payload["input_size"] == [64, 96] and payload["layers"] == ["layer3"]


def test_bad_model_specs(runner, images, tmp_path) -> None:
    for spec, msg in [
        ("torchvision:resnet1888", "resnet18"),
        ("nosuchpkg.mod:f", "cannot import"),
        ("what", "unknown model spec"),
    ]:
        res = runner.invoke(main, ["explain", spec, str(images), "-o", str(tmp_path / "o")])
        assert res.exit_code != 0 and msg in res.output, res.output


def test_weights_file_errors(runner, images, tmp_path) -> None:
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"garbage")
    res = runner.invoke(
        main,
        [
            "explain",
            "torchvision:resnet18",
            str(images),
            "-o",
            str(tmp_path / "o"),
            "--weights",
            str(bad),
        ],
    )
    assert res.exit_code != 0 and "state dict" in res.output


def test_demo_command(runner, tmp_path) -> None:
    out = tmp_path / "demo"
    res = runner.invoke(main, ["demo", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "held-out accuracy" in res.output
    for name in (
        "grid_layers.png",
        "grid_methods.png",
        "grid_methods_layers.png",
        "predictions.json",
    ):
        assert (out / name).is_file() and str(out / name) in res.output
    assert len(list(out.glob("*_gradcam.png"))) == len(sample_images())


def test_bench_demo_small(runner, tmp_path) -> None:
    out = tmp_path / "b.json"
    args = ["bench", "--models", "demo", "--backends", "eager", "--batch", "1,2"]
    res = runner.invoke(
        main, [*args, "--methods", "gradcam", "--repeats", "1", "--no-peers", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch"], r["method"]) for r in rows] == [
        (1, "inference"),
        (1, "gradcam"),
        (2, "inference"),
        (2, "gradcam"),
    ]


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".ts"), ("pt2", ".pt2")])
def test_export_then_explain_from_the_file(runner, images, tmp_path, fmt, suffix) -> None:
    path = tmp_path / f"demo{suffix}"
    args = ["export", "demo", "--layer", "block3", "--format", fmt, "--out", str(path)]
    res = runner.invoke(main, args + (["--no-aoti"] if fmt == "pt2" else []))
    assert res.exit_code == 0, res.output
    assert "parity with eager: ok" in res.output and "output block3" in res.output
    assert path.is_file()
    trust = ["--trust-code"] if fmt != "onnx" else []
    res = runner.invoke(main, ["layers", str(path), *trust])
    assert res.exit_code == 0 and "block3" in res.output and "logits" in res.output
    # the preprocessing a client of the file needs: input shape, mean, std, classes
    assert "[Bx3x64x64] float32, mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25]" in res.output
    assert "classes: circle, square, triangle, cross" in res.output
    # gradient methods need the eager tail: a clear error says how to get it
    out = str(tmp_path / "f")
    res = runner.invoke(main, ["explain", str(path), str(images), "-o", out, *trust])
    assert res.exit_code != 0 and "--backend" in res.output and "Traceback" not in res.output


def test_explain_backend_matches_eager(runner, images, tmp_path) -> None:
    outs = {}
    for backend in ("eager", "onnxruntime"):
        out = tmp_path / backend
        res = runner.invoke(
            main, ["explain", "demo", str(images), "-o", str(out), "--backend", backend]
        )
        assert res.exit_code == 0, res.output
        outs[backend] = out
    for npy in outs["eager"].glob("*.npy"):
        a, b = np.load(npy), np.load(outs["onnxruntime"] / npy.name)
        assert np.abs(a - b).max() < 1e-4


def test_export_errors_are_clear(runner, tmp_path) -> None:
    res = runner.invoke(
        main, ["export", "demo", "--out", str(tmp_path / "m.onnx"), "--layer", "block9"]
    )
    assert res.exit_code != 0 and "block3" in res.output and "Traceback" not in res.output
    res = runner.invoke(
        main, ["export", "demo", "--out", str(tmp_path / "m.onnx"), "--format", "tflite"]
    )
    assert res.exit_code != 0 and "tflite" in res.output


def test_export_torchvision_with_weights(runner, tmp_path) -> None:
    import torch
    import torchvision

    torch.manual_seed(3)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    out = tmp_path / "r18.onnx"
    res = runner.invoke(
        main,
        [
            "export",
            "torchvision:resnet18",
            "--weights",
            str(weights),
            "--layer",
            "layer4",
            "--input-size",
            "64",
            "--out",
            str(out),
            "--opset",
            "18",
        ],
    )
    assert res.exit_code == 0, res.output
    import xcam

    meta = xcam.load(out).metadata
    assert meta.opset == 18 and meta.input_shape == [None, 3, 64, 64]
    assert meta.mean == [0.485, 0.456, 0.406] and meta.model == "torchvision:resnet18"


def test_export_with_gradients_then_explain_from_the_file(runner, images, tmp_path) -> None:
    path = tmp_path / "demo_grad.onnx"
    res = runner.invoke(
        main,
        [
            "export",
            "demo",
            "--layer",
            "block2",
            "--layer",
            "block3",
            "--gradients",
            "--target-input",
            "--out",
            str(path),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "output block3.grad" in res.output and "output gradcam" in res.output
    for backend_args, out in (([str(path)], "file"), (["demo"], "eager")):
        res = runner.invoke(
            main,
            [
                "explain",
                *backend_args,
                str(images),
                "-o",
                str(tmp_path / out),
                "--class",
                "2",
                "-l",
                "block2",
                "-l",
                "block3",
            ],
        )
        assert res.exit_code == 0, res.output
    for npy in (tmp_path / "eager").glob("*.npy"):
        assert np.abs(np.load(npy) - np.load(tmp_path / "file" / npy.name)).max() < 1e-3
