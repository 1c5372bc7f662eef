"""What every source of activations gives a method: the explained output, the activations
of the target layers, the resolved targets and (for gradient methods) ``dS/dA``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from xcam.core.cammodel import OutputSelector
from xcam.core.targets import Resolved, Targets

# a target layer: its name, and its module (None when only a file names it)
LayerRef = tuple[str, Any]


@dataclass
class Captured:
    """One forward's worth of what a weighting rule needs."""

    output: Any  # the output the targets saw (a tensor; a tuple / dict for a callable target)
    activations: list[torch.Tensor]  # A per layer, [B, C, h, w]
    target: Resolved
    gradients: list[torch.Tensor] | None  # dS/dA per layer; None for gradient-free methods
    # the Grad-CAM map fused over these layers at the input's size, [B, H, W] in [0, 1], where
    # the source computed it already (a file with in-graph gradients); else None
    gradcam: torch.Tensor | None = None


class Source(Protocol):
    """Where activations and gradients come from: the eager model, a backend with the eager
    tail, a file with in-graph gradients, or an export made on first use."""

    name: str  # what results report as their ``backend``

    def for_input(self, x: torch.Tensor, names: list[str]) -> Source:
        """The source that serves ``x`` (itself; an auto-export: the export for its shape)."""
        ...

    def capture(
        self,
        x: torch.Tensor,
        layers: list[LayerRef],
        targets: Targets,
        output: OutputSelector,
        gradients: bool,
    ) -> Captured: ...

    def forward(self, output: OutputSelector) -> Callable[[torch.Tensor], torch.Tensor]:
        """Inputs -> logits through the whole model, no gradients (``output``: the part of
        an eager model's output; a file's logits are the part it was exported with)."""
        ...
