"""``LayerContext``: all a weighting rule may look at, for one layer.

Example::

    >>> import torch
    >>> from xcam.core.targets import resolve_targets
    >>> from xcam.methods.context import LayerContext
    >>> logits = torch.tensor([[0.1, 2.0]])
    >>> ctx = LayerContext("block3", torch.ones(1, 4, 2, 2), None, logits,
    ...                    resolve_targets(logits, None), None, None)
    >>> ctx.target.classes.tolist()
    [1]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xcam.core.targets import (
    Resolved,
    Targets,
    class_probability,
    decision_score,
    flatten_logits,
    per_sample_scores,
    resolve_targets,
    score_functions,
)


@dataclass
class LayerContext:
    """What a weighting rule may look at, for one layer.

    Gradient-free methods that re-run the model use ``forward`` (inputs -> logits, the whole
    model on the method's backend, no gradients) or ``tail`` (this layer's activations and
    the sample index of each row -> logits, the eager part of the model after the layer),
    and ``score`` to read the explained score of each row from such logits.
    """

    name: str
    activations: torch.Tensor  # A, [B, C, h, w]
    gradients: torch.Tensor | None  # dS/dA, same shape; None for gradient-free methods
    logits: torch.Tensor  # [B, K]
    target: Resolved
    model: nn.Module | None  # None when explaining a loaded backend alone
    module: nn.Module | None
    inputs: torch.Tensor | None = None  # x, [B, C_in, H, W]
    output: Any = None  # the output the target saw (a tuple / dict for a callable target)
    targets: Targets = None  # what the caller asked for (a callable target is needed again)
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    tail: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def score(self, logits: torch.Tensor, rows: torch.Tensor, probability: bool) -> torch.Tensor:
        """The explained score of each row of ``logits``; row i belongs to sample ``rows[i]``.

        ``probability``: the class's softmax probability (sigmoid of the signed logit for a
        single-logit head) instead of the raw logit; where the output already is a
        probability (a final Sigmoid / Softmax), that probability as it is (``1 - p`` for
        a negative decision). A callable target is applied as is.
        """
        if self.target.classes is None:
            if score_functions(self.targets) and not callable(self.targets):
                return per_sample_scores(logits, self.targets, rows).float()  # type: ignore[arg-type]
            return resolve_targets(logits, self.targets).scores.float()  # type: ignore[arg-type]
        flat = flatten_logits(logits).float()
        classes = self.target.classes.to(flat.device)[rows.to(flat.device)]
        if probability:
            return class_probability(flat, classes, self.target.activation)
        if flat.shape[1] == 1:
            return decision_score(flat[:, 0], classes * 2 - 1, self.target.activation)
        return flat.gather(1, classes[:, None])[:, 0]
