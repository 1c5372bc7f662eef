"""Bilinear resizing in numpy (torch-free: :mod:`xcam.lite` and the image edge use it).

The sampling of ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
without antialiasing: output pixel ``i`` reads the input at ``(i + 0.5)·n_in/n_out − 0.5``
(clamped at 0), between its two neighbours.
"""

from __future__ import annotations

import numpy as np


def resize_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """``x`` resized along one axis to ``n_out`` samples; ``x`` itself when it has them."""
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0).astype(x.dtype)
    shape = [1] * x.ndim
    shape[axis] = n_out
    lam = lam.reshape(shape)
    return np.take(x, i0, axis=axis) * (1 - lam) + np.take(x, i1, axis=axis) * lam


def bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[..., h, w] -> [..., H, W]`` (``size`` = (H, W)), as torch's bilinear."""
    return resize_axis(resize_axis(x, int(size[0]), x.ndim - 2), int(size[1]), x.ndim - 1)
