"""In-graph Grad-CAM on ONNX Runtime: plain inference vs the export with gradients and the
Grad-CAM map inside the graph (no PyTorch at serve time), the same file explained through the
main library (``xcam.GradCAM(xcam.load(f))``) and through ``xcam.lite``, next to eager
PyTorch.

Side by side in one run, interleaved in a rotating order; medians and ratios.

    python benchmarks/ingraph_gradcam.py                    # resnet50 layer4/layer3, mbv3-large
    python benchmarks/ingraph_gradcam.py --models resnet18:layer4 --batches 1 --rounds 5
"""

from __future__ import annotations

import json
from pathlib import Path

import common
import torch
import torchvision
from common import export_plain, measure, ort_session

import exporters
import xcam
from xcam.lite import OnnxExplainer


def bench(
    name: str, layer: str, batches: list[int], rounds: int, size: int, threads: int, tmp: Path
) -> list[dict]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    example = torch.randn(2, 3, size, size)
    s_plain = ort_session(export_plain(model, example, tmp / f"{name}_plain.onnx"), threads)
    grad = tmp / f"{name}_{layer}_grad.onnx"
    report = exporters.export(model, layer, example, grad, gradients=True)
    s_grad = ort_session(grad, threads)
    eager = xcam.GradCAM(model, layer)
    # the same file through the main library and through xcam.lite (the same session settings)
    library = xcam.GradCAM(xcam.load(grad, threads=threads))
    lite = OnnxExplainer(grad, providers=["CPUExecutionProvider"], threads=threads, spin=False)
    rows = []
    for b in batches:
        x = torch.randn(b, 3, size, size)
        feed = {"input": x.numpy()}
        med = measure(
            {
                "ort_plain": lambda: s_plain.run(["logits"], feed),  # noqa: B023
                "ort_ingraph_gradcam": lambda: s_grad.run(None, feed),  # noqa: B023
                "xcam_gradcam": lambda: library(x),  # noqa: B023
                "lite_gradcam": lambda: lite(feed["input"]),  # noqa: B023
                "eager_gradcam": lambda: eager(x),  # noqa: B023
            },
            rounds,
        )
        row = {
            "model": name,
            "layer": layer,
            "batch": b,
            "size": size,
            "closed_form": bool(report.metadata.closed_form),
            **{f"{k}_ms": round(v, 2) for k, v in med.items()},
            "ingraph_vs_plain": round(med["ort_ingraph_gradcam"] / med["ort_plain"], 3),
            "xcam_vs_plain": round(med["xcam_gradcam"] / med["ort_plain"], 3),
            "lite_vs_plain": round(med["lite_gradcam"] / med["ort_plain"], 3),
            "eager_vs_plain": round(med["eager_gradcam"] / med["ort_plain"], 3),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    common.main(
        __doc__,
        ["resnet50:layer4", "resnet50:layer3", "mobilenet_v3_large:features"],
        "ingraph_gradcam",
        bench,
        "In-graph Grad-CAM on ONNX Runtime",
        [
            "model",
            "layer",
            "gradient",
            "batch",
            "ORT plain ms",
            "ORT in-graph Grad-CAM ms",
            "ratio",
            "xcam.GradCAM(xcam.load(f)) ms",
            "xcam.lite ms",
            "eager Grad-CAM ms",
            "eager / ORT plain",
        ],
        lambda r: [
            r["model"],
            r["layer"],
            "closed form" if r["closed_form"] else "backward in graph",
            r["batch"],
            r["ort_plain_ms"],
            r["ort_ingraph_gradcam_ms"],
            f"{r['ingraph_vs_plain']}x",
            f"{r['xcam_gradcam_ms']} ({r['xcam_vs_plain']}x)",
            f"{r['lite_gradcam_ms']} ({r['lite_vs_plain']}x)",
            r["eager_gradcam_ms"],
            f"{r['eager_vs_plain']}x",
        ],
    )


if __name__ == "__main__":
    main()
