"""Pixel-space explanations, computed on the eager model down to its input: Guided
Backprop and Guided Grad-CAM (an :class:`~xcam.core.result.Attribution` shaped like the
input) and FullGrad (a saliency map, a :class:`~xcam.core.result.CamResult`).

Importing this package registers them in :mod:`xcam.methods.registry`.
"""

from __future__ import annotations

from xcam.attributions import fullgrad, guided  # noqa: F401  (each registers its classes)
