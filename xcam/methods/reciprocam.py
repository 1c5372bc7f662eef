"""Recipro-CAM — Byun & Lee, "Recipro-CAM: Fast gradient-free visual explanations for
convolutional neural networks", 2022 (arXiv:2209.14074).

For every position ``(i, j)`` of the layer, the activations are kept only around that
position, ``A ⊙ M_ij``, and the model's *tail* (the part after the layer) scores them;
the map is those scores:

    L_ij = softmax(tail(A ⊙ M_ij))_target

``M_ij`` is the 3x3 Gaussian ``[1 2 1]^T [1 2 1] / 16`` centred on ``(i, j)`` (the paper's
final form; ``gaussian=False`` keeps the single position with weight 1). For a single-logit
head the score is the sigmoid of the explained logit, for a callable target its raw
value. All ``h·w`` masked maps of a sample go through the tail in batches of
``batch_size`` (default: as many as fit ``memory_budget`` bytes): one tail pass per
position instead of Score-CAM's full forward per channel.

Example::

    >>> import torch, xcam
    >>> from xcam.demo import load_demo_model
    >>> result = xcam.ReciproCAM(load_demo_model(), "block3")(torch.rand(1, 3, 64, 64))
    >>> tuple(result.maps.shape)
    (1, 64, 64)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from xcam.core.errors import NumericalError
from xcam.core.layers import Layers
from xcam.methods.base import BatchedCAM
from xcam.methods.context import LayerContext
from xcam.methods.registry import register_method

_GAUSS = torch.tensor([1.0, 2.0, 1.0])


def position_masks(h: int, w: int, gaussian: bool = True) -> torch.Tensor:
    """``[h·w, h, w]``: mask ``i·w + j`` is centred on position ``(i, j)``."""
    eye = torch.eye(h * w).view(h * w, 1, h, w)
    if not gaussian:
        return eye[:, 0]
    kernel = (_GAUSS[:, None] * _GAUSS[None, :] / 16.0).view(1, 1, 3, 3)
    return F.conv2d(eye, kernel, padding=1)[:, 0]


@register_method
class ReciproCAM(BatchedCAM):
    """Map = the target's probability with the activations kept around each position."""

    name = "reciprocam"
    output_options = ("gaussian",)

    def __init__(
        self,
        model: Any,
        layers: Layers = None,
        backend: Any = "eager",
        *,
        gaussian: bool = True,
        **options: Any,
    ):
        super().__init__(model, layers, backend, **options)
        self.gaussian = gaussian

    def layer_map(self, ctx: LayerContext) -> torch.Tensor:
        assert ctx.tail is not None
        a = ctx.activations
        b, _, h, w = a.shape
        masks = position_masks(h, w, self.gaussian).to(a)  # [hw, h, w]
        rows = torch.arange(b * h * w)
        scores = torch.empty(b * h * w)
        n = self.rows_per_batch(a[0].numel() * a.element_size() * 8, cap=512)  # A + tail
        for chunk in rows.split(n):
            sample, pos = chunk // (h * w), chunk % (h * w)
            masked = a[sample.to(a.device)] * masks[pos.to(a.device)][:, None]
            scores[chunk] = ctx.score(ctx.tail(masked, sample), sample, True).float().cpu()
        if not bool(torch.isfinite(scores).all()):
            raise NumericalError(
                f"the map of layer {ctx.name!r} is not finite (overflow in the model's scores)"
            )
        return scores.view(b, h, w).to(a.device)
