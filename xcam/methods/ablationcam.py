"""Ablation-CAM — Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep
Convolutional Network via Gradient-free Localization", WACV 2020.

Each channel in turn is set to zero and only the part of the model after the layer (its
*tail*) runs again; the weight is the relative drop of the explained score ``y``:

    w_c = (y - y_c) / y,     y_c = score with A_c = 0            L = ReLU(sum_c w_c A_c)

(``|y|`` below 1e-7 is taken as 1e-7.) The ablated activations go through the tail in
batches of ``batch_size`` (default: as many as fit ``memory_budget`` bytes); a channel
that is already zero everywhere changes nothing and is not run (its weight is 0). With an
exported backend the activations come from the file and the tail runs in eager.

Example::

    >>> import torch, xcam
    >>> from xcam.demo import load_demo_model
    >>> result = xcam.AblationCAM(load_demo_model(), "block3")(torch.rand(1, 3, 64, 64))
    >>> tuple(result.maps.shape)
    (1, 64, 64)
"""

from __future__ import annotations

import torch

from xcam.methods.base import BatchedCAM
from xcam.methods.context import LayerContext
from xcam.methods.registry import register_method

_EPS = 1e-7


@register_method
class AblationCAM(BatchedCAM):
    """Channel weight = relative drop of the score when the channel is zeroed."""

    name = "ablationcam"

    def weights(self, ctx: LayerContext) -> torch.Tensor:
        assert ctx.tail is not None
        a = ctx.activations
        b, c = a.shape[:2]
        samples = torch.arange(b)
        seen = ctx.logits if ctx.output is None else ctx.output  # what the target reads
        y = ctx.score(seen, samples, probability=False).float().cpu()
        y = torch.where(y.abs() < _EPS, torch.full_like(y, _EPS), y)
        live = (a.flatten(2).abs().amax(dim=2) > 0).flatten().cpu()
        rows = torch.arange(b * c)
        dropped = y.repeat_interleave(c)  # dead channels: no change, weight 0
        n = self.rows_per_batch(a[0].numel() * a.element_size() * 8, cap=512)  # A + tail
        for chunk in rows[live].split(n):
            sample, channel = chunk // c, chunk % c
            ablated = a[sample.to(a.device)].clone()
            ablated[torch.arange(len(chunk)), channel.to(a.device)] = 0
            dropped[chunk] = ctx.score(ctx.tail(ablated, sample), sample, False).float().cpu()
        weights = (y[:, None] - dropped.view(b, c)) / y[:, None]
        return weights.to(device=a.device, dtype=a.dtype)
