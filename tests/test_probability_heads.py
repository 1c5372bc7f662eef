"""Issue 12.1 / 12.2: models whose output already is a probability (a final Sigmoid,
Softmax or LogSoftmax, as a module or a function).

Before: ``predictions.json`` applied a second sigmoid (an output of 0.4987, a negative
decision, was reported as ``probability 0.622``), the default target was "positive" for
outputs 0.005 and 0.059, ``--pre-activation`` did not exist on the CLI, and a confident
sigmoid model could not be exported with ``--gradients`` (ONNX Runtime's sigmoid(-21) is 0:
parity failed with "gradcam: max abs 1")."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from heads import calibrate, functional_sigmoid, softmax_head, xray
from torch import nn

import exporters
import xcam
from xcam.cli import main
from xcam.images import load_image, preprocess
from xcam.models import ModelInfo
from xcam.pipeline import explain_files

SIZE = (64, 64)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


class Logits(nn.Module):
    """The same modules, without the final activation: what ``pre_activation`` promises."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logit(x)


@pytest.fixture
def pngs(images: Path) -> list[Path]:
    return sorted(images.glob("*.png"))


def _inputs(pngs: list[Path]) -> torch.Tensor:
    return preprocess([load_image(p) for p in pngs[:2]], SIZE, MEAN, STD)


def _predictions(out: Path) -> list[dict]:
    return json.loads((out / "predictions.json").read_text())["images"]


@pytest.mark.parametrize("probabilities", [(0.005, 0.059), (0.4987, 0.7)])
def test_sigmoid_output_is_reported_as_is_and_the_default_target_is_the_decision(
    pngs: list[Path], tmp_path: Path, probabilities: tuple[float, float]
) -> None:
    x = _inputs(pngs)
    model = calibrate(xray(), x, [logit(p) for p in probabilities])
    out_p = model(x).flatten()
    assert torch.allclose(out_p, torch.tensor(probabilities), atol=1e-4)
    info = ModelInfo(model=model, spec="xray", input_size=SIZE, mean=MEAN, std=STD)
    with pytest.warns(UserWarning, match="ends in Sigmoid.*--pre-activation"):
        method = xcam.GradCAM(model, "features.block3")
    explain_files(info, pngs[:2], method, tmp_path / "out")
    items = {Path(i["image"]).name: i for i in _predictions(tmp_path / "out")}
    for path, p in zip(pngs[:2], out_p.tolist(), strict=True):
        item = items[path.name]
        (pred,) = item["predictions"]
        assert pred["probability"] == pytest.approx(p, abs=1e-6)  # not sigmoid(p)
        assert "logit" not in pred  # the model never showed one
        assert item["target"] == (1 if p >= 0.5 else 0), (p, item["target"])
    result = method(x)
    assert result.activation == "sigmoid"
    assert result.targets.tolist() == [int(p >= 0.5) for p in probabilities]


def test_pre_activation_explains_the_logit_and_reports_it(pngs: list[Path], tmp_path: Path) -> None:
    x = _inputs(pngs)
    model = calibrate(xray(), x, [logit(0.005), logit(0.7)])
    pre = xcam.GradCAM(model, "features.block3", pre_activation=True)
    want = xcam.GradCAM(Logits(model), "model.features.block3")(x)
    got = pre(x)
    assert got.activation is None
    assert torch.allclose(got.logits, want.logits, atol=1e-6)
    assert torch.allclose(got.maps, want.maps, atol=1e-6)
    assert got.targets.tolist() == [0, 1]  # the decisions again, now at logit 0
    info = ModelInfo(model=model, spec="xray", input_size=SIZE, mean=MEAN, std=STD)
    explain_files(info, pngs[:2], pre, tmp_path / "out")
    items = sorted(_predictions(tmp_path / "out"), key=lambda i: i["image"])
    for item, z in zip(items, want.logits[:, 0].tolist(), strict=True):
        (pred,) = item["predictions"]
        assert pred["logit"] == pytest.approx(z, abs=1e-5)
        assert pred["probability"] == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-6)


