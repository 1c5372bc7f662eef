"""When a map is flat (torch-free: :func:`xcam.core.ops.normalize` and :mod:`xcam.lite` share it).

Min-max scaling divides by the map's spread ``max - min``. A spread within float32 rounding of
the map's level (``|max|`` or ``|min|``) is noise, not signal: scaled to ``[0, 1]`` it would
show a random pattern that differs between eager PyTorch and an exported graph (AlexNet's and
VGG's ``avgpool`` at a small input replicate one position, so their maps are constant up to
rounding). Such a map is flat: all zeros, flagged degenerate.
"""

from __future__ import annotations

# float32 rounds at ~1.2e-7 of a value; a sum over C channels at ~sqrt(C) times that
RELATIVE_SPREAD = 1e-5
