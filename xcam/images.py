"""Reading images and turning them into model inputs (the I/O edge: PIL lives here)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xcam.core.errors import InputError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class TooManyPixels(InputError):
    """An image above the pixel limit (a guard against decompression bombs)."""

    def __init__(self, name: str, width: int, height: int, limit: int) -> None:
        self.name, self.width, self.height, self.limit = name, width, height, limit
        super().__init__(
            f"{name}: {width}x{height} = {width * height} pixels is above the limit of {limit} "
            "(a guard against decompression bombs; raise max_pixels to allow it)"
        )


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted, not recursive)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(p)
    return found


# transparent pixels are composited on this colour (RGBA, LA, palette with transparency)
BACKGROUND = (255, 255, 255)
# Pillow's own decompression-bomb threshold; images above it are refused unless raised
DEFAULT_MAX_PIXELS = 89_478_485


def load_image(
    path: str | Path,
    *,
    background: tuple[int, int, int] = BACKGROUND,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
):
    """An RGB ``PIL.Image`` (uint8) the way a camera or viewer shows the file.

    - EXIF orientation is applied (the overlay is drawn on this same, upright image);
      width and height are never swapped otherwise.
    - Grayscale, palette, CMYK (Pillow's conversion; no ICC profile is applied) and other
      modes become RGB; anything with transparency is composited on ``background``.
    - 16- and 32-bit integer images are scaled from their full range to 0..255 (not
      clipped; a 32-bit image whose values fit 16 bits, as Pillow opens some 16-bit PNGs,
      counts as 16-bit); float images in [0, 1] are taken as they are, others min-max scaled.
    - ``max_pixels`` (width x height) guards against decompression bombs; None lifts it.

    Any failure is an :class:`InputError` naming the file and the reason.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    try:
        empty = path.stat().st_size == 0
    except PermissionError:
        raise InputError(f"{path}: cannot be read (permission denied)") from None
    except OSError as e:
        raise InputError(f"{path}: not a readable image ({e})") from None
    if empty:
        raise InputError(f"{path}: empty file (0 bytes)")
    return _decode(path, str(path), background, max_pixels)


def image_from_bytes(
    data: bytes,
    name: str = "the image",
    *,
    background: tuple[int, int, int] = BACKGROUND,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
):
    """:func:`load_image` for an image's bytes (an upload): the same rules; errors name
    ``name``."""
    import io

    if not data:
        raise InputError(f"{name}: empty (0 bytes)")
    return _decode(io.BytesIO(data), name, background, max_pixels)


def _decode(source, name: str, background: tuple[int, int, int], max_pixels: int | None):
    """An opened image (a path or a binary file object) as :func:`load_image` returns it;
    any failure an :class:`InputError` naming ``name``."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                w, h = im.size
                if max_pixels is not None and w * h > max_pixels:
                    raise TooManyPixels(name, w, h, max_pixels)
                im.load()
                ImageOps.exif_transpose(im, in_place=True)  # not a copy when there's no tag
                return _to_rgb(im, background)
    except InputError:
        raise
    except PermissionError:
        raise InputError(f"{name}: cannot be read (permission denied)") from None
    except UnidentifiedImageError as e:  # Pillow's message names a file object for bytes
        why = e if isinstance(source, Path) else "not a format Pillow reads"
        raise InputError(f"{name}: not a readable image ({why})") from None
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as e:
        raise InputError(f"{name}: not a readable image ({e})") from None


# rows converted at a time where a conversion needs full-size temporaries
_STRIP_PIXELS = 1 << 20


def _strips(height: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _STRIP_PIXELS // max(width, 1))
    return [(r0, min(r0 + step, height)) for r0 in range(0, height, step)]


def _to_rgb(im, background: tuple[int, int, int]):
    """``im`` itself when it is RGB already (no copy); otherwise an RGB conversion, made a
    strip of rows at a time where it needs full-size temporaries."""
    from PIL import Image

    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_deep_to_grey(im)).convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        out = Image.new("RGB", im.size)
        for r0, r1 in _strips(im.height, im.width):
            part = im.crop((0, r0, im.width, r1))
            rgba = part if part.mode == "RGBA" else part.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (*background, 255))
            out.paste(Image.alpha_composite(canvas, rgba).convert("RGB"), (0, r0))
        return out
    return im if im.mode == "RGB" else im.convert("RGB")


def _deep_to_grey(im) -> np.ndarray:
    """A 16-bit, 32-bit or float image to uint8 grey ``[H, W]`` (see :func:`load_image`),
    in float64 a strip of rows at a time: one byte a pixel beyond the image."""
    w, h = im.size
    strips = _strips(h, w)

    def rows(r0: int, r1: int) -> np.ndarray:
        return np.asarray(im.crop((0, r0, w, r1)))

    lo = hi = None
    for r0, r1 in strips:
        part = rows(r0, r1)
        if part.dtype.kind == "f" and not np.isfinite(part).all():
            raise ValueError("the float image contains NaN or infinite values")
        p_lo, p_hi = part.min(), part.max()
        lo = p_lo if lo is None else min(lo, p_lo)
        hi = p_hi if hi is None else max(hi, p_hi)
    lo, hi = float(lo), float(hi)
    grey = np.empty((h, w), np.uint8)
    is_float = im.mode == "F"
    top = 65535.0 if im.mode.startswith("I;16") or hi <= 65535 else 2.0**32 - 1
    for r0, r1 in strips:
        arr = rows(r0, r1).astype(np.float64)
        if is_float:
            if lo < 0.0 or hi > 1.0:
                arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        else:
            if lo < 0:  # signed 32-bit data: shift into range first
                arr -= lo
            arr /= top
        grey[r0:r1] = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return grey


# Pillow's mode for an input of this many channels
CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def preprocess_array(
    images: Sequence, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """PIL images to a normalised float32 ``[B, C, H, W]`` numpy batch, each resized to
    ``size`` = (H, W) (Pillow's bilinear), ``(x / 255 − mean) / std`` per channel.

    ``C`` is the number of entries of ``mean`` (and ``std``): 1 reads the images as grey
    (Pillow's ``L``), 3 as RGB, 4 as RGBA (alpha 255 where an image has none)."""
    from PIL import Image

    channels = len(mean)
    if len(std) != channels or channels not in CHANNEL_MODES:
        raise InputError(
            f"mean and std give {len(mean)} and {len(std)} values: images make inputs of "
            "1 (grey), 3 (RGB) or 4 (RGBA) channels, one value each"
        )
    mode = CHANNEL_MODES[channels]
    h, w = size
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    out = np.empty((len(images), channels, h, w), dtype=np.float32)
    for i, im in enumerate(images):
        im = im if im.mode == mode else im.convert(mode)
        arr = np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
        out[i] = (arr.reshape(h, w, channels).transpose(2, 0, 1) / np.float32(255.0) - m) / s
    return out


def preprocess(
    images: Sequence, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """:func:`preprocess_array` as a torch tensor ``[B, C, H, W]``."""
    import torch

    return torch.from_numpy(preprocess_array(images, size, mean, std))
