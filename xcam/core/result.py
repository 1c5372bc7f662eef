"""``CamResult``: what every method returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class CamResult:
    """An explanation of a batch.

    Attributes:
        maps: ``[B, H, W]`` float in ``[0, 1]``, at the input's size (layers fused); for the
            pixel-space methods (Guided Backprop, Guided Grad-CAM) the raw attribution
            ``[B, C, H, W]`` instead.
        logits: the model's output, ``[B, K]``.
        targets: the class explained per sample (``[B]`` long; for a single-logit head 1 =
            positive, 0 = negative decision), or the callable that gave the scores.
        scores: the explained score per sample, ``[B]``.
        layer_maps: per layer, ``ReLU(sum_c w_c A_c)`` at the layer's resolution
            ``[B, h, w]``, before normalisation (so identities between methods can be checked).
        degenerate: ``[B]`` bool, True where a map is constant (e.g. zero gradient): it is
            returned as zeros rather than NaN.
        method: the method's registry name; ``layers``: the layer names, in order.
        backend: where the activations came from (``eager``, ``onnx``, ``torchscript``, ``pt2``).
        activation: the final activation ``logits`` already went through (``"sigmoid"``,
            ``"softmax"``, ``"log_softmax"``: they are probabilities, or their logs), or None
            for raw scores (no final activation, or ``pre_activation``).
    """

    maps: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
    scores: torch.Tensor
    layer_maps: dict[str, torch.Tensor]
    degenerate: torch.Tensor
    method: str = ""
    layers: list[str] = field(default_factory=list)
    backend: str = "eager"
    activation: str | None = None

    def __len__(self) -> int:
        return self.maps.shape[0]

    def to(self, device: str | torch.device) -> CamResult:
        """The same result with every tensor moved to ``device``."""
        return CamResult(
            maps=self.maps.to(device),
            logits=self.logits.to(device),
            targets=self.targets.to(device)
            if isinstance(self.targets, torch.Tensor)
            else self.targets,
            scores=self.scores.to(device),
            layer_maps={k: v.to(device) for k, v in self.layer_maps.items()},
            degenerate=self.degenerate.to(device),
            method=self.method,
            layers=list(self.layers),
            backend=self.backend,
            activation=self.activation,
        )

    def cpu(self) -> CamResult:
        return self.to("cpu")
