"""EigenGrad-CAM — Eigen-CAM (Muhammad & Yeasin, IJCNN 2020) applied to the gradient-weighted
activations, as popularised by the pytorch-grad-cam library:

    L = ReLU((G ⊙ A) v_1)      with G = dS/dA and (G ⊙ A) as ``hw x C`` = U S V^T

Class-discriminative like Grad-CAM (through ``G``), and as smooth as Eigen-CAM.

Example::

    >>> import torch, xcam
    >>> from xcam.demo import load_demo_model
    >>> result = xcam.EigenGradCAM(load_demo_model(), "block3")(torch.rand(1, 3, 64, 64))
    >>> tuple(result.maps.shape)
    (1, 64, 64)
"""

from __future__ import annotations

import torch

from xcam.core.errors import NumericalError
from xcam.methods.base import BaseCAM
from xcam.methods.context import LayerContext
from xcam.methods.registry import register_method


@register_method
class EigenGradCAM(BaseCAM):
    """First principal component of gradient ⊙ activation."""

    name = "eigengradcam"
    in_graph = True

    def weights(self, ctx: LayerContext) -> torch.Tensor:
        assert ctx.gradients is not None
        return ctx.gradients

    def layer_map(self, ctx: LayerContext) -> torch.Tensor:
        weights = self.weights(ctx)
        if not bool(torch.isfinite(weights).all() & torch.isfinite(ctx.activations).all()):
            raise NumericalError(  # an SVD of their product can't converge
                f"the map of layer {ctx.name!r} is not finite (overflow in activations or "
                "gradients)"
            )
        return self.combine(ctx.activations, weights, ctx.name, True, self.center)
