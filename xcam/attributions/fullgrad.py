"""FullGrad — Srinivas & Fleuret, "Full-Gradient Representation for Neural Network
Visualization", NeurIPS 2019.

The output is the sum of the input-gradient term and every bias's gradient term
(``f(x) = ∇_x f · x + sum_l ∇_b_l f · b_l`` for a ReLU net); the saliency map is

    S = ψ(|∇_x f ⊙ x|) + sum_l sum_c ψ(|∇_{z_l} f ⊙ b_l|)

where ``z_l`` is the output of a layer with a bias (every ``Conv2d`` with a bias and every
``BatchNorm2d``, whose effective bias in eval mode is ``β - γ·μ/sqrt(σ²+ε)``), and ``ψ``
takes the absolute value, min-max scales each sample over channels and positions and
upsamples to the input; the channels are summed. Not layer-specific: ``layers`` is not an
option. Eager models only (it needs the gradient at every biased layer). Unlike the class
activation maps, which record autograd only from the target layer on, it records the whole
forward: the input gradient and every bias's need the graph from the input up.

Example::

    >>> import torch, xcam
    >>> from xcam.demo import load_demo_model
    >>> result = xcam.FullGrad(load_demo_model())(torch.rand(1, 3, 64, 64))
    >>> tuple(result.maps.shape)
    (1, 64, 64)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xcam.core.cammodel import select_output
from xcam.core.capture import Capture, preserved_state
from xcam.core.errors import NumericalError, XCamError
from xcam.core.layers import Layers
from xcam.core.ops import normalize, upsample
from xcam.core.result import CamResult, outcome
from xcam.core.targets import Targets, resolve_targets
from xcam.methods.base import BaseCAM
from xcam.methods.registry import register_method


def effective_bias(module: nn.Module) -> torch.Tensor | None:
    """The bias a layer adds to each output channel, or None when it has none."""
    if isinstance(module, nn.Conv2d):
        return None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.BatchNorm2d):
        beta = module.bias.detach() if module.bias is not None else 0.0
        if module.running_mean is None or module.running_var is None:
            return None if module.bias is None else module.bias.detach()
        gamma = module.weight.detach() if module.weight is not None else 1.0
        std = (module.running_var + module.eps).sqrt()
        return beta - gamma * module.running_mean / std
    return None


def _psi(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """|t| scaled to [0, 1] per sample, upsampled to ``size``, summed over channels."""
    return upsample(normalize(t.abs().float(), dims=3)[0], size).sum(dim=1)


@register_method
class FullGrad(BaseCAM):
    """Input gradient ⊙ input plus bias gradient ⊙ bias at every biased layer."""

    name = "fullgrad"
    uses_layers = False
    eager_only = True

    def __init__(self, model: Any, layers: Layers = None, backend: Any = "eager", **options: Any):
        if layers is not None:
            raise XCamError("FullGrad uses every layer with a bias; it takes no `layers`")
        if not isinstance(model, nn.Module) or backend not in (None, "eager"):
            raise XCamError(
                "FullGrad needs the eager model (gradients at every biased layer): pass the "
                "nn.Module with backend='eager'"
            )
        super().__init__(model, None, backend, **options)

    def _biased(self) -> list[tuple[str, nn.Module, torch.Tensor]]:
        assert self.model is not None
        found = []
        for name, module in self.model.named_modules():
            bias = effective_bias(module)
            if bias is not None:
                found.append((name, module, bias))
        return found

    def _explain(self, x: torch.Tensor, targets: Targets) -> CamResult:
        assert self.model is not None
        biased = self._biased()
        size = (x.shape[-2], x.shape[-1])
        capture = Capture([(n, m) for n, m, _ in biased], grad_handles=True)
        assert self.eager is not None
        eager = self.eager
        with preserved_state(self.model), torch.enable_grad(), capture, eager.watch() as watch:
            xi = x.detach().requires_grad_(True)
            logits = eager.scores(watch, select_output(self.model(xi), self._output_for(targets)))
            target = resolve_targets(logits, targets, self.activation)
            outs = capture.ordered()
            grads = torch.autograd.grad(target.scores.sum(), [xi, *outs], allow_unused=True)
        terms = {"input": _psi(_zero_if_none(grads[0], xi) * xi.detach(), size)}
        for (name, _, bias), z, g in zip(biased, outs, grads[1:], strict=True):
            g = _zero_if_none(g, z)
            terms[name] = _psi(g * bias.to(g)[None, :, None, None], size)
        maps, degenerate = normalize(torch.stack(list(terms.values())).sum(dim=0))
        if not bool(torch.isfinite(maps).all()):
            raise NumericalError("the FullGrad map is not finite (overflow in gradients)")
        return CamResult(
            maps=maps,
            layer_maps=terms,
            degenerate=degenerate,
            method=self.name,
            layers=list(terms),
            backend="eager",
            **outcome(logits, target, targets),
        )


def _zero_if_none(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g.detach()
