"""Guided Backprop and Guided Grad-CAM: input-resolution attributions.

Guided Backprop — Springenberg, Dosovitskiy, Brox, Riedmiller, "Striving for Simplicity:
The All Convolutional Net", ICLR workshop 2015. The gradient of the score S with respect
to the input x, where every ReLU passes back only positive gradients at positive inputs::

    R_in = (x_relu > 0) · ReLU(R_out)        (a plain ReLU: R_in = (x_relu > 0) · R_out)
    G(x) = dS/dx computed with that rule at every nn.ReLU module

Guided Grad-CAM — Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017. The guided gradient weighted, pixel by pixel, by the
Grad-CAM map L (normalised to [0, 1], upsampled bilinearly to the input)::

    GGC_c,ij = G(x)_c,ij · L_ij

Both return an :class:`~xcam.core.result.Attribution`: ``maps`` shaped like the input,
``[B, C, H, W]``, raw attributions, not normalised (see :func:`xcam.viz.attribution_image`
for a picture). They run on the eager model only, and record the whole forward (unlike the
class activation maps, which record only from the target layer on): the input gradient
needs the graph from the input up; the model is never modified (the ReLUs
are guided by hooks scoped to the call, see :func:`xcam.core.capture.guided_relus`).

Example::

    >>> import torch
    >>> from xcam.demo import load_demo_model
    >>> from xcam.attributions.guided import GuidedBackprop, GuidedGradCAM
    >>> model = load_demo_model()
    >>> x = torch.rand(2, 3, 64, 64)
    >>> tuple(GuidedBackprop(model)(x).maps.shape)
    (2, 3, 64, 64)
    >>> result = GuidedGradCAM(model, "block3")(x, targets=1)
    >>> tuple(result.maps.shape), result.layers
    ((2, 3, 64, 64), ['block3'])
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import torch

from xcam.core.cammodel import select_output
from xcam.core.capture import guided_relus, preserved_state
from xcam.core.errors import NumericalError, XCamError
from xcam.core.inputs import check_input
from xcam.core.layers import Layers
from xcam.core.result import Attribution, outcome
from xcam.core.targets import Targets, resolve_targets
from xcam.core.tracing import FX_GATE
from xcam.methods.base import BaseCAM
from xcam.methods.gradcam import GradCAM
from xcam.methods.registry import register_method


def _degenerate(maps: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: True where a sample's attribution is zero everywhere."""
    return (maps.flatten(1) == 0).all(dim=1)


class _EagerOnly(BaseCAM):
    """Pixel attributions: the eager model differentiated down to its input."""

    eager_only = True

    def __init__(self, model: Any, layers: Layers = None, backend: Any = "eager", **options: Any):
        if options.get("aug_smooth") or options.get("eigen_smooth"):
            raise XCamError(
                f"{type(self).__name__} gives pixel attributions: aug_smooth and eigen_smooth "
                "are options of the class activation maps"
            )
        super().__init__(model, layers, backend, **options)
        self._require_eager()

    def _require_eager(self) -> None:
        if self.eager is None or self.source is not self.eager:
            raise XCamError(
                f"{type(self).__name__} differentiates the eager model down to its input and "
                "runs on eager PyTorch only; give it the nn.Module with backend='eager' "
                "(--backend eager on the command line)"
            )


@register_method
class GuidedBackprop(_EagerOnly):
    """``dS/dx`` with guided ReLUs: ``maps`` is ``[B, C, H, W]``, the raw attribution.

    ``layers`` is accepted (for a uniform signature) and not used: ``result.layers == []``.
    Activations other than ``nn.ReLU`` modules (SiLU, GELU, a functional ``F.relu``…)
    pass the plain gradient; a ``UserWarning`` names them.
    """

    name = "guidedbackprop"
    uses_layers = False

    @property
    def layers(self) -> list[str]:
        return []

    def __call__(self, x: torch.Tensor, targets: Targets = None) -> Attribution:  # type: ignore[override]
        self._require_eager()
        x = self._check_model_input(check_input(x))
        assert self.model is not None
        leaf = x.detach().requires_grad_(True)
        with FX_GATE.shared(), preserved_state(self.model), torch.enable_grad():
            with self.eager.watch() as watch, guided_relus(self.model, stacklevel=2) as report:
                out = self.model(leaf)
                report.exclude_outputs(out)
            logits = self.eager.scores(watch, select_output(out, self._output_for(targets)))
            target = resolve_targets(logits, targets, self.activation)
            grad = None
            if target.scores.requires_grad:
                (grad,) = torch.autograd.grad(target.scores.sum(), leaf, allow_unused=True)
        maps = torch.zeros_like(x) if grad is None else grad.detach()
        if not bool(torch.isfinite(maps).all()):
            raise NumericalError("the guided gradient is not finite (overflow in the model)")
        return Attribution(
            maps=maps,
            layer_maps={},
            degenerate=_degenerate(maps),
            method=self.name,
            layers=[],
            backend="eager",
            **outcome(logits, target, targets),
        )


@register_method
class GuidedGradCAM(_EagerOnly):
    """Guided Backprop times the upsampled Grad-CAM map of ``layers``: ``[B, C, H, W]``.

    ``layer_maps`` and ``layers`` are Grad-CAM's; both parts explain the same targets.
    """

    name = "guidedgradcam"

    def __init__(self, model: Any, layers: Layers = None, backend: Any = "eager", **options: Any):
        super().__init__(model, layers, backend, **options)
        shared = {k: options[k] for k in ("output", "pre_activation") if k in options}
        with warnings.catch_warnings():  # this constructor already warned about the model
            warnings.simplefilter("ignore")
            self._guided = GuidedBackprop(model, **shared)
            self._gradcam = GradCAM(model, layers, **shared)

    @property
    def layers(self) -> list[str] | None:
        return self._gradcam.layers

    def __call__(self, x: torch.Tensor, targets: Targets = None) -> Attribution:  # type: ignore[override]
        self._require_eager()
        x = self._check_model_input(check_input(x))
        guided = self._guided(x, targets)
        # Grad-CAM explains the classes guided backprop resolved (the same top-1 / decision)
        fixed = guided.targets if isinstance(guided.targets, torch.Tensor) else targets
        cam = self._gradcam(x, fixed)
        maps = guided.maps * cam.maps[:, None].to(guided.maps.dtype)
        return replace(
            guided,
            maps=maps,
            layer_maps=cam.layer_maps,
            degenerate=_degenerate(maps),
            method=self.name,
            layers=cam.layers,
        )
