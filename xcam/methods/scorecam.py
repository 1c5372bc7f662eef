"""Score-CAM — Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
Neural Networks", CVPR Workshops 2020.

Each channel, upsampled to the input and min-max scaled, masks the input; the channel's
weight is the target's probability for that masked input:

    H_c = s(Up(A_c)),   s(m) = (m - min m) / (max m - min m)
    w_c = softmax(f(x ⊙ H_c))_target                     L = ReLU(sum_c w_c A_c)

(for a single-logit head the sigmoid of the explained logit; for a callable target its raw
score). ``channel_softmax=True`` gives the variant of the pytorch-grad-cam library instead:
the raw target logit of each masked input, then a softmax across the channels.

One forward per channel and sample: the masked inputs go through the model in batches of
``batch_size`` (default: as many as fit ``memory_budget`` bytes, estimated at 40x the
input's size per sample), on the method's backend — ``backend="onnxruntime"`` makes this
the fast path. A channel that is constant over the map masks the input to zero: those share
one forward.

Example::

    >>> import torch, xcam
    >>> from xcam.demo import load_demo_model
    >>> result = xcam.ScoreCAM(load_demo_model(), "block3")(torch.rand(1, 3, 64, 64))
    >>> tuple(result.maps.shape)
    (1, 64, 64)
"""

from __future__ import annotations

from typing import Any

import torch

from xcam.core.layers import Layers
from xcam.core.ops import normalize, upsample
from xcam.core.targets import repeated
from xcam.methods.base import BatchedCAM
from xcam.methods.context import LayerContext
from xcam.methods.registry import register_method


@register_method
class ScoreCAM(BatchedCAM):
    """Channel weight = the target's probability when the channel masks the input."""

    name = "scorecam"
    output_options = ("channel_softmax",)

    def __init__(
        self,
        model: Any,
        layers: Layers = None,
        backend: Any = "eager",
        *,
        channel_softmax: bool = False,
        **options: Any,
    ):
        super().__init__(model, layers, backend, **options)
        self.channel_softmax = channel_softmax

    def weights(self, ctx: LayerContext) -> torch.Tensor:
        assert ctx.inputs is not None and ctx.forward is not None
        x, a = ctx.inputs, ctx.activations
        b, c = a.shape[:2]
        flat = a.flatten(2)
        live = (flat.amax(dim=2) > flat.amin(dim=2)).flatten().cpu()
        rows = torch.arange(b * c)
        scores = torch.empty(b * c)
        probability = not self.channel_softmax
        # a row costs about its input and a forward's activations: ~40x the input
        n = self.rows_per_batch(x[0].numel() * x.element_size() * 40, cap=256)
        for chunk in rows[live].split(n):
            sample, channel = chunk // c, chunk % c
            m = upsample(a[sample.to(a.device), channel.to(a.device)][:, None], x.shape[-2:])
            m = normalize(m)[0]  # each mask scaled to [0, 1]
            masked = x[sample.to(x.device)] * m.to(x)
            scores[chunk] = ctx.score(ctx.forward(masked), sample, probability).float().cpu()
        dead = rows[~live]
        if len(dead):  # a constant channel masks every input to zero: one forward for all
            out = repeated(ctx.forward(torch.zeros_like(x[:1])), len(dead))
            scores[dead] = ctx.score(out, dead // c, probability).float().cpu()
        weights = scores.view(b, c)
        if self.channel_softmax:
            weights = weights.softmax(dim=1)
        return weights.to(device=a.device, dtype=a.dtype)
