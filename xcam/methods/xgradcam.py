"""XGrad-CAM — Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and
Explanation of CNNs", BMVC 2020.

    w_c = sum_ij (A_c,ij / sum_kl A_c,kl) · dS/dA_c,ij             L = ReLU(sum_c w_c A_c)

(the gradient averaged with the activation as its weight; the paper's sensitivity and
conservation axioms give it).

Example::

    >>> import torch, xcam
    >>> from xcam.demo import load_demo_model
    >>> result = xcam.XGradCAM(load_demo_model(), "block3")(torch.rand(1, 3, 64, 64))
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
class XGradCAM(BaseCAM):
    """Channel weight = activation-weighted mean of the gradient."""

    name = "xgradcam"
    in_graph = True

    def weights(self, ctx: LayerContext) -> torch.Tensor:
        assert ctx.gradients is not None
        a = ctx.activations
        return (ctx.gradients * a).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + _EPS)