@pytest.mark.parametrize("factory", [functional_sigmoid, softmax_head])
@pytest.mark.parametrize("name", xcam.list_methods())
def test_functional_final_activations_are_found(factory, name: str) -> None:
    """``torch.sigmoid(z).squeeze(1)[:, None]`` and ``F.softmax`` at the end of forward are
    found as a module is: reported as probabilities, skipped by ``pre_activation`` (every
    method then equals the same network without the activation)."""
    model = factory()
    cls = xcam.get_method(name)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    args = ("features.block3",) if cls.uses_layers else ()
    ref_args = ("model.features.block3",) if cls.uses_layers else ()
    if name == "cam" and factory is functional_sigmoid:  # a conv head: CAM does not apply
        for m, a in ((model, args), (Logits(model), ref_args)):
            with pytest.raises(xcam.HeadError, match="global average pooling"):
                cls(m, *a, pre_activation=True)(x)
        return
    want = cls(Logits(model), *ref_args)(x)
    got = cls(model, *args, pre_activation=True)(x)
    assert got.activation is None
    assert torch.equal(got.targets, want.targets)
    assert torch.allclose(got.maps, want.maps, atol=1e-5), float((got.maps - want.maps).abs().max())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "cam":  # the probability is not W·GAP(A)+b: the error says what is
            with pytest.raises(xcam.HeadError, match=r"ends in softmax.*pre_activation=True"):
                cls(model, *args)(x)
            return
        plain = cls(model, *args)(x)
    assert plain.activation == ("sigmoid" if factory is functional_sigmoid else "softmax")
    assert torch.allclose(plain.logits, model(x), atol=1e-6)


def test_softmax_and_log_softmax_probabilities_are_not_softmaxed_again(tmp_path: Path) -> None:
    from xcam.pipeline import top_predictions

    info = ModelInfo(model=nn.Identity(), spec="x")
    p = torch.tensor([0.1, 0.6, 0.3])
    assert [r["probability"] for r in top_predictions(p, info, activation="softmax")] == (
        pytest.approx([0.6, 0.3, 0.1])
    )
    got = top_predictions(p.log(), info, activation="log_softmax")
    assert [r["probability"] for r in got] == pytest.approx([0.6, 0.3, 0.1])
    assert [r["class"] for r in got] == [1, 2, 0]


def test_cli_pre_activation(pngs: list[Path], tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["heads:xray", str(pngs[0]), "--input-size", "64", "--layer", "features.block3"]
    plain = runner.invoke(main, ["explain", *common, "--out", str(tmp_path / "a")])
    assert plain.exit_code == 0, plain.output
    assert "--pre-activation" in plain.output  # the warning names the CLI's option
    pre = runner.invoke(
        main, ["explain", *common, "--pre-activation", "--out", str(tmp_path / "b")]
    )
    assert pre.exit_code == 0, pre.output
    record = json.loads((tmp_path / "b" / "predictions.json").read_text())
    assert record["run"]["pre_activation"] is True
    (item,) = record["images"]
    model = xray()
    info = ModelInfo(model=model, spec="heads:xray", input_size=SIZE)
    x = preprocess([load_image(pngs[0])], SIZE, info.mean, info.std)
    z = float(model.logit(x).flatten()[0])
    assert item["predictions"][0]["logit"] == pytest.approx(z, abs=1e-5)
    import numpy as np

    got = np.load(tmp_path / "b" / item["map"])
    want = xcam.GradCAM(Logits(model), "model.features.block3")(x).maps[0]
    image = load_image(pngs[0])
    from xcam.viz import resize_map

    assert np.abs(got - resize_map(want, (image.height, image.width))).max() < 1e-5


# -- export (12.2) -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def confident() -> tuple[nn.Module, torch.Tensor]:
    """An X-ray-style model that is sure: logit +20 on the first input, -21 on the second."""
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(11))
    return calibrate(xray(), x, [20.0, -21.0]), x


def test_confident_sigmoid_model_exports_with_gradients(confident, tmp_path: Path) -> None:
    """The file's sigmoid(-21) is 0 where eager's is 7.6e-10: parity compares such a
    saturated gradient on the logit's scale, and the export succeeds."""
    model, x = confident
    path = tmp_path / "m.onnx"
    report = exporters.export(model, ["features.block3"], x, path, gradients=True)
    assert report.metadata.activation == "sigmoid" and not report.metadata.pre_activation
    assert any("saturated" in n for n in report.notes), report.notes
    backend = xcam.load(path)
    with pytest.warns(UserWarning, match=r"m.onnx outputs probabilities.*--pre-activation"):
        cam = xcam.GradCAM(backend)  # its maps of saturated inputs are flat: it says so
    result = cam(x)
    assert result.activation == "sigmoid"
    assert result.targets.tolist() == [1, 0]  # decisions at 0.5 in the file's own graph


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_pre_activation_export_matches_eager_on_confident_inputs(
    confident, tmp_path: Path, fmt: str
) -> None:
    model, x = confident
    path = tmp_path / f"m{exporters.FORMATS.index(fmt)}"
    path = path.with_suffix({"onnx": ".onnx", "torchscript": ".ts", "pt2": ".pt2"}[fmt])
    report = exporters.export(
        model,
        ["features.block3"],
        x,
        path,
        format=fmt,
        gradients=True,
        pre_activation=True,
        aoti=False,
    )
    assert report.metadata.pre_activation and report.metadata.activation == "sigmoid"
    backend = xcam.load(path, trust_code=True)
    want = xcam.GradCAM(model, "features.block3", pre_activation=True)(x)
    got = xcam.GradCAM(backend)(x)  # the file's own in-graph map
    assert got.activation is None
    assert torch.allclose(got.logits.flatten(), torch.tensor([20.0, -21.0]), atol=1e-3)
    assert got.targets.tolist() == [1, 0]
    assert float((got.maps - want.maps).abs().max()) < 1e-4
    outs = backend.run(x)
    assert float((outs["gradcam"] - want.maps).abs().max()) < 1e-4


