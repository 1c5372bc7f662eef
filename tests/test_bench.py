"""`xcam bench`: the timing loop, the statistics, the goals, the outputs, and real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from xcam.bench import BenchConfig, BenchReport, Row, goals, measure, run_bench, spread, to_markdown
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


def _mem_row(method: str, library: str, batch: int, ms: float, peak: float | None) -> Row:
    r = _row(method, library, "eager", 1.0, ms=ms)
    r.batch, r.peak_mb = batch, peak
    return r


def test_the_fastest_peer_and_memory_goals() -> None:
    rows = [
        _mem_row("inference", "torch", 1, 10.0, 2.0),
        _mem_row("gradcam", "xcam", 1, 11.0, 3.0),
        _mem_row("gradcam", "torchcam", 1, 12.0, 9.0),
        _mem_row("gradcam", "captum", 1, 10.5, 9.0),  # the fastest peer at batch 1
        _mem_row("inference", "torch", 32, 300.0, 400.0),
        _mem_row("gradcam", "xcam", 32, 310.0, 430.0),
        _mem_row("gradcam", "torchcam", 32, 330.0, 2700.0),
        _mem_row("layercam", "xcam", 32, 320.0, None),
    ]
    found = goals(BenchReport(rows, {}, [], []))
    peer = [g for g in found if g["goal"] == "eager xcam faster than the fastest peer"]
    assert [g["status"] for g in peer] == ["missed", "met"]  # 11 vs captum 10.5; 310 vs 330
    assert "captum 10.5 ms" in peer[0]["detail"] and peer[1]["value"] == round(330 / 310, 3)
    memory = [g for g in found if g["goal"].startswith("peak memory")]
    assert len(memory) == 1  # at the largest batch only
    assert memory[0]["status"] == "met" and memory[0]["value"] == round(430 / 400, 3)
    assert "torchcam 2700 MB" in memory[0]["detail"]
    rows[5].peak_mb = 460.0
    memory = [g for g in goals(BenchReport(rows, {}, [], [])) if "peak memory" in g["goal"]]
    assert memory[0]["status"] == "missed"
    rows[4].peak_mb = None
    memory = [g for g in goals(BenchReport(rows, {}, [], [])) if "peak memory" in g["goal"]]
    assert memory[0]["status"] == "not measured"


def test_peak_memory_reads_one_calls_need() -> None:
    """A call that holds 200 MB at its peak reads about 200 MB, one that allocates nothing
    about 0, and the readings repeat (freed memory goes back to the system)."""
    from xcam.bench.memory import cpu_release, peak_growth_mb, rss_supported

    if not rss_supported():
        pytest.skip("peak resident set readings need Linux /proc and glibc")

    def hold_200mb() -> float:
        t = torch.ones(50 * 2**20)  # 200 MB, every page touched
        return float(t[-1])

    with cpu_release() as readable:
        assert readable
        big = [peak_growth_mb(hold_200mb, "cpu") for _ in range(3)]
        small = peak_growth_mb(lambda: None, "cpu")
    assert all(190 <= b <= 230 for b in big), big
    assert max(big) - min(big) < 8 and small < 8


def test_bench_rows_carry_peak_memory_except_onnx_runtime() -> None:
    cfg = BenchConfig(["demo"], ["gradcam"], ["eager", "onnxruntime"], batches=[4], repeats=1)
    report = run_bench(cfg, echo=lambda _: None)
    for r in report.rows:
        if r.backend == "eager":
            assert r.peak_mb is not None and r.peak_mb >= 0
        else:  # the session's arena holds what a call needs after warm-up
            assert r.peak_mb is None
    md = to_markdown(report)
    assert "| peak MB |" in md and "– where ONNX Runtime's arena holds it" in md
    assert any("peak memory" in g["goal"] for g in report.goals)
    off_cfg = BenchConfig(["demo"], ["gradcam"], ["eager"], repeats=1, memory=False)
    off = run_bench(off_cfg, echo=lambda _: None)
    assert all(r.peak_mb is None for r in off.rows)


def test_peers_are_timed_on_token_layers_with_their_reshape() -> None:
    """A ViT's token layer: pytorch-grad-cam's arm gets the layer's layout as its
    reshape_transform (and computes the map xcam does); torchcam and captum, which take
    none, are left out with the reason."""
    from tiny_transformers import SIZE, vit

    import xcam
    from xcam.bench.peers import peer_arm
    from xcam.core.tokens import Layout

    model = vit()
    layer = "encoder.layers.encoder_layer_1.ln_1"
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    classes = torch.tensor([1, 4])
    layout = Layout("cls+grid", prefix=1)
    arm = peer_arm("pytorch-grad-cam", "gradcam", model, layer, layout)
    maps = torch.as_tensor(arm(x, classes))
    ours = xcam.GradCAM(model, layer)(x, classes).maps
    for a, b in zip(maps, ours, strict=True):
        assert float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) > 0.99
    for lib in ("torchcam", "captum"):
        why = peer_arm(lib, "gradcam", model, layer, layout)
        assert isinstance(why, str) and "token layers" in why
