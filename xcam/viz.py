"""Pictures of maps (the I/O edge: numpy, PIL and matplotlib's colormaps live here)."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xcam.core.errors import NumericalError, XCamError
from xcam.core.resize import bilinear

if TYPE_CHECKING:
    import torch
    from PIL import Image


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A tensor's values on the CPU as float32 numpy (viz never imports torch itself)."""
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _to_numpy_map(cam: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = _as_numpy(cam)
    if arr.ndim != 2:
        raise ValueError(f"a map is 2-D [H, W], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise NumericalError("the map contains NaN or infinite values")
    return arr.astype(np.float32)


def resize_map(cam: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``[H, W]`` map resized (bilinear) to ``size`` = (H, W), values kept in range."""
    arr = _to_numpy_map(cam)
    if arr.shape == tuple(size):
        return arr
    return _interpolate(arr[None], size)[0].clip(arr.min(), arr.max())


def _to_numpy_attribution(attr: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = _as_numpy(attr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"an attribution is [C, H, W] (or [H, W]), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise NumericalError("the attribution contains NaN or infinite values")
    return arr.astype(np.float32)


def resize_attribution(attr: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A raw ``[C, H, W]`` attribution resized (bilinear) to ``size`` = (H, W), not rescaled."""
    return _interpolate(_to_numpy_attribution(attr), size)


def attribution_image(attr: torch.Tensor | np.ndarray, spread: float = 0.15):
    """A raw ``[C, H, W]`` attribution (Guided Backprop…) as an RGB PIL image.

    Standardised over all its values and shown as ``0.5 + spread · (a − mean) / std``,
    clipped to ``[0, 1]``: grey is no attribution, a colour is the sign per channel.
    Three channels are shown as RGB; any other number is averaged into one grey channel.
    An all-constant attribution is plain grey (the mean and std are summed in float64).
    """
    from PIL import Image

    arr = _shown_channels(_to_numpy_attribution(attr))
    count, mean, m2 = _merge_stats(0, 0.0, 0.0, arr)
    return Image.fromarray(_attribution_pixels(arr, mean, (m2 / count) ** 0.5, spread))


def _shown_channels(arr: np.ndarray) -> np.ndarray:
    """The channels an attribution picture shows: RGB as is, any other number averaged."""
    return arr if arr.shape[0] == 3 else arr.mean(axis=0, keepdims=True)


def _attribution_pixels(arr: np.ndarray, mean: float, std: float, spread: float) -> np.ndarray:
    """``[C', h, W]`` shown channels (C' = 3 or 1) to ``[h, W, 3]`` uint8 (see
    :func:`attribution_image`), given the mean and std of the whole attribution."""
    scaled = 0.5 + spread * (arr - mean) / std if std > 0 else np.full_like(arr, 0.5)
    pixels = (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels)


def colorize(cam: torch.Tensor | np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A map in ``[0, 1]`` to an ``[H, W, 3]`` uint8 RGB picture through a matplotlib colormap."""
    return _colorize_rows(_to_numpy_map(cam), _colormap_table(colormap))


def check_colormap(colormap: str) -> None:
    """An :class:`~xcam.core.errors.XCamError` unless ``colormap`` names a matplotlib colormap."""
    _colormap_table(colormap)


@functools.lru_cache(maxsize=16)
def _colormap_table(colormap: str) -> np.ndarray:
    """The colormap's ``[N, 3]`` uint8 entries (N = 256 for most): matplotlib maps a float
    ``x`` in [0, 1] to entry ``min(int(x·N), N − 1)`` of this same table."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except (KeyError, TypeError):
        raise XCamError(
            f"unknown colormap {colormap!r}: use a matplotlib colormap name (jet, viridis, "
            "turbo, inferno, …)"
        ) from None
    table = (cmap(np.arange(cmap.N))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    table.flags.writeable = False
    return table


def _colorize_rows(arr: np.ndarray, table: np.ndarray) -> np.ndarray:
    """float32 ``[h, W]`` to uint8 ``[h, W, 3]``, exactly as ``matplotlib``'s ``cmap(arr)``
    (its float32 ``x·N``, truncated, the top edge kept in the last entry) then rounded."""
    n = len(table)
    xa = np.clip(arr, 0.0, 1.0).astype(np.float32, copy=False)
    xa *= np.float32(n)
    idx = xa.astype(np.intp)
    np.minimum(idx, n - 1, out=idx)
    return table[idx]


@functools.lru_cache(maxsize=16, typed=True)  # typed: a numpy alpha promotes differently
def _blend_table(alpha: float) -> np.ndarray:
    """``[256, 256]`` uint8: the overlay of image value i and heatmap value j (float32
    ``(1 − alpha)·i + alpha·j``, rounded): every pair, so blending is one lookup."""
    base = np.arange(256, dtype=np.float32)[:, None]
    heat = np.arange(256, dtype=np.float32)[None, :]
    mixed = (1 - alpha) * base + alpha * heat
    table = np.clip(mixed + 0.5, 0, 255).astype(np.uint8).ravel()
    table.flags.writeable = False
    return table


def _blend_rows(base: np.ndarray, heat: np.ndarray, table: np.ndarray) -> np.ndarray:
    idx = base.astype(np.intp)
    idx <<= 8
    idx |= heat
    return table[idx]


def overlay(image, cam: torch.Tensor | np.ndarray, alpha: float = 0.5, colormap: str = "jet"):
    """Blend a colorized map onto ``image`` (PIL image or ``[H, W, 3]`` uint8) at its size.

    ``alpha`` is the weight of the heatmap: 0 shows only the image, 1 only the map.
    """
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(image)
    heat = colorize(resize_map(cam, (base.height, base.width)), colormap)
    return Image.fromarray(_blend_rows(np.asarray(base), heat, _blend_table(alpha)))


def draw_box(
    image,
    box: Sequence[float],
    label: str | None = None,
    size: tuple[int, int] | None = None,
    color: str = "white",
):
    """``image`` (PIL) with ``box`` ``(x1, y1, x2, y2)`` drawn on it, and ``label`` above it;
    ``size``: the ``(H, W)`` the box's pixels refer to (the model's input), if not the
    image's. A copy: the image given is left as it was.

    ``draw_box(overlay(img, result.maps[i]), result.targets[i].box, "cat 0.93")``: a
    detector's box beside the map that explains it (``targets="boxes"``).
    """
    from PIL import ImageDraw, ImageFont

    out = image.convert("RGB")  # a copy, even of an RGB image
    sy, sx = (1.0, 1.0) if size is None else (out.height / size[0], out.width / size[1])
    x1, y1, x2, y2 = (float(v) for v in box)
    rect = [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
    draw = ImageDraw.Draw(out)
    width = max(1, round(min(out.size) / 100))
    draw.rectangle(rect, outline=color, width=width)
    if label:
        font = ImageFont.load_default(size=max(10, min(out.size) // 20))
        top = max(0.0, rect[1] - font.size - 2)
        draw.text((rect[0] + 2, top), label, fill=color, font=font)
    return out


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


def save_png(image, path: str | Path, compress_level: int = 6) -> Path:
    """Write ``image`` as a PNG, atomically (no half-written file after an interrupt).
    ``compress_level``: zlib's, 0–9 (Pillow's default 6; 1 encodes an overlay ~3x faster
    for ~1/3 more bytes, OpenCV's default)."""
    from xcam.files import atomic

    path = Path(path)
    with atomic(path) as tmp:
        image.save(tmp, format="PNG", compress_level=compress_level)
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


# -- large images: drawn into the decoded image and written a strip of rows at a time -----
#
# At a large image's own size a float32 map is 4 bytes a pixel, matplotlib's float64 RGBA
# 32, the float blend 12 more and a second RGB image 4. The functions below hold a strip
# of rows of each, and draw into the decoded image, which is no longer needed once the
# model input has been made: Pillow then saves it from its own buffer.

# pixels per strip: a few MB of temporaries
_STRIP_PIXELS = 1 << 17


def _interpolate(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float32 ``[C, h, w]`` array resized to ``size`` = (H, W) as ``F.interpolate``
    (bilinear, ``align_corners=False``; :mod:`xcam.core.resize`); ``x`` itself when it has
    that size."""
    if x.shape[1:] == tuple(size):
        return x
    return bilinear(x, size).astype(np.float32, copy=False)


def _resized_strips(x: np.ndarray, size: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
    """``(r0, rows)`` from ``r0`` on, a strip at a time, of ``_interpolate(x, size)``: the
    height resized once (``[C, H, w]``, narrow), then each strip's width: each axis is
    resized on its own, so the rows are the one-call result's."""
    height, width = size
    tall = _interpolate(x, (height, x.shape[2]))
    step = max(1, _STRIP_PIXELS // width)
    for r0 in range(0, height, step):
        part = tall[:, r0 : r0 + step]
        yield r0, _interpolate(part, (part.shape[1], width))


def save_resized(
    x: torch.Tensor | np.ndarray, size: tuple[int, int], path: str | Path, clamp: bool = True
) -> Path:
    """Write a map ``[h, w]`` or attribution ``[C, h, w]`` resized (bilinear) to ``size`` =
    (H, W) as a float32 ``.npy`` (``[H, W]`` or ``[C, H, W]``), atomically: what
    ``np.save`` writes for ``resize_map(x, size)`` (``clamp``: kept in x's range) or
    ``resize_attribution(x, size)`` (``clamp=False``), but made a strip of rows at a time,
    never a full-size array (memory)."""
    from xcam.files import atomic

    arr = _to_numpy_map(x)[None] if np.ndim(x) == 2 else _to_numpy_attribution(x)
    height, width = (int(n) for n in size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (H, W), got {size}")
    shape = (height, width) if np.ndim(x) == 2 else (arr.shape[0], height, width)
    lo, hi = arr.min(), arr.max()
    path = Path(path)
    with atomic(path) as tmp, open(tmp, "wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        for c in range(arr.shape[0]):  # [C, H, W]: one channel after another
            for _, rows in _resized_strips(arr[c : c + 1], (height, width)):
                f.write(np.ascontiguousarray(np.clip(rows, lo, hi) if clamp else rows, "<f4"))
    return path


def _canvas_size(image: Image.Image) -> tuple[int, int]:
    if image.mode != "RGB":
        raise ValueError(f"an RGB image is drawn into, got mode {image.mode!r}")
    return image.height, image.width


def overlay_into(
    image: Image.Image, cam: torch.Tensor | np.ndarray, alpha: float = 0.5, colormap: str = "jet"
) -> Image.Image:
    """Overwrite ``image`` (a PIL RGB image) with ``overlay(image, cam, alpha, colormap)``,
    a strip of rows at a time, and return it: for a large image, no second full-size image
    and no full-size float map (memory)."""
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    size = _canvas_size(image)
    arr = _to_numpy_map(cam)
    colors, blend = _colormap_table(colormap), _blend_table(alpha)
    lo, hi = arr.min(), arr.max()
    for r0, rows in _resized_strips(arr[None], size):
        heat = _colorize_rows(np.clip(rows[0], lo, hi), colors)  # as resize_map: in range
        base = np.asarray(image.crop((0, r0, image.width, r0 + len(heat))))
        image.paste(Image.fromarray(_blend_rows(base, heat, blend)), (0, r0))
    return image


def attribution_into(
    image: Image.Image, attr: torch.Tensor | np.ndarray, spread: float = 0.15
) -> Image.Image:
    """Overwrite ``image`` (a PIL RGB image) with ``attribution_image(resize_attribution(attr,
    (H, W)), spread)`` at its size, a strip of rows at a time (a first pass over the strips
    for the mean and std), and return it: no full-size array (memory)."""
    from PIL import Image

    size = _canvas_size(image)
    arr = _to_numpy_attribution(attr)
    count, mean, m2 = 0, 0.0, 0.0
    for _, rows in _resized_strips(arr, size):
        count, mean, m2 = _merge_stats(count, mean, m2, _shown_channels(rows))
    std = (m2 / count) ** 0.5
    for r0, rows in _resized_strips(arr, size):
        pixels = _attribution_pixels(_shown_channels(rows), mean, std, spread)
        image.paste(Image.fromarray(pixels), (0, r0))
    return image


def _merge_stats(count: int, mean: float, m2: float, x: np.ndarray) -> tuple[int, float, float]:
    """Count, mean and sum of squared deviations with ``x``'s values added (Chan et al.'s
    pairwise update, in float64: no cancellation whatever the mean)."""
    n = x.size
    d = x.astype(np.float64).ravel()
    x_mean = float(d.sum()) / n
    d -= x_mean
    d *= d  # not np.dot: BLAS threads fight torch's for the cores on such small vectors
    total = count + n
    delta = x_mean - mean
    mean += delta * n / total
    m2 += float(d.sum()) + delta * delta * count * n / total
    return total, mean, m2
