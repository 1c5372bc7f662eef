"""HiRes-CAM — Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations
of convolutional neural networks", 2020 (arXiv:2011.08891).

    L = ReLU(sum_c dS/dA_c ⊙ A_c)

The gradient multiplies the activation position by position instead of being averaged
first, so for a head ``S = sum_c,ij V_c,ij A_c,ij`` the map is exactly each position's
contribution to the score. For a pooled-linear head the gradient is constant per channel,
``W_c/(h·w)``, and the map equals Grad-CAM's: both are ``ReLU(sum_c W_c A_c)/(h·w)``.

Example::

    >>> import torch, xcam
    >>> from xcam.demo import load_demo_model
    >>> result = xcam.HiResCAM(load_demo_model(), "block3")(torch.rand(1, 3, 64, 64))
    >>> tuple(result.maps.shape)
    (1, 64, 64)
"""

from __future__ import annotations

import torch

from xcam.methods.base import BaseCAM
from xcam.methods.context import LayerContext
from xcam.methods.registry import register_method


@register_method
class HiResCAM(BaseCAM):
    """Per-position weight = the gradient itself."""

    name = "hirescam"
    in_graph = True

    def weights(self, ctx: LayerContext) -> torch.Tensor:
        assert ctx.gradients is not None
        return ctx.gradients
