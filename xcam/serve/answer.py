"""One image of a request: its upload decoded into the model's input, and its answer.

The answer holds what the model found (top-k, target, score), the map at the image's own
size — an 8-bit grey PNG by default, float32 ``.npy`` on request, base64 either way — and,
on request, the overlay PNG. Torch-free: the server of an in-graph file runs on numpy and
ONNX Runtime.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from xcam.pipeline.batch import BatchExplainer, Explained, draw, kind, map_summary

MAP_FORMATS = ("png", "npy")


def decode_upload(
    data: bytes, name: str, explainer: BatchExplainer, max_pixels: int | None
) -> tuple[Any, np.ndarray]:
    """An uploaded image's upright RGB picture and its model input ``[C, H, W]``; a bad
    upload (not an image, truncated, too many pixels) is an
    :class:`~xcam.core.errors.InputError` naming ``name``."""
    from xcam.images import image_from_bytes, preprocess_array

    image = image_from_bytes(data, name, max_pixels=max_pixels)
    x = preprocess_array([image], explainer.input_size, explainer.mean, explainer.std)[0]
    return image, x


def answer(
    name: str,
    image: Any,
    explained: Explained,
    map_format: str = "png",
    overlay: bool = False,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> dict[str, Any]:
    """The JSON of one explained image (``image``: its PIL picture, drawn over for the
    overlay)."""
    from xcam.viz import resize_attribution, resize_map

    size = (image.height, image.width)
    cam = explained.map
    full = resize_attribution(cam, size) if explained.attribution else resize_map(cam, size)
    out: dict[str, Any] = {
        "name": name,
        "width": image.width,
        "height": image.height,
        **explained.fields,
        "kind": kind(explained),
        "map": _map(full, map_format, explained.attribution),
    }
    if not explained.attribution:
        out.update(map_summary(cam, size))
    if overlay:
        out["overlay"] = {"format": "png", "data": _png(draw(image, explained, alpha, colormap))}
    return out


def _map(full: np.ndarray, fmt: str, attribution: bool) -> dict[str, Any]:
    """The map as ``fmt``: ``png`` (8-bit grey: the [0, 1] map times 255, rounded; an
    attribution's picture) or ``npy`` (float32, as ``np.load`` reads it)."""
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, full.astype(np.float32, copy=False))
        return {"format": "npy", "shape": list(full.shape), "data": _b64(buf.getvalue())}
    from PIL import Image

    if attribution:
        from xcam.viz import attribution_image

        picture = attribution_image(full)
    else:
        picture = Image.fromarray(np.rint(np.clip(full, 0, 1) * 255).astype(np.uint8), "L")
    return {"format": "png", "shape": list(full.shape), "data": _png(picture)}


def _png(picture: Any) -> str:
    buf = io.BytesIO()
    picture.save(buf, format="PNG", compress_level=1)
    return _b64(buf.getvalue())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
