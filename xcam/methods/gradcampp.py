"""Grad-CAM++ — Chattopadhay et al., "Grad-CAM++: Generalized Gradient-Based Visual
Explanations for Deep Convolutional Networks", WACV 2018.

With ``G = dS/dA`` and the paper's exponential-score identity (higher derivatives as
powers of ``G``):

    a_c,ij = G²_c,ij / (2 G²_c,ij + sum_kl A_c,kl · G³_c,ij)      (0 where G = 0)
    w_c    = sum_ij a_c,ij · ReLU(G_c,ij)                          L = ReLU(sum_c w_c A_c)

Example::

    >>> import torch, xcam
    >>> from xcam.demo import load_demo_model
    >>> result = xcam.GradCAMPlusPlus(load_demo_model(), "block3")(torch.rand(1, 3, 64, 64))
    >>> tuple(result.maps.shape)
    (1, 64, 64)
"""

from __future__ import annotations

import torch

from xcam.methods.base import BaseCAM
from xcam.methods.context import LayerContext
from xcam.methods.registry import register_method

_EPS = 1e-7


@register_method
class GradCAMPlusPlus(BaseCAM):
    """Channel weight = positive gradients weighted by the closed-form ``a_c,ij``."""

    name = "gradcam++"
    in_graph = True

    def weights(self, ctx: LayerContext) -> torch.Tensor:
        assert ctx.gradients is not None
        g, a = ctx.gradients, ctx.activations
        g2 = g.pow(2)
        denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g
        alpha = torch.where(g != 0, g2 / torch.where(denom != 0, denom, _EPS), 0.0)
        return (alpha * g.clamp(min=0)).sum(dim=(2, 3))
