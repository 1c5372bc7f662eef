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
    overwrite: bool = False,
) -> JobReport:
    """Explain each image of ``paths`` and write ``<stem>_<method>.png`` / ``.npy`` to ``out``.

    The ``.npy`` map is float32 in ``[0, 1]`` at the image's own size, aligned with the
    overlay. A method whose maps are input-shaped attributions ``[B, C, H, W]`` (Guided
    Backprop, Guided Grad-CAM) writes instead the attribution's picture
    (:func:`xcam.viz.attribution_image`) and the raw float32 ``[C, H_img, W_img]``
    attribution, resized bilinearly; each item's ``kind`` is ``"attribution"`` or
    ``"heatmap"``. ``predictions.json`` lists every image's top classes, target and files.

    Files are written atomically. Files of an identical earlier run (same model, method,
    layers, input size and target) are replaced; files of a *different* run in ``out`` are
    an :class:`InputError` unless ``overwrite``, so one run never silently clobbers another.
    """
    from xcam.files import atomic
    from xcam.viz import (
        attribution_image,
        overlay,
        resize_attribution,
        resize_map,
        save_png,
    )

    taken: set[str] = set()
    stems = {p: f"{_unique_stem(p, taken)}_{method.name}" for p in paths}
    run = {
        "model": info.spec,
        "method": method.name,
        "layers": method.layers,
        "input_size": list(info.input_size),
        "target": None if callable(targets) else repr(targets),
    }
    if not overwrite:
        _check_clobber(out, [f"{s}{ext}" for s in stems.values() for ext in (".png", ".npy")], run)
    out.mkdir(parents=True, exist_ok=True)
    report = JobReport(out)
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
                stem = stems[p]
                size = (im.height, im.width)
                if result.maps.dim() == 4:  # an input-shaped attribution (Guided Backprop)
                    kind = "attribution"
                    arr = resize_attribution(result.maps[i], size)
                    picture = attribution_image(arr)
                else:
                    kind = "heatmap"
                    arr = resize_map(result.maps[i], size)
                    picture = overlay(im, arr, alpha=alpha, colormap=colormap)
                with atomic(out / f"{stem}.npy") as tmp, open(tmp, "wb") as f:
                    np.save(f, arr.astype(np.float32))
                save_png(picture, out / f"{stem}.png")
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
        "run": run,
        "images": report.items,
        "errors": report.errors,
    }
    with atomic(report.predictions) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    return report


def _check_clobber(out: Path, names: list[str], run: dict[str, Any]) -> None:
    """Refuse to replace files in ``out`` that a different run wrote."""
    existing = [n for n in [*names, "predictions.json"] if (out / n).exists()]
    if not existing:
        return
    try:
        previous = json.loads((out / "predictions.json").read_text()).get("run")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous == run:
        return  # the same job again: its files are replaced
    raise InputError(
        f"{out} already holds {len(existing)} file(s) this run would replace (e.g. "
        f"{existing[0]}), written by a different run or by something else; pass --overwrite "
        "(overwrite=True) to replace them, or choose another --out"
    )
