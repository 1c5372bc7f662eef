"""Pictures of maps (the I/O edge: numpy, PIL and matplotlib's colormaps live here)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def _to_numpy_map(cam: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = cam.detach().float().cpu().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam)
    if arr.ndim != 2:
        raise ValueError(f"a map is 2-D [H, W], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("the map contains NaN or infinite values")
    return arr.astype(np.float32)


def resize_map(cam: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``[H, W]`` map resized (bilinear) to ``size`` = (H, W), values kept in range."""
    arr = _to_numpy_map(cam)
    if arr.shape == tuple(size):
        return arr
    t = torch.from_numpy(arr)[None, None]
    out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return out[0, 0].clamp(float(arr.min()), float(arr.max())).numpy()


def _to_numpy_attribution(attr: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(attr, torch.Tensor):
        arr = attr.detach().float().cpu().numpy()
    else:
        arr = np.asarray(attr, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"an attribution is [C, H, W] (or [H, W]), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("the attribution contains NaN or infinite values")
    return arr.astype(np.float32)


def resize_attribution(attr: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A raw ``[C, H, W]`` attribution resized (bilinear) to ``size`` = (H, W), not rescaled."""
    arr = _to_numpy_attribution(attr)
    if arr.shape[1:] == tuple(size):
        return arr
    t = torch.from_numpy(arr)[None]
    out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return out[0].numpy()


def attribution_image(attr: torch.Tensor | np.ndarray, spread: float = 0.15):
    """A raw ``[C, H, W]`` attribution (Guided Backprop…) as an RGB PIL image.

    Standardised over all its values and shown as ``0.5 + spread · (a − mean) / std``,
    clipped to ``[0, 1]``: grey is no attribution, a colour is the sign per channel.
    Three channels are shown as RGB; any other number is averaged into one grey channel.
    An all-constant attribution is plain grey.
    """
    from PIL import Image

    arr = _to_numpy_attribution(attr)
    if arr.shape[0] != 3:
        arr = arr.mean(axis=0, keepdims=True)
    std = float(arr.std())
    scaled = 0.5 + spread * (arr - float(arr.mean())) / std if std > 0 else np.full_like(arr, 0.5)
    pixels = (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(pixels))


def colorize(cam: torch.Tensor | np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A map in ``[0, 1]`` to an ``[H, W, 3]`` uint8 RGB picture through a matplotlib colormap."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(f"unknown colormap {colormap!r} (any matplotlib colormap name)") from None
    arr = np.clip(_to_numpy_map(cam), 0.0, 1.0)
    return (cmap(arr)[..., :3] * 255.0 + 0.5).astype(np.uint8)


def overlay(image, cam: torch.Tensor | np.ndarray, alpha: float = 0.5, colormap: str = "jet"):
    """Blend a colorized map onto ``image`` (PIL image or ``[H, W, 3]`` uint8) at its size.

    ``alpha`` is the weight of the heatmap: 0 shows only the image, 1 only the map.
    """
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(image)
    heat = colorize(resize_map(cam, (base.height, base.width)), colormap)
    mixed = (1 - alpha) * np.asarray(base, dtype=np.float32) + alpha * heat.astype(np.float32)
    return Image.fromarray(np.clip(mixed + 0.5, 0, 255).astype(np.uint8))


def grid(
    cells: Sequence[Sequence],
    col_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    cell_size: int = 160,
    pad: int = 4,
):
    """Lay PIL images out in rows and columns (each resized to ``cell_size``²) with labels."""
    from PIL import Image, ImageDraw, ImageFont

    rows = [list(r) for r in cells]
    if not rows or not any(rows):
        raise ValueError("grid() needs at least one image")
    ncols = max(len(r) for r in rows)
    font = ImageFont.load_default(size=max(10, cell_size // 12))
    top = cell_size // 7 if col_labels else 0
    left = cell_size // 2 if row_labels else 0
    width = left + ncols * (cell_size + pad) + pad
    height = top + len(rows) * (cell_size + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(col_labels or []):
        draw.text((left + pad + j * (cell_size + pad), 2), str(label), fill="black", font=font)
    for i, row in enumerate(rows):
        y = top + pad + i * (cell_size + pad)
        if row_labels and i < len(row_labels):
            draw.text((2, y + cell_size // 2 - 6), str(row_labels[i]), fill="black", font=font)
        for j, cell in enumerate(row):
            img = cell.convert("RGB").resize((cell_size, cell_size))
            canvas.paste(img, (left + pad + j * (cell_size + pad), y))
    return canvas


def save_png(image, path: str | Path) -> Path:
    """Write ``image`` as a PNG, atomically (no half-written file after an interrupt)."""
    from xcam.files import atomic

    path = Path(path)
    with atomic(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def panel(
    images: Sequence,
    maps: dict[str, torch.Tensor | np.ndarray],
    alpha: float = 0.5,
    colormap: str = "jet",
    cell_size: int = 160,
):
    """One row per image: the image, then its overlay for each titled set of maps.

    ``maps`` maps a column title (a layer such as ``"layer3"``, or a method such as
    ``"Grad-CAM"``) to ``[B, H, W]`` maps for the B images: the layer1..layer4 view of a
    resnet, or methods side by side.
    """
    for title, m in maps.items():
        if len(m) != len(images):
            raise ValueError(f"{title!r}: {len(m)} maps for {len(images)} images")
    rows = [
        [img, *(overlay(img, m[i], alpha=alpha, colormap=colormap) for m in maps.values())]
        for i, img in enumerate(images)
    ]
    return grid(rows, ["image", *maps], cell_size=cell_size)


def method_layer_grid(
    image,
    maps: dict[str, dict[str, torch.Tensor | np.ndarray]],
    alpha: float = 0.5,
    colormap: str = "jet",
    cell_size: int = 160,
):
    """One image, one row per method and one column per layer: ``maps[method][layer]`` is an
    ``[H, W]`` map (e.g. layer1..layer4 of a resnet for Grad-CAM, Layer-CAM, Score-CAM)."""
    layers: list[str] = []
    for per_layer in maps.values():
        layers += [name for name in per_layer if name not in layers]
    rows = []
    for method, per_layer in maps.items():
        missing = [name for name in layers if name not in per_layer]
        if missing:
            raise ValueError(f"{method!r} has no map for layer(s) {', '.join(missing)}")
        rows.append([overlay(image, per_layer[n], alpha, colormap) for n in layers])
    return grid(rows, layers, list(maps), cell_size=cell_size)
