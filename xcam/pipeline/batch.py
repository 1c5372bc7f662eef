"""One batch of a dataset job, torch-free: what an explainer returns per image, the files
and the record row written from it. Both engines (threads here, Ray workers) run these.

An *explainer* (:class:`BatchExplainer`) turns a float32 ``[B, C, H, W]`` batch into one
:class:`Explained` per image; :func:`write_item` writes that image's map (``.npy``, at the
image's own size) and overlay (``.png``, unless overlays are off) and returns its row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from xcam.core.decision import ACTIVATIONS

# the share of a map's pixels whose mass the record reports (the top 10 %)
TOP_SHARE = 0.10
# zlib level of a job's overlay PNGs: 1 writes them ~3x faster than Pillow's default 6, for
# ~1/3 more bytes (OpenCV's default too); measured in benchmarks/results/dataset.md
OVERLAY_PNG_LEVEL = 1


@dataclass
class Explained:
    """One image's explanation at the model's input size, before anything is written."""

    map: np.ndarray  # [h, w] float32 in [0, 1] (heatmap) or [C, h, w] (attribution)
    fields: dict[str, Any] = field(default_factory=dict)  # predictions, target, score, …
    attribution: bool = False  # an input-shaped attribution (Guided Backprop), not a heatmap


class BatchExplainer(Protocol):
    """What both engines call: a model (torch or ONNX Runtime) with its method."""

    name: str  # the method's name, in output file names
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] | None

    def settings(self) -> dict[str, Any]:
        """Every option that changes an output: two jobs with equal settings write the
        same files (the weights enter by their hash)."""
        ...

    def __call__(self, x: np.ndarray, labels: Sequence[int] | None) -> list[Explained]:
        """One explanation per sample of ``x``; ``labels``: the class to explain per sample
        (None: the explainer's own target, by default the top-1 class)."""
        ...


def class_name(classes: Sequence[str] | None, k: int) -> str:
    if classes is not None and 0 <= k < len(classes):
        return classes[k]
    return str(k)


def probabilities(logits: np.ndarray, activation: str | None) -> np.ndarray:
    """Every class's probability from one sample's scores ``[K]``, the numpy twin of
    :func:`xcam.core.targets.probabilities`: softmax of logits (of one logit, its sigmoid),
    or where the output already went through ``activation``, the output as it is."""
    z = logits.astype(np.float64)
    if activation == "log_softmax":
        return np.exp(z)
    if activation in ACTIVATIONS:
        return z
    if z.size == 1:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z - z.max())
    return e / e.sum()


def top_predictions(
    logits: Any, classes: Sequence[str] | None, k: int = 5, activation: str | None = None
) -> list[dict[str, Any]]:
    """Top-k classes with probabilities (see :func:`probabilities`); for a single-logit head
    its positive probability (and the raw logit); for a segmentation output ``[K, H, W]``
    the classes covering most pixels, with their share. ``classes``: the names, or anything
    with a ``classes`` attribute (a :class:`xcam.models.ModelInfo`)."""
    classes = getattr(classes, "classes", classes)
    if hasattr(logits, "detach"):  # a tensor (the torch explainer's): its values
        logits = logits.detach().float().cpu().numpy()
    z = np.asarray(logits, dtype=np.float32)
    if z.ndim == 3 and z.shape[1] * z.shape[2] > 1:  # a segmentation output
        counts = np.bincount(z.argmax(0).ravel(), minlength=z.shape[0]) / z[0].size
        order = np.argsort(-counts, kind="stable")[: min(k, z.shape[0])]
        return [
            {"class": int(c), "name": class_name(classes, int(c)), "pixels": float(counts[c])}
            for c in order
        ]
    if z.ndim != 1:
        return [{"output": z.tolist()}]
    with np.errstate(over="ignore", invalid="ignore"):
        probs = probabilities(z, activation)
    if z.size == 1:
        row = {"class": 1, "name": "positive", "probability": float(probs[0])}
        if activation is None:  # a raw logit, reported beside its probability
            row["logit"] = float(z[0])
        return [row]
    order = np.argsort(-probs, kind="stable")[: min(k, z.size)]
    return [
        {"class": int(c), "name": class_name(classes, int(c)), "probability": float(probs[c])}
        for c in order
    ]


def map_summary(cam: np.ndarray, image_size: tuple[int, int]) -> dict[str, Any]:
    """Where a heatmap ``[h, w]`` peaks, in the image's pixels ``[row, col]`` (the centre of
    the peak's cell), and the share of its mass in its top 10 % pixels (None for an all-zero
    map: no mass to share)."""
    h, w = cam.shape
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    height, width = image_size
    flat = np.sort(cam.astype(np.float64).ravel())
    total = float(flat.sum())
    top = max(1, round(TOP_SHARE * flat.size))
    return {
        "peak": [int((r + 0.5) * height / h), int((c + 0.5) * width / w)],
        "top10_mass": float(flat[-top:].sum() / total) if total > 0 else None,
    }


def output_names(stem: str, overlays: bool) -> list[str]:
    """The files an image's explanation writes: its map, and its overlay unless off."""
    return [f"{stem}.npy", f"{stem}.png"] if overlays else [f"{stem}.npy"]


def write_item(
    out: Path,
    stem: str,
    image: Any,
    explained: Explained,
    overlays: bool = True,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> dict[str, Any]:
    """Write ``<stem>.npy`` (the map at the image's size, float32) and ``<stem>.png`` (the
    overlay on ``image``, a PIL RGB image; drawn into it) atomically; the row's file and
    summary fields."""
    from xcam.viz import save_png, save_resized

    size = (image.height, image.width)
    cam = explained.map
    save_resized(cam, size, out / f"{stem}.npy", clamp=not explained.attribution)
    if overlays:
        save_png(draw(image, explained, alpha, colormap), out / f"{stem}.png", OVERLAY_PNG_LEVEL)
    row: dict[str, Any] = {
        "kind": kind(explained),
        "overlay": f"{stem}.png" if overlays else None,
        "map": f"{stem}.npy",
    }
    if not explained.attribution:
        row.update(map_summary(cam, size))
    return row


def kind(explained: Explained) -> str:
    """What an explanation is, in records and answers: ``heatmap`` or ``attribution``."""
    return "attribution" if explained.attribution else "heatmap"


def draw(image: Any, explained: Explained, alpha: float = 0.5, colormap: str = "jet") -> Any:
    """``image`` (a PIL RGB picture) drawn over with its explanation, in place: the
    heatmap's overlay, or an attribution's picture."""
    from xcam.viz import attribution_into, overlay_into

    if explained.attribution:
        return attribution_into(image, explained.map)
    return overlay_into(image, explained.map, alpha=alpha, colormap=colormap)


def decode(path: Path, explainer: BatchExplainer) -> tuple[Any, list[int], np.ndarray]:
    """An image file as the model takes it: the upright RGB image (drawn over later), its
    stamp (size and mtime: unchanged files are skipped on resume) and its input
    ``[C, H, W]``. An unreadable file is an :class:`~xcam.core.errors.InputError`."""
    from xcam.images import load_image, preprocess_array
    from xcam.record import image_stamp

    try:  # before reading: a file replaced meanwhile is not recorded as unchanged
        stamp = image_stamp(path)
    except OSError:
        stamp = None
    image = load_image(path)  # it names a missing or unreadable file best
    if stamp is None:
        from xcam.core.errors import InputError

        raise InputError(f"{path}: its size and time can't be read")
    x = preprocess_array([image], explainer.input_size, explainer.mean, explainer.std)[0]
    return image, stamp, x
