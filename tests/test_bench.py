"""`xcam bench`: the timing loop, the statistics, the goals, the outputs, and real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from xcam.bench import BenchConfig, BenchReport, Row, goals, measure, run_bench, spread
from xcam.cli import main
from xcam.core.errors import XCamError


def test_measure_warms_up_then_rotates_the_order() -> None:
    calls: list[str] = []
    arms = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = measure(arms, repeats=4)
    assert calls[:3] == ["a", "b", "c"]  # one warm-up each
    rounds = [calls[3 + 3 * r : 6 + 3 * r] for r in range(4)]
    assert rounds == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}
    synced: list[int] = []
    measure({"a": lambda: None}, repeats=2, sync=lambda: synced.append(1))
    assert len(synced) == 3  # after the warm-ups and after every timed call


def test_spread_is_median_and_deciles() -> None:
    assert spread([5.0]) == (5.0, 5.0, 5.0)
    med, p10, p90 = spread([float(v) for v in range(1, 12)])  # 1..11
    assert med == 6.0 and p10 == pytest.approx(2.0) and p90 == pytest.approx(10.0)


def _row(method: str, library: str, backend: str, ratio: float, ms: float = 10.0) -> Row:
    return Row("resnet50", "layer4", method, library, backend, "cpu", 1, 224, ms, ms, ms, ratio, 1)


def test_goals_met_missed_and_not_measured() -> None:
    rows = [
        _row("inference", "torch", "eager", 1.0),
        _row("gradcam", "xcam", "eager", 1.1),
        _row("gradcam", "pytorch-grad-cam", "eager", 2.3),
        _row("activations", "xcam", "onnxruntime", 1.05),
        _row("scorecam", "pytorch-grad-cam", "eager", 40, ms=1000.0),
        _row("scorecam", "xcam", "eager", 40, ms=500.0),
        _row("scorecam", "xcam", "onnxruntime", 20, ms=250.0),
    ]
    report = BenchReport(rows, {}, [], [])
    found = {g["goal"].split()[0] + g["goal"].split()[1]: g for g in goals(report)}
    assert found["eagerGrad-CAM"]["status"] == "met"
    assert "pytorch-grad-cam: 2.3x" in found["eagerGrad-CAM"]["detail"]
    assert found["ONNXRuntime"]["status"] == "missed"
    sc = found["Score-CAM>="]
    assert sc["status"] == "missed" and sc["value"] == 4.0  # best xcam backend: 1000/250
    assert not any("in-graph" in g["goal"] for g in goals(report))  # no row, no claim


def test_bad_configurations_are_clear_errors() -> None:
    with pytest.raises(XCamError, match="unknown method"):
        BenchConfig(["demo"], ["nosuch"], ["eager"]).check()
    with pytest.raises(XCamError, match="unknown backend"):
        BenchConfig(["demo"], ["gradcam"], ["tensorrt"]).check()
    if not torch.cuda.is_available():
        with pytest.raises(XCamError, match="CUDA is not available"):
            BenchConfig(["demo"], ["gradcam"], ["eager"], devices=["cuda"]).check()
    res = CliRunner().invoke(main, ["bench", "--models", "demo", "--backends", "nope"])
    assert res.exit_code == 1 and "unknown backend" in res.output


def test_run_on_the_demo_model_every_backend() -> None:
    cfg = BenchConfig(
        models=["demo"],
        methods=["gradcam", "eigencam", "fullgrad"],
        backends=["eager", "torchscript", "onnxruntime", "pt2", "ingraph"],
        batches=[1, 2],
        repeats=2,
        peers=True,
    )
    lines: list[str] = []
    report = run_bench(cfg, echo=lines.append)
    assert any("onnxruntime batch 2" in line for line in lines)
    keyed = {(r.backend, r.batch, r.method, r.library): r for r in report.rows}
    for backend in cfg.backends:
        for batch in (1, 2):
            floor = keyed[(backend, batch, "inference", _floor_library(backend))]
            assert floor.ratio_to_inference == 1.0
            assert (backend, batch, "gradcam", "xcam") in keyed
    assert ("onnxruntime", 1, "activations", "xcam") in keyed
    assert ("eager", 1, "fullgrad", "xcam") in keyed
    assert ("torchscript", 1, "fullgrad", "xcam") not in keyed  # eager only, said in a note
    assert ("ingraph", 1, "eigencam", "xcam") not in keyed
    assert ("ingraph", 2, "gradcam", "xcam.lite") in keyed  # the torch-free path
    for lib in ("pytorch-grad-cam", "torchcam", "captum"):
        assert ("eager", 2, "gradcam", lib) in keyed
    assert ("eager", 1, "eigencam", "pytorch-grad-cam") in keyed
    assert any("eager PyTorch only" in n for n in report.notes)
    for r in report.rows:
        assert r.p10_ms <= r.median_ms <= r.p90_ms and r.images_per_s > 0
    payload = json.loads(report.to_json())
    assert payload["env"]["versions"]["torch"] == torch.__version__.split("+")[0]
    fields = {"model", "method", "library", "backend", "device", "batch", "median_ms", "p10_ms"}
    fields |= {"p90_ms", "ratio_to_inference", "images_per_s", "versions", "machine"}
    assert fields <= set(payload["rows"][0])


def _floor_library(backend: str) -> str:
    return "onnxruntime" if backend in ("onnxruntime", "ingraph") else "torch"


@pytest.mark.slow
def test_quick_preset_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    res = CliRunner().invoke(
        main,
        [
            "bench",
            "--quick",
            "--json",
            str(out / "q.json"),
            "--markdown",
            str(out / "q.md"),
            "--plot",
            str(out / "q.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "q.json").read_text())["rows"]
    libs = {(r["backend"], r["method"], r["library"]) for r in rows}
    assert ("eager", "gradcam", "xcam") in libs and ("onnxruntime", "gradcam", "xcam") in libs
    assert ("eager", "gradcam", "pytorch-grad-cam") in libs
    md = (out / "q.md").read_text()
    assert "| resnet18 | cpu | eager | 1 | gradcam | xcam |" in md and "## Goals" in md
    assert Image.open(out / "q.png").size[0] > 300
    assert "goal" in res.output
