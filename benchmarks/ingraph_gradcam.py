"""In-graph Grad-CAM on ONNX Runtime: plain inference vs the export with gradients and the
Grad-CAM map inside the graph (no PyTorch at serve time), next to eager PyTorch.

Side by side in one run, interleaved in a rotating order; medians and ratios.

    python benchmarks/ingraph_gradcam.py                    # resnet50 layer4/layer3, mbv3-large
    python benchmarks/ingraph_gradcam.py --models resnet18:layer4 --batches 1 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import onnxruntime as ort
import torch
import torchvision

import exporters
import xcam

HERE = Path(__file__).parent


def _session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def bench(
    name: str, layer: str, batches: list[int], rounds: int, size: int, threads: int, tmp: Path
) -> list[dict]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    example = torch.randn(2, 3, size, size)
    plain = tmp / f"{name}_plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(plain),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
        )
    grad = tmp / f"{name}_{layer}_grad.onnx"
    report = exporters.export(model, layer, example, grad, gradients=True)
    s_plain, s_grad = _session(plain, threads), _session(grad, threads)
    eager = xcam.GradCAM(model, layer)
    rows = []
    for b in batches:
        x = torch.randn(b, 3, size, size)
        feed = {"input": x.numpy()}
        arms = {
            "ort_plain": lambda: s_plain.run(["logits"], feed),  # noqa: B023
            "ort_ingraph_gradcam": lambda: s_grad.run(None, feed),  # noqa: B023
            "eager_gradcam": lambda: eager(x),  # noqa: B023
        }
        for fn in arms.values():
            fn()
        times: dict[str, list[float]] = {k: [] for k in arms}
        keys = list(arms)
        for r in range(rounds):
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                start = time.perf_counter()
                arms[key]()
                times[key].append(time.perf_counter() - start)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        row = {
            "model": name,
            "layer": layer,
            "batch": b,
            "size": size,
            "closed_form": bool(report.metadata.closed_form),
            **{f"{k}_ms": round(v, 2) for k, v in med.items()},
            "ingraph_vs_plain": round(med["ort_ingraph_gradcam"] / med["ort_plain"], 3),
            "eager_vs_plain": round(med["eager_gradcam"] / med["ort_plain"], 3),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=["resnet50:layer4", "resnet50:layer3", "mobilenet_v3_large:features"],
    )
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=HERE / "results" / "ingraph_gradcam")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.models:
            name, _, layer = spec.partition(":")
            rows += bench(name, layer, a.batches, a.rounds, a.size, a.threads, Path(tmp))
    env = {
        "cpu": platform.processor() or platform.machine(),
        "threads": a.threads,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# In-graph Grad-CAM on ONNX Runtime (CPU, {a.threads} threads)",
        "",
        f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, {a.size}x{a.size} input, "
        f"median of {a.rounds} interleaved rounds, {env['date']}. Reproduce: "
        "`python benchmarks/ingraph_gradcam.py`.",
        "",
        "| model | layer | gradient | batch | ORT plain ms | ORT in-graph Grad-CAM ms | ratio | "
        "eager Grad-CAM ms | eager / ORT plain |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        kind = "closed form" if r["closed_form"] else "backward in graph"
        lines.append(
            f"| {r['model']} | {r['layer']} | {kind} | {r['batch']} | {r['ort_plain_ms']} | "
            f"{r['ort_ingraph_gradcam_ms']} | {r['ingraph_vs_plain']}x | "
            f"{r['eager_gradcam_ms']} | {r['eager_vs_plain']}x |"
        )
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
