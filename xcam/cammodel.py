"""``CamModel``: a model whose forward returns the logits and the target-layer activations."""

from __future__ import annotations

import torch
from torch import nn

from xcam.capture import Capture
from xcam.layers import Layers, resolve_layers


class CamModel(nn.Module):
    """Wrap ``model`` so that ``forward(x)`` returns ``(logits, *activations)``.

    The activations are ordinary outputs of the forward, in the order of ``layers``,
    so tracing or exporting this module makes them real graph outputs with the names
    in :attr:`output_names`; nothing is left registered on the model between calls.

    Example::

        cm = CamModel(torchvision.models.resnet18(), ["layer3", "layer4"])
        logits, a3, a4 = cm(torch.randn(2, 3, 224, 224))
    """

    def __init__(self, model: nn.Module, layers: Layers, grad_handles: bool = False):
        super().__init__()
        resolved = resolve_layers(model, layers)
        if resolved is None:
            raise ValueError("CamModel needs explicit layers (names or modules)")
        self.model = model
        self.layer_names: list[str] = [n for n, _ in resolved]
        self._layers = resolved
        # internal: make activations differentiable handles (used by gradient methods)
        self.grad_handles = grad_handles

    @property
    def output_names(self) -> list[str]:
        return ["logits", *self.layer_names]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with Capture(self._layers, grad_handles=self.grad_handles) as cap:
            logits = self.model(x)
        return (logits, *cap.ordered())
