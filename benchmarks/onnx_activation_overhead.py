"""What the activation outputs cost: plain ONNX inference vs the xcam export with activations,
and Grad-CAM from that export (ORT forward + eager tail) vs eager Grad-CAM.

Everything is measured side by side in one run, interleaved round by round in a rotating
order, so machine noise hits all variants alike; compare the ratios, not absolute times.

    python benchmarks/onnx_activation_overhead.py                 # resnet18, resnet50
    python benchmarks/onnx_activation_overhead.py --models resnet18 --batches 1 --rounds 5
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
    # as in xcam's backend: no spinning threads stealing the cores from torch between calls
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def bench_model(
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
    with_acts = tmp / f"{name}_acts.onnx"
    exporters.export(model, layer, example, with_acts)
    s_plain, s_acts = _session(plain, threads), _session(with_acts, threads)
    backend = xcam.load(with_acts, threads=threads)
    cam_ort = xcam.GradCAM(model, layer, backend=backend)
    cam_eager = xcam.GradCAM(model, layer)
    rows = []
    for b in batches:
        x = torch.randn(b, 3, size, size)
        feed = {"input": x.numpy()}
        variants = {
            "ort_plain": lambda: s_plain.run(["logits"], feed),  # noqa: B023
            "ort_with_activations": lambda: s_acts.run(None, feed),  # noqa: B023
            "ort_gradcam": lambda: cam_ort(x),  # noqa: B023
            "eager_forward": lambda: model(x),  # noqa: B023
            "eager_gradcam": lambda: cam_eager(x),  # noqa: B023
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        with torch.no_grad():
            for fn in variants.values():  # warm-up
                fn()
        keys = list(variants)
        for r in range(rounds):
            # rotate the order each round: whichever arm follows a torch arm pays for torch's
            # OpenMP threads still spinning, so no arm may always sit in that place
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                fn = variants[key]
                start = time.perf_counter()
                if key == "eager_forward":
                    with torch.no_grad():
                        fn()
                else:
                    fn()
                times[key].append(time.perf_counter() - start)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
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
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--models", nargs="+", default=["resnet18:layer4", "resnet50:layer4", "resnet50:layer3"]
    )
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=HERE / "results" / "onnx_activation_overhead")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.models:
            name, _, layer = spec.partition(":")
            rows += bench_model(
                name, layer or "layer4", a.batches, a.rounds, a.size, a.threads, Path(tmp)
            )
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
        f"# Activation outputs: cost on ONNX Runtime (CPU, {a.threads} threads)",
        "",
        f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, {a.size}x{a.size} input, "
        f"median of {a.rounds} interleaved rounds, {env['date']}. Reproduce: "
        "`python benchmarks/onnx_activation_overhead.py`.",
        "",
        "| model | layer | batch | ORT plain ms | ORT + activations ms | overhead | "
        "ORT Grad-CAM ms | eager fwd ms | eager Grad-CAM ms | ORT Grad-CAM / eager Grad-CAM |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['layer']} | {r['batch']} | {r['ort_plain_ms']} | "
            f"{r['ort_with_activations_ms']} | {r['activations_overhead']}x | "
            f"{r['ort_gradcam_ms']} | {r['eager_forward_ms']} | {r['eager_gradcam_ms']} | "
            f"{r['ort_gradcam_vs_eager_gradcam']}x |"
        )
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