def test_pre_activation_reaches_auto_export_and_loaded_files(confident, tmp_path: Path) -> None:
    model, x = confident
    want = xcam.GradCAM(model, "features.block3", pre_activation=True)(x)
    auto = xcam.GradCAM(model, "features.block3", backend="onnxruntime", pre_activation=True)
    assert torch.allclose(auto(x).maps, want.maps, atol=1e-4)
    plain = tmp_path / "plain.onnx"
    exporters.export(model, ["features.block3"], x, plain)
    with pytest.raises(xcam.XCamError, match=r"final sigmoid.*--pre-activation"):
        xcam.GradCAM(model, "features.block3", backend=xcam.load(plain), pre_activation=True)
    pre = tmp_path / "pre.onnx"
    exporters.export(model, ["features.block3"], x, pre, pre_activation=True)
    adopted = xcam.GradCAM(model, "features.block3", backend=xcam.load(pre))  # eager tail
    assert adopted.pre_activation
    assert torch.allclose(adopted(x).maps, want.maps, atol=1e-4)


def test_pre_activation_export_of_a_model_without_final_activation_is_an_error(
    tmp_path: Path,
) -> None:
    model = Logits(xray())
    x = torch.randn(2, 3, *SIZE)
    with pytest.raises(exporters.ExportError, match="does not come out of a final Sigmoid"):
        exporters.export(
            model, ["model.features.block3"], x, tmp_path / "m.onnx", pre_activation=True
        )
    assert not (tmp_path / "m.onnx").exists()


def test_lite_decides_a_sigmoid_file_at_one_half(confident, tmp_path: Path) -> None:
    from xcam.lite import OnnxExplainer

    _, x = confident
    path = tmp_path / "m.onnx"
    # calibrated so that the decisions are 0.7 (positive) and 0.3 (negative) in probability
    mild = calibrate(xray(), x, [logit(0.7), logit(0.3)])
    exporters.export(mild, ["features.block3"], x, path, gradients=True)
    got = OnnxExplainer(path)(x.numpy())
    assert got.targets.tolist() == [1, 0]


def test_deletion_insertion_reads_a_probability_head_as_probabilities() -> None:
    """``xcam.quality`` took a softmax of the softmax: the curves of a model ending in
    Softmax must be those of the same network's logits."""
    from xcam.quality import deletion_insertion_curves

    model = softmax_head()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    maps = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(5))
    got = deletion_insertion_curves(model, x, maps, steps=4)
    want = deletion_insertion_curves(Logits(model), x, maps, steps=4)
    assert torch.equal(got.targets, want.targets)
    assert torch.allclose(got.deletion, want.deletion, atol=1e-6)
    assert torch.allclose(got.insertion, want.insertion, atol=1e-6)
    xs = x.repeat(1, 1, 2, 2)  # 64², the X-ray model's size
    sure = calibrate(xray(), xs, [3.0, -2.0])
    got = deletion_insertion_curves(sure, xs, maps.repeat(1, 2, 2), steps=4)
    want = deletion_insertion_curves(Logits(sure), xs, maps.repeat(1, 2, 2), steps=4)
    assert got.targets.tolist() == [1, 0]  # the decisions, at 0.5 for the probability
    assert torch.allclose(got.deletion, want.deletion, atol=1e-6)


def test_the_final_activation_is_looked_for_once() -> None:
    """Watching every op costs a Python call each: a model is watched on its first call
    only (and on every call with ``pre_activation``, which needs the logits)."""
    from xcam.core.final import FinalActivations

    entered = []
    original = FinalActivations.__enter__

    def counting(self):
        entered.append(1)
        return original(self)

    x = torch.rand(1, 3, 64, 64)
    for factory, pre, per_call in ((Logits, False, 0), (xray, True, 1)):
        model = factory(xray()) if factory is Logits else factory()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cam = xcam.GradCAM(
                model,
                "model.features.block3" if factory is Logits else "features.block3",
                pre_activation=pre,
            )
        FinalActivations.__enter__ = counting
        try:
            cam(x)
            first = len(entered)
            cam(x)
            cam(x)
        finally:
            FinalActivations.__enter__ = original
        assert first == 1
        assert len(entered) - first == 2 * per_call
        entered.clear()
