"""CAM — Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016.

For a head that is global average pooling then one linear layer, ``y_k = sum_c W_kc ·
mean_ij A_c,ij + b_k``, the map of class k is

    L_k = ReLU(sum_c W_kc A_c)

No gradients: the weights are read from the linear layer. xcam finds that layer (a
``Linear`` with ``C`` inputs) and checks numerically that the logits really are
``W · GAP(A) + b``; any other head is an error that points to Grad-CAM.

Example::

    >>> import torch, xcam
    >>> from xcam.demo import load_demo_model
    >>> result = xcam.CAM(load_demo_model(), "block3")(torch.rand(1, 3, 64, 64), targets=2)
    >>> result.targets.tolist()
    [2]
"""

from __future__ import annotations

import torch

from xcam.core.errors import HeadError
from xcam.core.heads import pooled_linear_head
from xcam.methods.base import BaseCAM
from xcam.methods.context import LayerContext
from xcam.methods.registry import register_method


@register_method
class CAM(BaseCAM):
    """Channel weight = the classifier's weight for the target class."""

    name = "cam"
    needs_gradients = False

    def weights(self, ctx: LayerContext) -> torch.Tensor:
        if ctx.target.classes is None:
            raise HeadError("CAM explains a class index; a callable target needs Grad-CAM")
        if ctx.model is None:
            raise HeadError("CAM reads the classifier weights: pass the eager model too")
        try:
            fc = pooled_linear_head(ctx.model, ctx.activations, ctx.logits)
        except HeadError as e:
            if ctx.target.activation is None:
                raise
            raise HeadError(  # W·GAP(A)+b may be the score before the final activation
                f"{e}; or, since the model ends in {ctx.target.activation}, pass "
                "pre_activation=True (--pre-activation) to explain the score before it"
            ) from None
        weight = fc.weight.detach().to(ctx.activations.dtype)
        if ctx.target.sign is not None:  # single logit: the negative decision is -W
            return weight[0][None, :] * ctx.target.sign[:, None]
        return weight[ctx.target.classes]
