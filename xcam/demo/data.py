"""Procedural data for the demo model: one shape (circle, square, triangle, cross) of
random size, colour, rotation and position on a cluttered background, with its
ground-truth mask. Deterministic for a given seed; needs only numpy and PIL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from xcam.demo import CLASSES


@dataclass
class Sample:
    image: np.ndarray  # [H, W, 3] uint8
    label: int
    mask: np.ndarray  # [H, W] bool, True on the shape


def _shape_polygons(label: int, cx: float, cy: float, r: float, angle: float) -> list[list]:
    """Polygons (lists of (x, y)) that draw a shape of class ``label``; a circle is None."""

    def rot(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    name = CLASSES[label]
    if name == "square":
        h = r * 0.85
        return [rot([(-h, -h), (h, -h), (h, h), (-h, h)])]
    if name == "triangle":
        return [
            rot(
                [
                    (r * math.cos(a), r * math.sin(a))
                    for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
                ]
            )
        ]
    if name == "cross":
        t = r * 0.33
        return [
            rot([(-r, -t), (r, -t), (r, t), (-r, t)]),
            rot([(-t, -r), (t, -r), (t, r), (-t, r)]),
        ]
    return []


def make_sample(rng: np.random.Generator, size: int = 64, label: int | None = None) -> Sample:
    """One image of ``size``² pixels; all lengths scale with ``size``."""
    s = size / 64.0
    if label is None:
        label = int(rng.integers(len(CLASSES)))
    # background: a smooth colour gradient plus noise
    c0, c1 = rng.uniform(0, 160, 3), rng.uniform(0, 160, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    if rng.random() < 0.5:
        bg = c0 + (c1 - c0) * t
        bg = np.broadcast_to(bg, (size, size, 3))
    else:
        bg = np.broadcast_to(c0 + (c1 - c0) * t.transpose(1, 0, 2), (size, size, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    # clutter: lines and dots that carry no class information
    for _ in range(int(rng.integers(3, 9))):
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        draw.line(
            [(x0, y0), (x1, y1)],
            fill=tuple(int(v) for v in rng.uniform(0, 255, 3)),
            width=max(1, round(s * rng.integers(1, 3))),
        )
    for _ in range(int(rng.integers(5, 15))):
        x, y = rng.uniform(0, size, 2)
        d = s * rng.uniform(1, 3)
        draw.ellipse(
            [x - d, y - d, x + d, y + d], fill=tuple(int(v) for v in rng.uniform(0, 255, 3))
        )
    # the object
    r = s * rng.uniform(7, 12)
    cx, cy = rng.uniform(r + s, size - r - s, 2)
    angle = rng.uniform(0, math.pi)
    colour = tuple(int(v) for v in rng.uniform(100, 255, 3))
    mask_img = Image.new("L", (size, size), 0)
    mdraw = ImageDraw.Draw(mask_img)
    polys = _shape_polygons(label, cx, cy, r, angle)
    if not polys:  # circle
        box = [cx - r, cy - r, cx + r, cy + r]
        draw.ellipse(box, fill=colour)
        mdraw.ellipse(box, fill=255)
    for poly in polys:
        draw.polygon(poly, fill=colour)
        mdraw.polygon(poly, fill=255)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0, 8, arr.shape)
    return Sample(np.clip(arr, 0, 255).astype(np.uint8), label, np.asarray(mask_img) > 0)


def make_dataset(n: int, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` samples: images ``[n, H, W, 3]`` uint8, labels ``[n]``, masks ``[n, H, W]``."""
    rng = np.random.default_rng(seed)
    samples = [make_sample(rng, size) for _ in range(n)]
    return (
        np.stack([x.image for x in samples]),
        np.array([x.label for x in samples], dtype=np.int64),
        np.stack([x.mask for x in samples]),
    )


def to_tensor(images: np.ndarray):
    """uint8 ``[n, H, W, 3]`` to the model's normalised float ``[n, 3, H, W]``."""
    import torch

    from xcam.demo import MEAN, STD

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN)[None, :, None, None]
    std = torch.tensor(STD)[None, :, None, None]
    return (x - mean) / std
