"""One explainer, one model, one ONNX Runtime session shared by many threads; long loops."""

from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

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
