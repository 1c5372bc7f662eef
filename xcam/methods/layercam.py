"""Layer-CAM — Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
Localization", IEEE TIP 2021.

    L = ReLU(sum_c ReLU(dS/dA_c) ⊙ A_c)

Positive gradients weight each position, so shallow layers give fine-grained maps; fusing
several layers (``layers=["layer2", "layer3", "layer4"]``) is the paper's use. Where the
gradients are non-negative and constant per channel it equals Grad-CAM.

Example::

    >>> import torch, xcam
    >>> from xcam.demo import load_demo_model
    >>> model = load_demo_model()
    >>> result = xcam.LayerCAM(model, ["block2", "block3"])(torch.rand(1, 3, 64, 64))
    >>> sorted(result.layer_maps)
    ['block2', 'block3']
"""

from __future__ import annotations

import torch

from xcam.methods.base import BaseCAM
from xcam.methods.context import LayerContext
from xcam.methods.registry import register_method


@register_method
class LayerCAM(BaseCAM):
    """Per-position weight = the positive part of the gradient."""

    name = "layercam"
    in_graph = True

    def weights(self, ctx: LayerContext) -> torch.Tensor:
        assert ctx.gradients is not None
        return ctx.gradients.clamp(min=0)
