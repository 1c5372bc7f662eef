"""What the activation outputs cost: plain ONNX inference vs the xcam export with activations,
and Grad-CAM from that export (ORT forward + eager tail) vs eager Grad-CAM.

Everything is measured side by side in one run, interleaved round by round in a rotating
order, so machine noise hits all variants alike; compare the ratios, not absolute times.

    python benchmarks/onnx_activation_overhead.py                 # resnet18, resnet50
    python benchmarks/onnx_activation_overhead.py --models resnet18 --batches 1 --rounds 5
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


def bench_model(
    name: str, layer: str, batches: list[int], rounds: int, size: int, threads: int, tmp: Path
) -> list[dict]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    example = torch.randn(2, 3, size, size)
    s_plain = ort_session(export_plain(model, example, tmp / f"{name}_plain.onnx"), threads)
    with_acts = tmp / f"{name}_acts.onnx"
    exporters.export(model, layer, example, with_acts)
    s_acts = ort_session(with_acts, threads)
    cam_ort = xcam.GradCAM(model, layer, backend=xcam.load(with_acts, threads=threads))
    cam_eager = xcam.GradCAM(model, layer)
    rows = []
    for b in batches:
        x = torch.randn(b, 3, size, size)
        feed = {"input": x.numpy()}

        def eager_forward() -> None:
            with torch.no_grad():
                model(x)  # noqa: B023

        med = measure(
            {
                "ort_plain": lambda: s_plain.run(["logits"], feed),  # noqa: B023
                "ort_with_activations": lambda: s_acts.run(None, feed),  # noqa: B023
                "ort_gradcam": lambda: cam_ort(x),  # noqa: B023
                "eager_forward": eager_forward,
                "eager_gradcam": lambda: cam_eager(x),  # noqa: B023
            },
            rounds,
        )
        row = {
            "model": name,
            "layer": layer,
            "batch": b,
            "size": size,
            **{f"{k}_ms": round(v, 2) for k, v in med.items()},
            "activations_overhead": round(med["ort_with_activations"] / med["ort_plain"], 3),
            "ort_gradcam_vs_plain": round(med["ort_gradcam"] / med["ort_plain"], 3),
            "ort_gradcam_vs_eager_gradcam": round(med["ort_gradcam"] / med["eager_gradcam"], 3),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    common.main(
        __doc__,
        ["resnet18:layer4", "resnet50:layer4", "resnet50:layer3"],
        "onnx_activation_overhead",
        bench_model,
        "Activation outputs: cost on ONNX Runtime",
        [
            "model",
            "layer",
            "batch",
            "ORT plain ms",
            "ORT + activations ms",
            "overhead",
            "ORT Grad-CAM ms",
            "eager fwd ms",
            "eager Grad-CAM ms",
            "ORT Grad-CAM / eager Grad-CAM",
        ],
        lambda r: [
            r["model"],
            r["layer"],
            r["batch"],
            r["ort_plain_ms"],
            r["ort_with_activations_ms"],
            f"{r['activations_overhead']}x",
            r["ort_gradcam_ms"],
            r["eager_forward_ms"],
            r["eager_gradcam_ms"],
            f"{r['ort_gradcam_vs_eager_gradcam']}x",
        ],
    )


if __name__ == "__main__":
    main()
