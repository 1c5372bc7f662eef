"""Export + load + parity: real ONNX Runtime sessions, TorchScript and .pt2 files on disk."""

from __future__ import annotations

import json
import warnings

import onnx
import pytest
import torch
from conftest import assert_same_snapshot, seeded, shallow, snapshot
from torch import nn

import exporters
import xcam
from exporters import ExportError, ParityError, UnsupportedOpError

SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "pt2": ".pt2"}
FORMATS = list(SUFFIX)


def _export(model, layers, x, tmp_path, fmt, **kw):
    path = tmp_path / f"m{SUFFIX[fmt]}"
    if fmt == "pt2":
        kw.setdefault("aoti", False)
    return exporters.export(model, layers, x, path, format=fmt, **kw)


@pytest.mark.parametrize("fmt", FORMATS)
def test_demo_export_load_parity(demo_model, tmp_path, fmt: str) -> None:
    before = snapshot(demo_model)
    x = torch.randn(2, 3, 64, 64)
    report = _export(demo_model, ["block2", "block3"], x, tmp_path, fmt, classes=["a"] * 4)
    assert_same_snapshot(before, snapshot(demo_model))
    assert report.path.is_file() and report.file_bytes == report.path.stat().st_size
    assert list(report.outputs) == ["logits", "block2", "block3"]
    assert report.outputs["block3"] == [None, 64, 16, 16]
    assert set(report.max_errors) == {"logits", "block2", "block3"}
    assert all(e["max_rel"] <= 1e-4 for e in report.max_errors.values())
    assert report.check_seconds is not None
    assert list(tmp_path.iterdir()) == [report.path]  # self-contained: no sidecar files
    backend = xcam.load(report.path, trust_code=True)
    assert backend.output_names == ["logits", "block2", "block3"]
    assert backend.layer_names == ["block2", "block3"]
    meta = backend.metadata
    assert meta.format == fmt and meta.input_shape == [None, 3, 64, 64]
    assert meta.num_classes == 4 and meta.classes == ["a"] * 4 and meta.dtype == "float32"
    assert meta.versions["torch"] == torch.__version__
    cm = xcam.CamModel(demo_model, ["block2", "block3"])
    for b in (1, 2, 3):
        xb = torch.randn(b, 3, 64, 64)
        outs = backend.run(xb)
        with torch.no_grad():
            ref = cm(xb)
        for name, want in zip(cm.output_names, ref, strict=True):
            torch.testing.assert_close(outs[name], want, atol=1e-4, rtol=1e-4)
    assert "parity with eager: ok" in str(report)


def test_onnx_graph_names_and_metadata(demo_model, tmp_path) -> None:
    report = _export(
        demo_model,
        "block3",
        torch.randn(2, 3, 64, 64),
        tmp_path,
        "onnx",
        mean=[0.5] * 3,
        std=[0.25] * 3,
        model_spec="demo",
    )
    model = onnx.load(str(report.path))
    assert [o.name for o in model.graph.output] == ["logits", "block3"]
    assert [i.name for i in model.graph.input] == ["input"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["xcam"])
    assert meta["exporter"].startswith("torch.onnx.export")
    assert meta["opset"] == report.metadata.opset and meta["opset"] >= 17
    assert meta["mean"] == [0.5] * 3 and meta["model"] == "demo"
    assert meta["outputs"]["block3"].startswith("activation of layer")


def test_example_batch_of_one_and_static_batch(demo_model, tmp_path) -> None:
    report = _export(demo_model, "block3", torch.randn(1, 3, 64, 64), tmp_path, "onnx")
    assert any("repeated to 2" in n for n in report.notes)
    static = exporters.export(
        demo_model, "block3", torch.randn(3, 3, 64, 64), tmp_path / "s.onnx", dynamic_batch=False
    )
    backend = xcam.load(static.path, trust_code=True)
    assert backend.metadata.input_shape == [3, 3, 64, 64]
    with pytest.raises(xcam.InputError, match="exported for input 3x3x64x64"):
        backend.run(torch.randn(2, 3, 64, 64))


def test_dynamic_spatial_onnx(demo_model, tmp_path) -> None:
    report = _export(
        demo_model, "block3", torch.randn(2, 3, 64, 64), tmp_path, "onnx", dynamic_spatial=True
    )
    backend = xcam.load(report.path, trust_code=True)
    assert backend.metadata.input_shape == [None, 3, None, None]
    outs = backend.run(torch.randn(1, 3, 48, 80))
    assert outs["block3"].shape == (1, 64, 12, 20)


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        a = self.body(x)
        return {"logits": self.fc(a.mean((2, 3))), "features": a}


