"""Class activation maps: one file per weighting rule, each registering itself in
:mod:`xcam.methods.registry` (``get_method("gradcam")``, ``list_methods()``).

Importing this package registers the built-in ones.
"""

from __future__ import annotations

from xcam.methods import (  # noqa: F401  (each registers its class)
    ablationcam,
    cam,
    eigencam,
    eigengradcam,
    gradcam,
    gradcampp,
    hirescam,
    layercam,
    reciprocam,
    scorecam,
    xgradcam,
)
from xcam.methods.registry import get_method, list_methods, register_method

__all__ = ["get_method", "list_methods", "register_method"]
