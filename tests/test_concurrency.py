"""One explainer, one model, one ONNX Runtime session shared by many threads; long loops."""

from __future__ import annotations

import gc
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import AroundNet

import xcam

THREADS = 8


def _inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(2, 3, 64, 64, generator=g) for _ in range(THREADS * 2)]


def _hookless(model: torch.nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


@pytest.mark.parametrize("name", ["gradcam", "scorecam", "ablationcam", "guidedbackprop"])
def test_eight_threads_share_one_eager_explainer(demo_model, name: str) -> None:
    explainer = xcam.get_method(name)(demo_model, "block3")
    xs = _inputs()
    single = [explainer(x).maps for x in xs]
    with ThreadPoolExecutor(THREADS) as pool:
        threaded = list(pool.map(lambda x: explainer(x).maps, xs))
    for i, (a, b) in enumerate(zip(single, threaded, strict=True)):
        assert torch.allclose(a, b, atol=1e-5), i
    assert _hookless(demo_model)


def test_eight_threads_share_one_onnx_runtime_session(demo_model, tmp_path: Path) -> None:
    import exporters

    path = tmp_path / "demo.onnx"
    exporters.export(demo_model, ["block3"], torch.rand(1, 3, 64, 64), path)
    explainer = xcam.GradCAM(demo_model, "block3", backend=xcam.load(path))
    xs = _inputs()
    single = [explainer(x).maps for x in xs]
    with ThreadPoolExecutor(THREADS) as pool:
        threaded = list(pool.map(lambda x: explainer(x).maps, xs))
    for a, b in zip(single, threaded, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
def test_hundreds_of_calls_leave_no_hooks_and_flat_memory(demo_model) -> None:
    explainer = xcam.GradCAM(demo_model, ["block2", "block3"])
    x = torch.rand(4, 3, 64, 64)
    for _ in range(50):  # warm up the allocator and autograd
        explainer(x)
    gc.collect()
    before = _rss_mb()
    for _ in range(400):
        explainer(x)
        assert _hookless(demo_model)
    gc.collect()
    growth = _rss_mb() - before
    # each call allocates ~1 MB of tensors; anything kept per call would be ~400 MB here
    assert growth < 40, f"memory grew by {growth:.1f} MB over 400 calls"
    live = [o for o in gc.get_objects() if type(o) is torch.Tensor and o.requires_grad]
    assert len(live) < 50  # no autograd graphs kept alive


# --- exports and tails shared by threads (issue 11) -------------------------------------------


def test_two_explainers_export_from_two_threads_at_once(demo_model) -> None:
    import copy

    models = [copy.deepcopy(demo_model), copy.deepcopy(demo_model)]
    explainers = [xcam.GradCAM(m, "block3", backend="onnxruntime") for m in models]
    xs = _inputs()[:2]
    with ThreadPoolExecutor(2) as pool:  # both first calls, so both export, at once
        maps = list(pool.map(lambda e, x: e(x).maps, explainers, xs))
    for x, got in zip(xs, maps, strict=True):
        assert torch.allclose(got, xcam.GradCAM(demo_model, "block3")(x).maps, atol=1e-4)


class _Branchy(torch.nn.Module):
    """Branches on the input's values: no exporter can record that."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        if a.mean() > 0:
            a = a * 2
        return a.mean(dim=(2, 3))


def test_a_failed_export_leaves_the_process_able_to_export(demo_model, tmp_path: Path) -> None:
    import exporters

    def bad(i: int) -> None:
        with pytest.raises(exporters.ExportError):
            exporters.export(
                _Branchy(), ["conv"], torch.rand(1, 3, 16, 16), tmp_path / f"b{i}.onnx"
            )

    def good(i: int | str) -> None:
        report = exporters.export(
            demo_model, ["block3"], torch.rand(1, 3, 64, 64), tmp_path / f"{i}.onnx"
        )
        assert report.check_seconds is not None  # exported and checked

    with ThreadPoolExecutor(4) as pool:  # failures and successes interleaved across threads
        list(pool.map(lambda i: (bad if i % 2 else good)(i), range(4)))
    good("g99")  # and, single-threaded afterwards, the process still exports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.onnx", "2.onnx", "g99.onnx"]


@pytest.mark.parametrize("name", ["gradcam", "ablationcam"])
def test_eight_threads_share_one_injected_tail(tmp_path: Path, name: str) -> None:
    import exporters
    from xcam.core.tail import InjectedTail

    model = AroundNet().eval()
    path = tmp_path / "around.onnx"
    exporters.export(model, ["body"], torch.rand(1, 3, 16, 16), path)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(1 + i % 3, 3, 16, 16, generator=g) for i in range(THREADS * 2)]
    with pytest.warns(RuntimeWarning, match="whole eager model"):
        explainer = xcam.get_method(name)(model, "body", backend=xcam.load(path))
        single = [explainer(x).maps for x in xs]
    assert isinstance(explainer._tails["body"], InjectedTail)
    with ThreadPoolExecutor(THREADS) as pool:
        threaded = list(pool.map(lambda x: explainer(x).maps, xs))
    for a, b in zip(single, threaded, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    with warnings.catch_warnings():  # each new eager Ablation-CAM warns about its tail
        warnings.simplefilter("ignore", RuntimeWarning)
        eager = [xcam.get_method(name)(model, "body")(x).maps for x in xs]
    for a, b in zip(single, eager, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_cutting_a_tail_never_breaks_other_threads_forwards(demo_model) -> None:
    """torch.fx reroutes every module call in the process while it traces: a tail cut for a
    backend explainer in one thread made plain explanations in another fail ("module is
    not installed as a submodule"). Cuts now wait for running explanations, and block new
    ones, instead."""
    import copy

    from xcam.core.tail import split_tail

    other = copy.deepcopy(demo_model)
    explainer = xcam.GradCAM(demo_model, "block3")
    x = torch.rand(2, 3, 64, 64)
    want = explainer(x).maps
    stop, errors, done = threading.Event(), [], [0]

    def explain_forever() -> None:
        while not stop.is_set():
            try:
                assert torch.allclose(explainer(x).maps, want, atol=1e-6)
                done[0] += 1
            except Exception as e:  # collected: the test fails below, naming the first
                errors.append(e)

    threads = [threading.Thread(target=explain_forever) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(30):
            tail, why = split_tail(other, "block3")
            assert tail is not None, why
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert done[0] > 0
