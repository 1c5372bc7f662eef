"""Models as users bring them (issue 12), mostly through the command line: 1- and
4-channel inputs, their own mean/std, sizes they need, fp16, ``torch.compile``d and
TorchScript modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import importable
from PIL import Image

from xcam.cli import main

MODULE = "xcam_test_user_models"
SOURCE = '''
import torch
from torch import nn


def _net(cin):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(cin, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).eval()


def plain():
    return _net(3)


def gray():
    return _net(1)


def rgba():
    return _net(4)


def half():
    return _net(3).half()


def compiled():
    return torch.compile(_net(3))


def scripted():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated upstream
        return torch.jit.script(_net(3))


class Needs64(nn.Module):
    """Takes 64x64 inputs only (a flattening head)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 64 * 64, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def needs64():
    torch.manual_seed(0)
    return Needs64().eval()
'''


@pytest.fixture(scope="module")
def mods(tmp_path_factory) -> Path:
    """A module of user model factories, importable as ``MODULE``."""
    with importable(tmp_path_factory.mktemp("user_models"), MODULE, SOURCE) as folder:
        yield folder


def _user(name: str):
    import importlib

    return getattr(importlib.import_module(MODULE), name)()


def _run(runner: CliRunner, *args: str, code: int = 0):
    res = runner.invoke(main, [str(a) for a in args])
    assert res.exit_code == code, res.output + (repr(res.exception) if code == 0 else "")
    return res


def _predictions(out: Path) -> dict[str, list[dict]]:
    data = json.loads((out / "predictions.json").read_text())
    return {Path(i["image"]).name: i["predictions"] for i in data["images"]}


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error")]


def _eager_probs(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).float().softmax(1).numpy()


# ----------------------------------------------------------------- channels (item 1)


def test_preprocess_gives_the_channels_of_mean() -> None:
    from xcam.core.errors import InputError
    from xcam.images import preprocess

    rgb = np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    x3 = preprocess([im], (8, 10), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert x3.shape == (1, 3, 8, 10)
    assert torch.allclose(x3[0], torch.from_numpy(rgb).permute(2, 0, 1) / 255.0)

    x1 = preprocess([im], (8, 10), (0.5,), (0.25,))
    grey = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    assert x1.shape == (1, 1, 8, 10)
    assert torch.allclose(x1[0, 0], (torch.from_numpy(grey) - 0.5) / 0.25)

    x4 = preprocess([im], (8, 10), (0.0, 0.0, 0.0, 0.5), (1.0, 1.0, 1.0, 0.5))
    assert x4.shape == (1, 4, 8, 10)
    assert torch.allclose(x4[0, :3], x3[0]) and torch.all(x4[0, 3] == 1.0)  # opaque alpha

    with pytest.raises(InputError, match="2"):
        preprocess([im], (8, 10), (0.5, 0.5), (0.5, 0.5))


def test_channels_and_statistics_follow_the_model(mods) -> None:
    from xcam.models import IMAGENET_MEAN, load_model

    gray = load_model(f"{MODULE}:gray")
    assert gray.channels == 1 and len(gray.mean) == 1 and len(gray.std) == 1
    assert gray.mean[0] == pytest.approx(sum(IMAGENET_MEAN) / 3, abs=1e-3)
    rgba = load_model(f"{MODULE}:rgba")
    assert rgba.channels == 4 and rgba.mean[:3] == IMAGENET_MEAN and len(rgba.std) == 4
    assert load_model(f"{MODULE}:plain").channels == 3


def test_grayscale_model_layers_explain_export(runner, mods, images, tmp_path) -> None:
    from xcam.images import load_image, preprocess

    spec = f"{MODULE}:gray"
    res = _run(runner, "layers", spec, "--input-size", "32")
    assert "1x1x32x32" in res.output

    out = tmp_path / "eager"
    res = _run(runner, "explain", spec, images, "--input-size", "32", "--out", out)
    assert "grey" in res.output  # the note says how images are read
    got = _predictions(out)
    assert len(got) == 3
    model = _user("gray")
    for p in sorted(images.iterdir()):
        # an independent reference: the file read as grey by Pillow, resized, normalised
        ref = load_image(p).convert("L").resize((32, 32), Image.Resampling.BILINEAR)
        x = (torch.from_numpy(np.asarray(ref, np.float32) / 255.0) - 0.449) / 0.226
        probs = _eager_probs(model, x[None, None])[0]
        top = got[p.name][0]
        assert probs[top["class"]] == pytest.approx(top["probability"], abs=1e-3)
        x_lib = preprocess([load_image(p)], (32, 32), (0.449,), (0.226,))
        assert x_lib.shape == (1, 1, 32, 32)

    onnx = tmp_path / "gray.onnx"
    res = _run(runner, "export", spec, "--input-size", "32", "--out", onnx, "--gradients")
    assert "parity with eager: ok" in res.output
    from xcam.backends import load

    meta = load(onnx).metadata
    assert meta.input_shape[1] == 1 and len(meta.mean) == 1 and len(meta.std) == 1

    out2 = tmp_path / "file"
    _run(runner, "explain", onnx, images, "--out", out2)
    from_file = _predictions(out2)
    for name, top in got.items():
        assert from_file[name][0]["class"] == top[0]["class"]
        assert from_file[name][0]["probability"] == pytest.approx(top[0]["probability"], abs=1e-4)


def test_four_channel_model_layers_explain_export(runner, mods, images, tmp_path) -> None:
    spec = f"{MODULE}:rgba"
    res = _run(runner, "layers", spec, "--input-size", "24")
    assert "1x4x24x24" in res.output
    out = tmp_path / "out"
    res = _run(runner, "explain", spec, images, "--input-size", "24", "--out", out)
    assert "RGBA" in res.output
    assert len(_predictions(out)) == 3
    ts = tmp_path / "rgba.ts"
    res = _run(runner, "export", spec, "--input-size", "24", "--format", "torchscript", "--out", ts)
    assert "parity with eager: ok" in res.output
    from xcam.backends import load

    meta = load(ts, trust_code=True).metadata
    assert meta.input_shape[1] == 4 and len(meta.mean) == 4


def test_filters_feature_maps_of_a_grayscale_model(runner, mods, images, tmp_path) -> None:
    image = sorted(images.iterdir())[0]
    res = _run(
        runner, "filters", f"{MODULE}:gray", "--layer", "0", "--image", image,
        "--input-size", "16", "--out", tmp_path,
    )  # fmt: skip
    assert (tmp_path / f"features_0_{image.stem}.png").is_file(), res.output


def test_bench_times_a_grayscale_model(mods) -> None:
    from xcam.bench import BenchConfig, run_bench

    cfg = BenchConfig(
        [f"{MODULE}:gray"], ["gradcam"], ["eager"], batches=[1], input_size=16, repeats=1
    )
    report = run_bench(cfg, echo=lambda line: None)
    assert {r.method for r in report.rows} >= {"inference", "gradcam"}


# ----------------------------------------------------------------- mean / std (item 2)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--mean", "0.5,0.5"], ["--mean", "2 values", "1 channel"]),
        (["--std", "0"], ["--std", "> 0"]),
        (["--std", "-1"], ["--std", "> 0"]),
        (["--mean", "a"], ["--mean", "comma-separated"]),
        (["--mean", "nan"], ["--mean", "finite"]),
    ],
)
def test_bad_mean_std_are_usage_errors(runner, mods, images, tmp_path, args, words) -> None:
    for command in (
        ["explain", f"{MODULE}:gray", images, "--out", tmp_path / "o"],
        ["export", f"{MODULE}:gray", "--out", tmp_path / "m.onnx"],
    ):
        res = _run(runner, *command, "--input-size", "16", *args, code=2)
        for w in words:
            assert w in res.output, res.output
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "o").exists()


def _assumed(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("note:") and "--mean" in line]


def test_assumed_imagenet_statistics_are_noted(runner, mods, images, tmp_path) -> None:
    image = sorted(images.iterdir())[0]
    res = _run(runner, "explain", f"{MODULE}:plain", image, "--out", tmp_path / "a")
    (note,) = _assumed(res.output)
    assert "ImageNet" in note and "224x224" in note and "--input-size" in note and "--std" in note
    res = _run(
        runner, "explain", "torchvision:resnet18", image, "--out", tmp_path / "b",
        "--input-size", "32",
    )  # fmt: skip
    (note,) = _assumed(res.output)
    assert "0.485" in note and "--input-size" not in note  # the size was given
    res = _run(
        runner, "explain", f"{MODULE}:plain", image, "--out", tmp_path / "c",
        "--input-size", "16", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5",
    )  # fmt: skip
    assert not _assumed(res.output)
    res = _run(runner, "explain", "demo", image, "--out", tmp_path / "d")
    assert not _assumed(res.output)  # the demo model knows its own


def test_mean_std_travel_with_the_export(runner, mods, images, tmp_path) -> None:
    from xcam.backends import load
    from xcam.images import load_image, preprocess

    image = sorted(images.iterdir())[0]
    onnx = tmp_path / "m.onnx"
    res = _run(
        runner, "export", f"{MODULE}:plain", "--input-size", "16", "--out", onnx,
        "--mean", "0.1,0.2,0.3", "--std", "0.5,0.25,2",
    )  # fmt: skip
    assert not _assumed(res.output)
    meta = load(onnx).metadata
    assert meta.mean == [0.1, 0.2, 0.3] and meta.std == [0.5, 0.25, 2.0]

    model = _user("plain")

    def probs(mean, std) -> float:
        x = preprocess([load_image(image)], (16, 16), mean, std)
        return _eager_probs(model, x)[0]

    def run(out: Path) -> dict:
        return json.loads((out / "predictions.json").read_text())["run"]

    res = _run(runner, "explain", onnx, image, "-m", "eigencam", "--out", tmp_path / "a")
    assert not _assumed(res.output)
    assert run(tmp_path / "a")["mean"] == [0.1, 0.2, 0.3]
    top = _predictions(tmp_path / "a")[image.name][0]
    expected = probs((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    assert expected[top["class"]] == pytest.approx(top["probability"], abs=1e-4)

    out = tmp_path / "b"
    _run(runner, "explain", onnx, image, "-m", "eigencam", "--out", out, "--mean", "0.9,0.9,0.9")
    assert run(out)["mean"] == [0.9, 0.9, 0.9] and run(out)["std"] == [0.5, 0.25, 2.0]
    top = _predictions(out)[image.name][0]
    expected = probs((0.9, 0.9, 0.9), (0.5, 0.25, 2.0))  # --mean overrides, std from the file
    assert expected[top["class"]] == pytest.approx(top["probability"], abs=1e-4)


# ----------------------------------------------------------------- sizes (item 3)


def test_layers_at_a_size_the_model_cannot_take_suggests_input_size(runner, mods) -> None:
    spec = f"{MODULE}:needs64"
    for args in ([], ["--input-size", "32"]):
        res = _run(runner, "layers", spec, *args, code=1)
        (line,) = _error_lines(res.output)
        assert "--input-size" in line and "Traceback" not in res.output
    res = _run(runner, "layers", spec, "--input-size", "64")
    assert "1x3x64x64" in res.output


# ----------------------------------------------------------------- fp16 (item 4)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_of_a_half_precision_model(runner, mods, images, tmp_path, fmt) -> None:
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.ts")
    res = _run(
        runner, "export", f"{MODULE}:half", "--input-size", "16", "--format", fmt, "--out", out
    )
    assert "parity with eager: ok" in res.output
    # the file explains half-precision images as it was exported (its runtime gets float16)
    trust = ["--trust-code"] if fmt == "torchscript" else []
    _run(runner, "explain", out, *trust, images, "-m", "eigencam", "--out", tmp_path / "o")
    assert len(_predictions(tmp_path / "o")) == 3


def test_export_of_a_half_precision_model_unchecked(runner, mods, images, tmp_path) -> None:
    import exporters

    path = tmp_path / "lib.onnx"
    report = exporters.export(_user("half"), "2", torch.randn(2, 3, 16, 16), path, check=False)
    assert report.metadata.dtype == "float16" and "float16" in " ".join(report.notes)
    onnx = tmp_path / "cli.onnx"
    _run(runner, "export", f"{MODULE}:half", "--input-size", "16", "--out", onnx, "--no-check")
    _run(runner, "explain", onnx, images, "-m", "eigencam", "--out", tmp_path / "o")
    assert len(_predictions(tmp_path / "o")) == 3


def test_layers_and_explain_of_a_half_precision_model(runner, mods, images, tmp_path) -> None:
    from xcam.core.layers import default_layer

    assert default_layer(_user("half"), torch.zeros(1, 3, 16, 16)) == "3"  # a float32 probe
    res = _run(runner, "layers", f"{MODULE}:half", "--input-size", "16")
    assert "1x3x16x16" in res.output
    _run(runner, "explain", f"{MODULE}:half", images, "--input-size", "16", "--out", tmp_path)
    assert len(_predictions(tmp_path)) == 3


# ------------------------------------------------- torch.compile and TorchScript (item 5)


def test_compiled_factory_is_unwrapped(runner, mods, images, tmp_path) -> None:
    res = _run(runner, "layers", f"{MODULE}:compiled", "--input-size", "16")
    assert "_orig_mod" not in res.output
    assert "torch.compile" in res.output and "* 3 " in res.output
    _run(runner, "explain", f"{MODULE}:compiled", images, "--input-size", "16", "--out", tmp_path)
    assert len(_predictions(tmp_path)) == 3


def test_weights_saved_from_a_compiled_model(runner, mods, images, tmp_path) -> None:
    model = _user("plain")
    with torch.no_grad():
        model[0].weight.mul_(-2.0)  # not the factory's own weights
    compiled = torch.compile(model)
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    weights = tmp_path / "w.pt"
    torch.save(compiled.state_dict(), weights)

    from xcam.models import load_model

    info = load_model(f"{MODULE}:plain", weights=weights)
    assert torch.equal(info.model[0].weight, model[0].weight)
    assert any("_orig_mod." in n for n in info.notes)
    res = _run(runner, "layers", f"{MODULE}:plain", "--weights", weights, "--input-size", "16")
    assert "note:" in res.output and "_orig_mod." in res.output


def test_scripted_factory_is_a_clear_error(runner, mods) -> None:
    res = _run(runner, "layers", f"{MODULE}:scripted", "--input-size", "16", code=1)
    (line,) = _error_lines(res.output)
    assert "TorchScript" in line and "Python module" in line and "Traceback" not in res.output


def test_unwrap_model() -> None:
    from xcam.core.errors import XCamError
    from xcam.core.layers import unwrap_model

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1))
    assert unwrap_model(net) is net
    assert unwrap_model(torch.compile(net)) is net
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream
        traced = torch.jit.trace(torch.nn.Conv2d(3, 2, 1), torch.zeros(1, 3, 4, 4))
    with pytest.raises(XCamError, match="TorchScript"):
        unwrap_model(traced)


@pytest.mark.filterwarnings("ignore::UserWarning")  # dynamo tracing through the hooks
def test_library_methods_take_a_compiled_model(mods) -> None:
    import xcam

    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    compiled = _user("compiled")
    got = xcam.GradCAM(compiled)(x).maps  # the default layer, whatever its name
    want = xcam.GradCAM(compiled._orig_mod)(x).maps
    assert torch.allclose(got, want, atol=1e-6)


def test_library_methods_refuse_a_scripted_model_clearly(mods) -> None:
    import xcam
    from xcam.core.errors import XCamError

    scripted = _user("scripted")
    with pytest.raises(XCamError, match="TorchScript"):
        xcam.GradCAM(scripted)(torch.randn(1, 3, 16, 16))


# ----------------------------------------------------------------- a fresh process


def test_factory_on_pythonpath_in_a_fresh_process(mods) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(mods), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-m", "xcam", "layers", f"{MODULE}:gray", "--input-size", "16"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "1x1x16x16" in out.stdout