class TupleOut(DictOut):
    def forward(self, x):
        out = super().forward(x)
        return out["features"], out["logits"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_dict_and_tuple_outputs_need_a_selector(tmp_path, fmt: str) -> None:
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(xcam.TargetError, match=r"'logits': Tensor\[2, 3\], 'features'"):
        _export(DictOut().eval(), "body", x, tmp_path, fmt)
    with pytest.raises(xcam.TargetError, match=r"tuple \(0: Tensor\[2, 8, 16, 16\], 1: Tensor"):
        _export(TupleOut().eval(), "body", x, tmp_path, fmt)
    for model, sel in ((DictOut().eval(), "logits"), (TupleOut().eval(), 1)):
        report = _export(model, "body", x, tmp_path, fmt, output=sel)
        assert report.outputs["logits"] == [None, 3]
        ref = xcam.GradCAM(model, "body", output=sel)(x)
        backend = xcam.load(report.path, trust_code=True)
        got = xcam.GradCAM(model, "body", backend=backend, output=sel)(x)
        torch.testing.assert_close(got.maps, ref.maps, atol=1e-5, rtol=1e-4)


def test_unsupported_op_is_named(tmp_path) -> None:
    @torch.library.custom_op("xcamtest::wobble", mutates_args=())
    def wobble(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @wobble.register_fake
    def _(x):
        return torch.empty_like(x)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(wobble(self.conv(x)).mean((2, 3)))

    with pytest.raises(UnsupportedOpError, match=r"xcamtest\.wobble") as info:
        _export(M().eval(), "conv", torch.randn(2, 3, 16, 16), tmp_path, "onnx")
    assert info.value.op == "xcamtest.wobble" and "--format torchscript" in str(info.value)
    # the op runs in torch, so TorchScript carries it
    _export(M().eval(), "conv", torch.randn(2, 3, 16, 16), tmp_path, "torchscript")


def test_batchnorm_without_running_stats_is_an_error(tmp_path) -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    with pytest.raises(ExportError, match="BatchNorm '1' has no running statistics"):
        _export(model, "0", torch.randn(2, 3, 8, 8), tmp_path, "onnx")


class Stateful(nn.Module):
    """Python state in forward: a trace bakes in one value, eager moves on. Parity catches it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(self.conv(x).mean((2, 3))) + float(self.calls)


def test_parity_mismatch_is_an_error(tmp_path) -> None:
    with pytest.raises(ParityError, match="logits: max abs") as info:
        _export(Stateful().eval(), "conv", torch.randn(2, 3, 8, 8), tmp_path, "torchscript")
    assert info.value.errors["logits"]["max_abs"] > 0.5
    # without the check the file is written and the report says it was not checked
    report = _export(
        Stateful().eval(), "conv", torch.randn(2, 3, 8, 8), tmp_path, "torchscript", check=False
    )
    assert "not checked" in str(report)


def test_bad_arguments(demo_model, tmp_path) -> None:
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        exporters.export(demo_model, "block3", x, tmp_path / "m.tfl", format="tflite")
    with pytest.raises(xcam.LayerNotFoundError, match="block3"):
        exporters.export(demo_model, "block4", x, tmp_path / "m.onnx")
    with pytest.raises(xcam.InputError):
        exporters.export(demo_model, "block3", torch.randn(64, 64), tmp_path / "m.onnx")


def test_load_rejects_foreign_and_unknown_files(tmp_path) -> None:
    plain = tmp_path / "plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(nn.Linear(2, 2), (torch.randn(1, 2),), str(plain), dynamo=True)
    with pytest.raises(xcam.XCamError, match="not exported by xcam"):
        xcam.load(plain)
    with pytest.raises(xcam.XCamError, match="no such file"):
        xcam.load(tmp_path / "none.onnx")
    for name in ("bad.onnx", "bad.ts", "bad.pt2"):  # damaged files: one clear error each
        (tmp_path / name).write_text("garbage")
        with pytest.raises(xcam.XCamError, match=r"bad\.(onnx|ts|pt2)"):
            xcam.load(tmp_path / name, trust_code=True)
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(xcam.XCamError, match="can't tell the format"):
        xcam.load(tmp_path / "m.bin")


@pytest.mark.slow
def test_pt2_aoti_package(demo_model, tmp_path) -> None:
    from exporters.pt2 import compiler_available

    if not compiler_available():
        pytest.skip("no C++ compiler for AOTInductor")
    report = exporters.export(
        demo_model, "block3", torch.randn(2, 3, 64, 64), tmp_path / "m.pt2", format="pt2", aoti=True
    )
    backend = xcam.load(report.path, trust_code=True)
    assert backend.aoti and backend.metadata.exporter.endswith("AOTInductor")
    x = torch.randn(3, 3, 64, 64)
    ref = xcam.GradCAM(demo_model, "block3")(x)
    got = xcam.GradCAM(demo_model, "block3", backend=backend)(x)
    torch.testing.assert_close(got.maps, ref.maps, atol=1e-5, rtol=1e-4)


# seeded torchvision models at small inputs: a middle and the last block (all but resnet18
# with one block per stage: conftest.shallow)
ZOO = {
    "resnet18": (["layer3", "layer4"], 64),
    "mobilenet_v3_small": (["features.4", "features.6"], 64),
    "densenet121": (["features.denseblock3", "features"], 64),
    "efficientnet_b0": (["features.5", "features.8"], 64),
    "convnext_tiny": (["features.5", "features.7"], 64),
}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(ZOO))
def test_torchvision_zoo_export_and_maps(name: str, fmt: str, tmp_path) -> None:
    layers, size = ZOO[name]
    model = seeded(name) if name == "resnet18" else shallow(name)
    x = torch.randn(2, 3, size, size)
    report = _export(model, layers, x, tmp_path, fmt)
    assert all(e["max_rel"] <= 1e-4 for e in report.max_errors.values()), report.max_errors
    backend = xcam.load(report.path, trust_code=True)
    xb = torch.randn(3, 3, size, size)
    ref = xcam.GradCAM(model, layers)(xb)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the tail must split, no fallback
        got = xcam.GradCAM(model, layers, backend=backend)(xb)
    assert torch.equal(got.targets, ref.targets)
    torch.testing.assert_close(got.maps, ref.maps, atol=2e-4, rtol=1e-3)
    for layer in layers:
        scale = float(ref.layer_maps[layer].max())
        torch.testing.assert_close(
            got.layer_maps[layer], ref.layer_maps[layer], atol=1e-4 * max(scale, 1e-6), rtol=1e-3
        )


class _Branchy(nn.Module):
    """Doubles its features on bright inputs: a branch on the input's values."""

    def __init__(self, item: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 4)
        self.item = item

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv(x))
        bright = x.mean().item() > 0.5 if self.item else x.mean() > 0.5
        if bright:
            a = a * 3 - 1
        return self.fc(a.mean(dim=(2, 3)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_branch_on_tensor_values_is_never_exported_silently(tmp_path, fmt) -> None:
    """Issue 12.4: a TorchScript trace of ``if x.mean() > 0.5`` used to pass its check and be
    wrong on bright inputs; every format refuses it now."""
    with pytest.raises(exporters.ExportError, match=r"branch|data-dependent|control flow|cond"):
        exporters.export(
            _Branchy(),
            ["conv"],
            torch.randn(1, 3, 16, 16),
            tmp_path / f"m{fmt}",
            format=fmt,
            aoti=False,
        )
    assert not list(tmp_path.iterdir())


def test_the_parity_check_uses_inputs_unlike_the_example(tmp_path) -> None:
    """A branch the tracer can't see (through ``.item()``) is caught by the parity check,
    whose inputs differ from the example in brightness and contrast, not only batch size."""
    with pytest.raises(exporters.ParityError, match="does not match eager"):
        exporters.export(
            _Branchy(item=True),
            ["conv"],
            torch.randn(1, 3, 16, 16),
            tmp_path / "m.ts",
            format="torchscript",
        )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("gradients", [False, True])
def test_an_old_opset_is_written_as_asked(demo_model, tmp_path, gradients) -> None:
    """Issue 12.5: ``--opset 13`` used to write opset 18 and dump a traceback; below 18 the
    file is written by torch's TorchScript-based exporter, checked like any other."""
    import onnx
    from click.testing import CliRunner

    from xcam.cli import main

    path = tmp_path / "m.onnx"
    args = ["export", "demo", "--opset", "13", "--out", str(path)]
    res = CliRunner().invoke(main, args + (["--gradients"] if gradients else []))
    if gradients:  # the gradient graph needs the dynamo exporter: a clear error, no file
        assert res.exit_code == 1 and "opset 18 or above" in res.output
        assert "Traceback" not in res.output and not path.exists()
        return
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "ONNX opset 13" in res.output
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [13]
    backend = xcam.load(path)
    assert backend.metadata.opset == 13
    x = torch.rand(3, 3, 64, 64)
    ref = xcam.GradCAM(demo_model, "block3")(x).maps
    got = xcam.GradCAM(demo_model, backend=backend)(x)
    assert torch.allclose(got.maps, ref, atol=1e-4)


def test_torchscript_refuses_a_branch_on_tensor_values(tmp_path) -> None:
    """A trace that met a branch on values is refused even though TorchScript retries a
    refused trace through make_fx (which a branch on sizes passes): make_fx can't trace
    one on values either, so the first refusal stands and nothing is written."""
    path = tmp_path / "m.ts"
    with pytest.raises(exporters.ExportError, match="branches on the values"):
        exporters.export(
            _Branchy(), ["conv"], torch.randn(1, 3, 16, 16), path, format="torchscript"
        )
    assert not list(tmp_path.iterdir())


def test_an_old_opset_refuses_a_branch_on_tensor_values(tmp_path) -> None:
    with pytest.raises(exporters.ExportError, match="branches on the values"):
        exporters.export(
            _Branchy(), ["conv"], torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", opset=13
        )
    assert not list(tmp_path.iterdir())
