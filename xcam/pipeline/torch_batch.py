"""The torch explainer of a dataset job: a :class:`~xcam.methods.base.BaseCAM` on a model
(eager, or an exported file read through its backend), one batch at a time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xcam.core.decision import BOXES, PRESENT
from xcam.core.result import Attribution
from xcam.core.targets import Targets, score_functions
from xcam.methods.base import BaseCAM
from xcam.models import ModelInfo
from xcam.pipeline.batch import Explained, top_predictions, write_item


def run_settings(info: ModelInfo, method: BaseCAM, targets: Targets, **extra: Any) -> dict:
    """Every option that changes a job's outputs, as plain data: two jobs with equal
    settings write identical files (the model's weights enter by their hash)."""
    if score_functions(targets):
        fns = [targets] if callable(targets) else list(targets)  # type: ignore[arg-type]
        target = "callable " + ", ".join(getattr(f, "__qualname__", None) or repr(f) for f in fns)
    else:
        target = repr(targets.tolist() if isinstance(targets, torch.Tensor) else targets)
    return {
        "model": info.spec,
        "model_sha256": info.fingerprint,
        **method.settings(),
        "input_size": list(info.input_size),
        "mean": list(info.mean),
        "std": list(info.std),
        "target": target,
        **extra,
    }


class MethodBatch:
    """``method`` on ``info``'s model: the :class:`~xcam.pipeline.batch.BatchExplainer` of
    torch models and of exported files read through the main library."""

    def __init__(
        self,
        info: ModelInfo,
        method: BaseCAM,
        targets: Targets = None,
        device: str | torch.device = "cpu",
        target_column: str | None = None,
    ):
        self.info, self.method, self.targets, self.device = info, method, targets, device
        self.name = method.name
        self.input_size = tuple(info.input_size)
        self.mean, self.std, self.classes = tuple(info.mean), tuple(info.std), info.classes
        self.num_classes = len(info.classes) if info.classes else None
        self.per_label = targets in (PRESENT, BOXES)
        self.target_column = target_column

    def settings(self) -> dict[str, Any]:
        extra = {"target_column": self.target_column} if self.target_column else {}
        return run_settings(self.info, self.method, self.targets, **extra)

    def __call__(self, x: np.ndarray, labels: Sequence[int] | None) -> list[Explained]:
        batch = torch.from_numpy(x).to(self.device)
        targets = self.targets if labels is None else list(labels)
        result = self.method(batch, targets=targets).cpu()
        attribution = isinstance(result, Attribution)
        out = []
        for i in range(x.shape[0]):
            target = int(result.targets[i]) if isinstance(result.targets, torch.Tensor) else None
            fields = {
                "predictions": top_predictions(
                    result.logits[i], self.classes, activation=result.activation
                ),
                "target": target,
                "target_name": None if target is None else self._target_name(result, target),
                "score": float(result.scores[i]),
                "degenerate": bool(result.degenerate[i]),
            }
            if not bool(torch.isfinite(result.logits[i]).all()):  # strict JSON: no inf / NaN
                fields["warning"] = (
                    "the model's output holds infinite or NaN values: the probabilities and "
                    "scores that depend on them are null"
                )
            out.append(Explained(result.maps[i].float().numpy(), fields, attribution))
        return out

    def _target_name(self, result: Any, target: int) -> str:
        """A class's name; a single-output head's decision is ``positive`` or ``negative``."""
        if result.logits.dim() == 2 and result.logits.shape[1] == 1:
            return "positive" if target == 1 else "negative"
        return self.info.class_name(target)

    def rows(self, ready: list, record: Any, stems: Mapping[str, str], options: Any) -> None:
        """``--class present`` / ``--class boxes``: per image, an overlay and a map for every
        label its multi-label head says is present (``<stem>_<label>_<method>``), or for
        every box a detector finds (``<stem>_box<n>_<label>_<method>``, the box drawn on
        the overlay), and its rows in the record. A file of those names that this run did
        not write fails the image, never gets replaced."""
        if not options.overlays:
            from xcam.core.errors import XCamError

            raise XCamError(
                "--class present and --class boxes write overlays (a box is drawn on its "
                "overlay); leave out --no-overlays (overlays=False)"
            )
        x = torch.from_numpy(np.stack([r[2] for r in ready])).to(self.device)
        method, info, kind = self.method, self.info, self.targets
        result = method(x, targets=kind).cpu()
        rows_of = [(result.samples == i).nonzero()[:, 0].tolist() for i in range(len(ready))]
        boxes = kind == BOXES
        logits = {} if boxes else _image_logits(method, x, result, rows_of)
        for i, (head, image, _x, _label) in enumerate(ready):
            key = head["key"]
            rows = rows_of[i]
            if boxes:
                labels = [int(result.targets[r].label) for r in rows]
                stem_of = {
                    r: f"{stems[key]}_box{n}_{label}_{method.name}"
                    for n, (r, label) in enumerate(zip(rows, labels, strict=True))
                }
            else:
                stem_of = {r: f"{stems[key]}_{int(result.targets[r])}_{method.name}" for r in rows}
            names = [f"{stem}{ext}" for stem in stem_of.values() for ext in (".npy", ".png")]
            foreign = [n for n in names if n not in record.owned and (record.out / n).exists()]
            if foreign:
                record.add(
                    {
                        "key": key,
                        "image": head["image"],
                        "error": (
                            f"{head['image']}: its output {foreign[0]} is already in "
                            f"{record.out}, written by a different run or by something else; "
                            "pass --overwrite (overwrite=True) to replace it, or choose "
                            "another --out"
                        ),
                    }
                )
                continue
            record.claim(names)
            entries = []
            for r, stem in stem_of.items():
                shown = Explained(result.maps[r].float().numpy())
                write_item(
                    record.out, stem, image.copy(), shown, True, options.alpha, options.colormap
                )
                entry = {
                    "score": float(result.scores[r]),
                    "overlay": f"{stem}.png",
                    "map": f"{stem}.npy",
                    "degenerate": bool(result.degenerate[r]),
                }
                if boxes:
                    target = result.targets[r]
                    box = _drawn_box(record.out / f"{stem}.png", target, x.shape[-2:], info)
                    label = {"class": target.label, "name": info.class_name(target.label)}
                    entries.append({**label, "box": box, **entry})
                else:
                    label = int(result.targets[r])
                    entries.append({"class": label, "name": info.class_name(label), **entry})
            row = {**head, "stem": stems[key], "target": kind}
            if boxes:
                row["boxes"] = entries
            else:
                act = result.activation
                row["predictions"] = top_predictions(logits[i], self.classes, activation=act)
                row["labels"] = entries
            record.add({**row, "kind": "heatmap"})


def _image_logits(method, x, result, rows_of) -> dict[int, torch.Tensor]:
    """Each image's logits: a row's for an image with rows (each row's logits are its
    image's), one forward for those without."""
    bare = [i for i, rows in enumerate(rows_of) if not rows]
    found = method.source.forward(method.output)(x[bare]).detach().cpu() if bare else None
    logits = {i: found[j] for j, i in enumerate(bare)}
    logits.update({i: result.logits[rows[0]] for i, rows in enumerate(rows_of) if rows})
    return logits


def _drawn_box(png: Path, target, size, info: ModelInfo) -> list[float]:
    """Draw ``target``'s box (in the model input's pixels, ``size``) on the overlay ``png``;
    the box in the image's pixels."""
    from PIL import Image

    from xcam.viz import draw_box, save_png

    with Image.open(png) as img:
        shown = draw_box(img, target.box, info.class_name(target.label), size=size)
    save_png(shown, png)
    sy, sx = shown.height / size[0], shown.width / size[1]
    x1, y1, x2, y2 = target.box
    return [round(v, 2) for v in (x1 * sx, y1 * sy, x2 * sx, y2 * sy)]
