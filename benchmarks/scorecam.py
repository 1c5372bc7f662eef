"""Score-CAM and Ablation-CAM, the slow methods: xcam (eager and ONNX Runtime) next to
pytorch-grad-cam, the best-known implementation, on the same model, layer and input, in one run.

Arms, interleaved in a rotating order (medians):
- ``peer``: pytorch-grad-cam's ScoreCAM (its default batch of 16 masked inputs);
- ``xcam_eager`` / ``xcam_ort``: xcam's ScoreCAM (the paper's weights: softmax over classes)
  with the masked forwards in eager PyTorch / through ONNX Runtime;
- ``xcam_ort_peer_variant``: the same weights as the peer (``channel_softmax=True``), to
  show equal maps: its map is compared with the peer's (max difference, correlation);
- ``peer_ablation`` / ``xcam_ablation``: Ablation-CAM. The peer runs the whole model for
  each ablated channel; xcam only the part after the layer (its tail).

    python benchmarks/scorecam.py                            # resnet18 layer4, 224², batch 1
    python benchmarks/scorecam.py --models resnet50:layer4 --rounds 3
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the peer prints a progress bar per sample

import common
import numpy as np
import torch
import torchvision
from common import measure

import exporters
import xcam


def _timed(
    model: torch.nn.Module,
    layer: str,
    backend: object,
    x: torch.Tensor,
    classes: torch.Tensor,
    rounds: int,
) -> tuple[dict[str, float], dict[str, object]]:
    """Every arm on ``x``, interleaved: ``(median ms per arm, each arm's last output)``."""
    from pytorch_grad_cam import AblationCAM as PeerAblationCAM
    from pytorch_grad_cam import ScoreCAM as PeerScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = model.get_submodule(layer)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    peer = PeerScoreCAM(model, [module])
    ours = xcam.ScoreCAM(model, layer)
    ours_ort = xcam.ScoreCAM(model, layer, backend=backend)
    variant = xcam.ScoreCAM(model, layer, backend=backend, channel_softmax=True)
    peer_abl = PeerAblationCAM(model, [module])
    ours_abl = xcam.AblationCAM(model, layer)
    out: dict[str, object] = {}
    med = measure(
        {
            "peer": lambda: out.__setitem__("peer", peer(input_tensor=x, targets=targets)),
            "xcam_eager": lambda: out.__setitem__("eager", ours(x, classes)),
            "xcam_ort": lambda: out.__setitem__("ort", ours_ort(x, classes)),
            "xcam_ort_peer_variant": lambda: out.__setitem__("variant", variant(x, classes)),
            "peer_ablation": lambda: out.__setitem__(
                "peer_abl", peer_abl(input_tensor=x, targets=targets)
            ),
            "xcam_ablation": lambda: out.__setitem__("abl", ours_abl(x, classes)),
        },
        rounds,
    )
    peer.activations_and_grads.release()
    peer_abl.activations_and_grads.release()
    return med, out


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two maps, over every pixel of the batch."""
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def _row(
    name: str, layer: str, b: int, size: int, med: dict[str, float], out: dict[str, object]
) -> dict:
    """The figures of one batch: times, speed-ups, and how the maps agree."""
    abl_peer = torch.from_numpy(np.asarray(out["peer_abl"])).float()
    abl_ours = out["abl"].maps  # type: ignore[attr-defined]
    peer_maps = torch.from_numpy(np.asarray(out["peer"])).float()
    var_maps = out["variant"].maps  # type: ignore[attr-defined]
    eager_vs_ort = float((out["eager"].maps - out["ort"].maps).abs().max())  # type: ignore[attr-defined]
    return {
        "model": name,
        "layer": layer,
        "batch": b,
        "size": size,
        **{f"{k}_ms": round(v, 1) for k, v in med.items()},
        "speedup_eager": round(med["peer"] / med["xcam_eager"], 2),
        "speedup_ort": round(med["peer"] / med["xcam_ort"], 2),
        "peer_variant_max_diff": round(float((peer_maps - var_maps).abs().max()), 4),
        "peer_variant_corr": round(_corr(peer_maps, var_maps), 4),
        "eager_vs_ort_max_diff": round(eager_vs_ort, 6),
        "speedup_ablation": round(med["peer_ablation"] / med["xcam_ablation"], 1),
        "ablation_max_diff": round(float((abl_peer - abl_ours).abs().max()), 4),
        "ablation_corr": round(_corr(abl_peer, abl_ours), 4),
    }


def bench(
    name: str, layer: str, batches: list[int], rounds: int, size: int, threads: int, tmp: Path
) -> list[dict]:
    import pytorch_grad_cam  # noqa: F401  (a missing peer fails before the export)

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    path = tmp / f"{name}_{layer}.onnx"
    exporters.export(model, layer, torch.randn(1, 3, size, size), path)
    backend = xcam.load(path, threads=threads)
    rows = []
    for b in batches:
        x = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(1))
        classes = model(x).argmax(1)
        med, out = _timed(model, layer, backend, x, classes, rounds)
        row = _row(name, layer, b, size, med, out)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    common.main(
        __doc__,
        ["resnet18:layer4"],
        "scorecam",
        bench,
        "Score-CAM and Ablation-CAM: xcam vs pytorch-grad-cam",
        [
            "model",
            "layer",
            "batch",
            "peer ms",
            "xcam eager ms",
            "xcam ORT ms",
            "speed-up eager",
            "speed-up ORT",
            "peer variant: max diff / corr",
            "Ablation-CAM peer ms",
            "xcam ms",
            "speed-up",
            "max diff / corr",
        ],
        lambda r: [
            r["model"],
            r["layer"],
            r["batch"],
            r["peer_ms"],
            r["xcam_eager_ms"],
            r["xcam_ort_ms"],
            f"{r['speedup_eager']}x",
            f"{r['speedup_ort']}x",
            f"{r['peer_variant_max_diff']} / {r['peer_variant_corr']}",
            r["peer_ablation_ms"],
            r["xcam_ablation_ms"],
            f"{r['speedup_ablation']}x",
            f"{r['ablation_max_diff']} / {r['ablation_corr']}",
        ],
    )


if __name__ == "__main__":
    main()
