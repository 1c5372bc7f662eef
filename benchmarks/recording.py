"""What recording autograd only from the target layer saves (issue 14), side by side in one
run: plain inference (``inference_mode``), xcam's eager Grad-CAM (autograd from the first
target layer on), the same Grad-CAM with autograd from the input (what xcam did before:
``enable_grad`` around the whole forward) and torchcam's, the fastest peer. Two floors
beside them: ``minimal``, the issue's prototype (a hook that starts recording at the layer,
``autograd.grad``, the map; no checks), and ``inlined``, the same with every check xcam
makes (input finiteness, training flags kept, the thread's own hook, a finite map, the
degenerate flag) written out in one function: what xcam's call would cost with no
structure around it.

    python benchmarks/recording.py [--rounds 7] [--threads 2] [--cases resnet18] [--checks]

``--checks`` also times ``inlined`` without each of its checks in turn (printed, not
written).

Time: median ms per call, arms interleaved (xcam.bench.measure). Memory: the peak RSS
growth of one call at batch 32 over the loaded model (warmed up at batch 1), each arm in a
fresh process (Linux: read from /proc): with glibc's default settings, the median of 3, and
with freed memory returned to the system (xcam.bench.memory). Writes
results/recording.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading

import torch
import torch.nn.functional as F
import torchvision
from common import RESULTS, environment, measure, write_results

import xcam

CASES = [
    ("resnet50", "layer4", 224, 1),
    ("resnet50", "layer4", 224, 32),
    ("resnet18", "layer4", 112, 1),
]
ARMS = ("plain", "xcam", "full_graph", "torchcam")
FLOORS = ("minimal", "inlined")  # timed beside the arms, not in the memory readings


def hooked_gradcam(
    model: torch.nn.Module, layer: str, x: torch.Tensor, from_layer: bool
) -> torch.Tensor:
    """Grad-CAM by a forward hook and ``autograd.grad``, with no checks. ``from_layer``:
    autograd is off until the layer, whose output becomes a fresh leaf (the issue's
    prototype); else the whole forward is recorded (xcam before issue 14)."""
    seen = {}

    def hook(_m, _i, out):
        if from_layer:
            torch.set_grad_enabled(True)
            out = out.detach().requires_grad_()
        seen["a"] = out
        return out

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.no_grad() if from_layer else torch.enable_grad():
            out = model(x)
            score = out.gather(1, out.argmax(1, keepdim=True)).sum()
            (g,) = torch.autograd.grad(score, seen["a"])
    finally:
        handle.remove()
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * seen["a"].detach()).sum(1))
    up = _upsampled(cam, x.shape[-2:])
    lo = up.amin(dim=(1, 2), keepdim=True)
    return (up - lo) / (up.amax(dim=(1, 2), keepdim=True) - lo).clamp(min=1e-12)


def _upsampled(cam: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


CHECKS = ("walk", "clone", "finite")  # what `--checks` leaves out of `inlined`, one at a time


def inlined_gradcam(
    model: torch.nn.Module, layer: str, x: torch.Tensor, without: frozenset = frozenset()
):
    """The prototype with every check xcam makes, written out in one function; ``without``
    leaves some out: ``walk`` (every module in eval mode, its flag restored after),
    ``clone`` (the layer's output handed on as a copy: in-place ops after the layer never
    change A), ``finite`` (the input and the map checked for NaN / inf)."""
    from xcam.core.capture import _all_modules

    finite = "finite" not in without
    if finite and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError("the input is not finite")
    flags = [] if "walk" in without else [(m, m.training) for m in _all_modules(model)]
    for module, flag in flags:
        if flag:
            module.training = False
    seen, thread = {}, threading.get_ident()

    def hook(_m, _i, out):
        if threading.get_ident() != thread:
            return None
        seen["a"] = out.detach().requires_grad_()
        torch.set_grad_enabled(True)
        return seen["a"] if "clone" in without else seen["a"].clone()

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model(x)
            classes = out.detach().argmax(1)
            score = out.gather(1, classes[:, None])[:, 0]
            (g,) = torch.autograd.grad(score.sum(), seen["a"])
    finally:
        handle.remove()
        for module, flag in flags:
            if module.training != flag:
                module.training = flag
    with torch.no_grad():
        cam = F.relu((g.mean(dim=(2, 3))[:, :, None, None] * seen["a"].detach()).sum(1))
        if finite and not bool(torch.isfinite(cam).all()):
            raise ValueError("the map is not finite")
        up = _upsampled(cam, x.shape[-2:])
        lo = up.amin(dim=(1, 2), keepdim=True)
        span = up.amax(dim=(1, 2), keepdim=True) - lo
        maps = (up - lo) / torch.where(span > 0, span, 1.0)
    return maps, span[:, 0, 0] <= 0, out, classes, score.detach()


def arm(name: str, model: torch.nn.Module, layer: str, x: torch.Tensor):
    if name == "minimal":
        return lambda: hooked_gradcam(model, layer, x, from_layer=True)
    if name == "inlined":
        return lambda: inlined_gradcam(model, layer, x)
    if name.startswith("inlined-no-"):
        without = frozenset([name.removeprefix("inlined-no-")])
        return lambda: inlined_gradcam(model, layer, x, without)
    if name == "plain":

        def plain():
            with torch.inference_mode():
                return model(x)

        return plain
    if name == "xcam":
        cam = xcam.GradCAM(model, layer)
        return lambda: cam(x)
    if name == "full_graph":
        return lambda: hooked_gradcam(model, layer, x, from_layer=False)
    from torchcam.methods import GradCAM as TorchcamGradCAM

    def torchcam():
        with TorchcamGradCAM(model, target_layer=layer) as extractor:
            out = model(x)
            return extractor(out.argmax(1).tolist(), out)

    return torchcam


def setup(name: str, size: int, batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    return model, torch.randn(batch, 3, size, size)


PEAK = """
import contextlib, sys, torch
sys.path.insert(0, {bench!r})
import recording
from xcam.bench.memory import cpu_release, peak_growth_mb
torch.set_num_threads({threads})
model, x = recording.setup({name!r}, {size}, {batch})
fn = recording.arm({arm!r}, model, {layer!r}, x)
with torch.inference_mode():  # warm-up at batch 1: lazy init, not the batch's memory
    model(x[:1])
