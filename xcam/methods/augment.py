"""Test-time augmentation (``aug_smooth``), as in pytorch-grad-cam: explain flipped and
rescaled copies of the input for the same classes, map each back and average.

Example::

    >>> import torch, xcam
    >>> from xcam.demo import load_demo_model
    >>> cam = xcam.GradCAM(load_demo_model(), "block3", aug_smooth=True)
    >>> tuple(cam(torch.rand(1, 3, 64, 64)).maps.shape)
    (1, 64, 64)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from xcam.core.ops import normalize
from xcam.core.result import CamResult

# flips x scales; (False, 1.0), the input itself, comes first
AUGMENTATIONS: tuple[tuple[bool, float], ...] = (
    (False, 1.0),
    (True, 1.0),
    (False, 1.25),
    (True, 1.25),
    (False, 0.8),
    (True, 0.8),
)


def augmented(
    x: torch.Tensor,
    result: CamResult,
    explain: Callable[[torch.Tensor, Any], CamResult],
    augmentations: Sequence[tuple[bool, float]] = AUGMENTATIONS,
    fixed: str | None = None,
) -> CamResult:
    """``result`` (the map of ``x`` itself) averaged with ``explain``'s maps of the other
    ``augmentations`` of ``x``, each explaining the classes ``result`` found. ``fixed``:
    the name of a file that takes one input size (only the flips run)."""
    size = tuple(x.shape[-2:])
    same = result.targets  # the classes found on x itself, or the callable
    maps = [result.maps]
    augmentations = tuple(augmentations[1:])
    if fixed is not None:  # a file that takes one size: its rescaled copies can't run
        augmentations = tuple((flip, scale) for flip, scale in augmentations if scale == 1.0)
        warnings.warn(
            f"aug_smooth: {fixed} has a fixed input size {size[0]}x{size[1]}, so only the "
            "flipped copy is averaged, not the rescaled ones (export with "
            "--dynamic-spatial for those)",
            UserWarning,
            stacklevel=3,
        )
    for flip, scale in augmentations:
        xt = x.flip(-1) if flip else x
        if scale != 1.0:
            scaled = [max(1, round(s * scale)) for s in size]
            xt = F.interpolate(xt, size=scaled, mode="bilinear", align_corners=False)
        m = explain(xt, same).maps
        if scale != 1.0:
            m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        maps.append(m.flip(-1) if flip else m)
    fused, degenerate = normalize(torch.stack(maps).mean(dim=0))
    return replace(result, maps=fused, degenerate=degenerate)
