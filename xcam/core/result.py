"""What methods return: :class:`CamResult` (a map per sample, ``[B, H, W]`` in ``[0, 1]``)
for the class activation maps and FullGrad, :class:`Attribution` (raw, input-shaped
``[B, C, H, W]``) for the pixel-space methods, Guided Backprop and Guided Grad-CAM."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from xcam.core.targets import Resolved, Targets, reported_logits


@dataclass
class Explanation:
    """The fields every result has (see :class:`CamResult` and :class:`Attribution`).

    Attributes:
        maps: the explanation itself (its shape is the subclass's contract).
        logits: the model's output, ``[B, K]``.
        targets: the class explained per sample (``[B]`` long; for a single-logit head 1 =
            positive, 0 = negative decision), or the callable that gave the scores.
        scores: the explained score per sample, ``[B]``.
        layer_maps: per layer, ``ReLU(sum_c w_c A_c)`` at the layer's resolution
            ``[B, h, w]``, before normalisation (so identities between methods can be checked).
        degenerate: ``[B]`` bool, True where a map is flat: constant up to float rounding
            (e.g. zero gradient; see :mod:`xcam.core.flat`). It is returned as zeros rather
            than NaN.
        method: the method's registry name; ``layers``: the layer names, in order.
        backend: where the activations came from (``eager``, ``onnx``, ``torchscript``, ``pt2``).
        activation: the final activation ``logits`` already went through (``"sigmoid"``,
            ``"softmax"``, ``"log_softmax"``: they are probabilities, or their logs), or None
            for raw scores (no final activation, or ``pre_activation``).
        samples: which input sample each row explains, ``[R]`` long, where rows are not
            samples (``targets="present"``: a row per label present in a sample); None: row
            ``i`` is sample ``i``.
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
    samples: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.maps.shape[0]

    def to(self, device: str | torch.device) -> Any:
        """The same result with every tensor moved to ``device``."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                moved[f.name] = value.to(device)
            elif isinstance(value, dict):
                moved[f.name] = {k: v.to(device) for k, v in value.items()}
            elif isinstance(value, list):
                moved[f.name] = list(value)
        return replace(self, **moved)

    def cpu(self) -> Any:
        return self.to("cpu")


@dataclass
class CamResult(Explanation):
    """An explanation of a batch: ``maps`` is ``[B, H, W]`` float in ``[0, 1]``, at the
    input's size (layers fused). See :class:`Explanation` for the other fields."""


@dataclass
class Attribution(Explanation):
    """A pixel-space attribution of a batch (Guided Backprop, Guided Grad-CAM): ``maps`` is
    the raw attribution shaped like the input, ``[B, C, H, W]``, not normalised (see
    :func:`xcam.viz.attribution_image` for a picture). See :class:`Explanation`."""


def outcome(output: Any, target: Resolved, targets: Targets) -> dict[str, Any]:
    """The fields a result takes from the explained output and its resolved targets (plain
    tensors: a gradient-free forward runs under ``inference_mode``, whose tensors can't be
    changed in place outside it)."""
    return {
        "logits": _plain(reported_logits(output)),
        "targets": _plain(target.classes) if target.classes is not None else targets,
        "scores": _plain(target.scores.detach()),
        "activation": target.activation,
    }


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.clone() if t.is_inference() else t