with cpu_release() if {release} else contextlib.nullcontext(True) as readable:
    assert readable
    print(peak_growth_mb(fn, "cpu"))
"""


def peak_growth_mb(arm_name: str, case: tuple, threads: int, release: bool) -> float:
    """Peak RSS growth (MB) of one call over the loaded model, in a fresh process;
    ``release``: with freed memory returned to the system (xcam.bench.memory), else with
    glibc's default allocator settings."""
    name, layer, size, batch = case
    code = PEAK.format(
        bench=str(RESULTS.parent),
        threads=threads,
        name=name,
        size=size,
        batch=batch,
        arm=arm_name,
        layer=layer,
        release=release,
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _merged(rows: list[dict]) -> list[dict]:
    """``rows`` in place of the same cases of the results on disk, in ``CASES``' order."""
    key = ("model", "layer", "size", "batch")
    path = RESULTS / "recording.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    found = {tuple(r[k] for k in key): r for r in (*old, *rows)}
    return [found[c] for c in map(tuple, CASES) if c in found]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", nargs="*", help="only these models (default: every case)")
    p.add_argument(
        "--checks",
        action="store_true",
        help="also time `inlined` without each of its checks, one at a time (printed only)",
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for case in CASES:
        name, layer, size, batch = case
        if a.cases and name not in a.cases:
            continue
        model, x = setup(name, size, batch)
        names = (*ARMS, *FLOORS, *(f"inlined-no-{c}" for c in CHECKS if a.checks))
        arms = {k: arm(k, model, layer, x) for k in names}
        med = measure(arms, a.rounds if batch == 1 else 3)
        if a.checks:
            ratios = {k: round(v / med["plain"], 3) for k, v in med.items()}
            print(f"{name} {size}² b{batch}, × plain: {ratios}", flush=True)
            med = {k: v for k, v in med.items() if not k.startswith("inlined-no-")}
        row = {"model": name, "layer": layer, "size": size, "batch": batch}
        row.update({f"{k}_ms": round(v, 1) for k, v in med.items()})
        row.update({f"{k}_vs_plain": round(med[k] / med["plain"], 3) for k in med if k != "plain"})
        if batch == 32:
            # glibc's default peaks vary by tens of MB between processes: the median of 3;
            # with freed memory returned, one reading repeats to the megabyte
            peaks = {k: [peak_growth_mb(k, case, a.threads, False) for _ in range(3)] for k in ARMS}
            row.update({f"{k}_peak_mb": round(statistics.median(v)) for k, v in peaks.items()})
            row.update(
                {f"{k}_released_mb": round(peak_growth_mb(k, case, a.threads, True)) for k in ARMS}
            )
        print(json.dumps(row), flush=True)
        rows.append(row)
    if a.cases:  # the other cases' rows stay as the last full run measured them
        rows = _merged(rows)
    header = [
        "model",
        "input",
        "batch",
        "plain ms",
        *[f"{k} (× plain)" for k in (*ARMS[1:], *FLOORS)],
        "peak MB: plain / xcam / full graph / torchcam",
        "the same, freed memory returned",
    ]

    def cells(r: dict) -> list[object]:
        peaks = " / ".join(str(r.get(f"{k}_peak_mb", "–")) for k in ARMS)
        released = " / ".join(str(r.get(f"{k}_released_mb", "–")) for k in ARMS)
        ratios = [
            f"{r[f'{k}_ms']} ({r[f'{k}_vs_plain']:.2f}×)" if f"{k}_ms" in r else "–"
            for k in (*ARMS[1:], *FLOORS)
        ]
        return [
            f"{r['model']}:{r['layer']}",
            f"{r['size']}²",
            r["batch"],
            r["plain_ms"],
            *ratios,
            peaks,
            released,
        ]

    print(
        write_results(
            RESULTS / "recording",
            environment(a.threads),
            rows,
            "Autograd from the target layer: cost and memory against plain inference",
            "Median ms per call, arms interleaved in one run; peak memory: RSS growth of one call "
            "at batch 32 over the warmed-up model, each arm in a fresh process: with glibc's "
            "default settings (the median of 3: they scatter by tens of MB, as glibc keeps some "
            "freed tensors in its heap), and with freed memory returned to the system "
            "(xcam.bench.memory; repeats to the megabyte) (`python benchmarks/recording.py`).",
            header,
            cells,
        )
    )


if __name__ == "__main__":
    main()
