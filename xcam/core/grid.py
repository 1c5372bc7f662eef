"""The grid a run of tokens lies on (torch-free: :mod:`xcam.lite` reads token files too).

A patch embedding cuts an ``H x W`` input into ``h x w`` patches of one size, so the grid has
the input's aspect: of the ways to write ``N = h·w``, the one whose ``h:w`` is closest to
``H:W``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from xcam.core.errors import LayerTypeError


def grid_shape(n: int, size: Sequence[int], name: str = "") -> tuple[int, int]:
    """``(h, w)`` with ``h·w = n`` and ``h:w`` closest to the input's ``H:W`` (a patch grid
    has that aspect exactly)."""
    if n < 1:
        raise LayerTypeError(f"layer {name!r} has no grid tokens")
    aspect = math.log(size[0] / size[1])
    h = min(
        (d for d in range(1, n + 1) if n % d == 0),
        key=lambda d: (round(abs(math.log(d / (n // d)) - aspect), 9), d),  # ties: fewer rows
    )
    return h, n // h
