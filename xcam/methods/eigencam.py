"""Eigen-CAM — Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal
Components", IJCNN 2020.

With the activations of one sample as the ``hw x C`` matrix ``A = U S V^T``:

    L = A v_1                  (the projection on the first right singular vector)

No gradients and no class: the map shows the dominant pattern of the layer whatever the
target (the result still reports the top-1 class). The SVD runs in float32 whatever the
model's dtype; its sign is chosen so the map agrees with the channel sum (see
:func:`xcam.core.ops.first_component`). Negative values are clipped (ReLU).

Example::

    >>> import torch, xcam
    >>> from xcam.demo import load_demo_model
    >>> result = xcam.EigenCAM(load_demo_model(), "block3")(torch.rand(1, 3, 64, 64))
    >>> tuple(result.maps.shape)
    (1, 64, 64)
"""

from __future__ import annotations

import torch

from xcam.core.errors import NumericalError
from xcam.core.ops import first_component
from xcam.methods.base import BaseCAM
from xcam.methods.context import LayerContext
from xcam.methods.registry import register_method


@register_method
class EigenCAM(BaseCAM):
    """The first principal component of the activations."""

    name = "eigencam"
    needs_gradients = False

    def weights(self, ctx: LayerContext) -> torch.Tensor:
        return torch.ones(ctx.activations.shape[:2], dtype=ctx.activations.dtype)

    def layer_map(self, ctx: LayerContext) -> torch.Tensor:
        if not bool(torch.isfinite(ctx.activations).all()):  # an SVD of them can't converge
            raise NumericalError(
                f"the activations of layer {ctx.name!r} are not finite (overflow in the model)"
            )
        return torch.relu(first_component(ctx.activations, self.center))
