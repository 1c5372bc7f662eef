"""Explain image files end to end: read, batch, explain, write overlays, maps and predictions.

Used by ``xcam explain`` and ``xcam demo``. Unreadable images are reported and skipped;
the rest of the job finishes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xcam.errors import InputError
from xcam.images import load_image, preprocess
from xcam.methods.base import BaseCAM
from xcam.models import ModelInfo
from xcam.targets import Targets


@dataclass
class JobReport:
    """What an explain job wrote and what it could not do."""

    out: Path
    items: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    predictions: Path | None = None


def _unique_stem(path: Path, taken: set[str]) -> str:
    stem, n = path.stem, 1
    while stem in taken:
        n += 1
        stem = f"{path.stem}_{n}"
    taken.add(stem)
    return stem


def top_predictions(logits: torch.Tensor, info: ModelInfo, k: int = 5) -> list[dict[str, Any]]:
    """Top-k classes with probabilities (softmax; sigmoid for a single-logit head)."""
    logits = logits.detach().float().cpu()
    if logits.dim() != 1:
        return [{"output": logits.tolist()}]
    if logits.numel() == 1:
        p = float(torch.sigmoid(logits[0]))
        return [{"class": 1, "name": "positive", "probability": p, "logit": float(logits[0])}]
    probs = logits.softmax(0)
    top = probs.topk(min(k, probs.numel()))
    return [
        {"class": int(c), "name": info.class_name(int(c)), "probability": float(p)}
        for p, c in zip(top.values, top.indices, strict=True)
    ]


def explain_files(
    info: ModelInfo,
    paths: Sequence[Path],
    method: BaseCAM,
    out: Path,
    targets: Targets = None,
    batch_size: int = 8,
    alpha: float = 0.5,
    colormap: str = "jet",
    device: str | torch.device = "cpu",
    on_progress: Callable[[int], None] | None = None,
) -> JobReport:
    """Explain each image of ``paths`` and write ``<stem>_<method>.png`` / ``.npy`` to ``out``.

    The ``.npy`` map is float32 in ``[0, 1]`` at the image's own size, aligned with the
    overlay. A method whose maps are input-shaped attributions ``[B, C, H, W]`` (Guided
    Backprop, Guided Grad-CAM) writes instead the attribution's picture
    (:func:`xcam.viz.attribution_image`) and the raw float32 ``[C, H_img, W_img]``
    attribution, resized bilinearly; each item's ``kind`` is ``"attribution"`` or
    ``"heatmap"``. ``predictions.json`` lists every image's top classes, target and files.
    """
    from xcam.viz import (
        attribution_image,
        overlay,
        resize_attribution,
        resize_map,
        save_png,
    )

    out.mkdir(parents=True, exist_ok=True)
    report = JobReport(out)
    taken: set[str] = set()
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        loaded = []
        for p in chunk:
            try:
                loaded.append((p, load_image(p)))
            except InputError as e:
                report.errors.append({"image": str(p), "error": str(e)})
        if loaded:
            x = preprocess([im for _, im in loaded], info.input_size, info.mean, info.std)
            result = method(x.to(device), targets=targets).cpu()
            for i, (p, im) in enumerate(loaded):
                stem = f"{_unique_stem(p, taken)}_{method.name}"
                size = (im.height, im.width)
                if result.maps.dim() == 4:  # an input-shaped attribution (Guided Backprop)
                    kind = "attribution"
                    attr = resize_attribution(result.maps[i], size)
                    np.save(out / f"{stem}.npy", attr.astype(np.float32))
                    save_png(attribution_image(attr), out / f"{stem}.png")
                else:
                    kind = "heatmap"
                    cam = resize_map(result.maps[i], size)
                    np.save(out / f"{stem}.npy", cam.astype(np.float32))
                    save_png(overlay(im, cam, alpha=alpha, colormap=colormap), out / f"{stem}.png")
                target = (
                    int(result.targets[i]) if isinstance(result.targets, torch.Tensor) else None
                )
                report.items.append(
                    {
                        "image": str(p),
                        "predictions": top_predictions(result.logits[i], info),
                        "target": target,
                        "target_name": None if target is None else info.class_name(target),
                        "score": float(result.scores[i]),
                        "kind": kind,
                        "overlay": f"{stem}.png",
                        "map": f"{stem}.npy",
                        "degenerate": bool(result.degenerate[i]),
                    }
                )
        if on_progress is not None:
            on_progress(len(chunk))
    report.predictions = out / "predictions.json"
    payload = {
        "model": info.spec,
        "method": method.name,
        "layers": method.layers,
        "input_size": list(info.input_size),
        "images": report.items,
        "errors": report.errors,
    }
    report.predictions.write_text(json.dumps(payload, indent=2) + "\n")
    return report
