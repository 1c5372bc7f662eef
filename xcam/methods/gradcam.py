"""Grad-CAM — Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017.

    alpha_c = 1/(h·w) · sum_ij dS/dA_c,ij          L = ReLU(sum_c alpha_c A_c)

Example::

    >>> import torch, xcam
    >>> from xcam.demo import load_demo_model
    >>> model = load_demo_model()
    >>> result = xcam.GradCAM(model, "block3")(torch.rand(2, 3, 64, 64))
    >>> tuple(result.maps.shape)
    (2, 64, 64)
"""

from __future__ import annotations

import torch

from xcam.methods.base import BaseCAM
from xcam.methods.context import LayerContext
from xcam.methods.registry import register_method


@register_method
class GradCAM(BaseCAM):
    """Channel weight = spatial mean of the score's gradient."""

    name = "gradcam"
    in_graph = True
    reads_gradcam_output = True

    def weights(self, ctx: LayerContext) -> torch.Tensor:
        assert ctx.gradients is not None
        return ctx.gradients.mean(dim=(2, 3))
