"""What a model's head is: the pooled-linear head CAM reads its weights from (and the
in-graph export differentiates in closed form)."""

from __future__ import annotations

import torch
from torch import nn

from xcam.core.errors import HeadError


def pooled_linear_head(model: nn.Module, acts: torch.Tensor, logits: torch.Tensor) -> nn.Linear:
    """The ``Linear`` that maps ``GAP(acts)`` to ``logits``, checked numerically."""
    c = acts.shape[1]
    pooled = acts.mean(dim=(2, 3))
    for module in reversed(list(model.modules())):
        if isinstance(module, nn.Linear) and module.in_features == c:
            if module.out_features != logits.shape[1]:
                continue
            w = module.weight.detach().to(pooled.dtype)
            b = 0 if module.bias is None else module.bias.detach().to(pooled.dtype)
            expected = pooled @ w.T + b
            tol = 1e-4 * max(1.0, float(logits.abs().max()))
            if torch.allclose(expected, logits.to(pooled.dtype), rtol=1e-3, atol=tol):
                return module
    raise HeadError(
        "CAM needs a head that is global average pooling then one Linear layer right after "
        f"the target layer (activations with {c} channels, {logits.shape[1]} logits); this "
        "model's logits are not W·GAP(A)+b. Use Grad-CAM (`gradcam`), which works for any head"
    )
