"""The machinery every method shares: capture, gradients, combine, ReLU, normalise, upsample.

A method only says how to weight the channels of an activation (its ``weights``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xcam.cammodel import CamModel
from xcam.capture import preserved_state
from xcam.errors import InputError, TargetError
from xcam.layers import Layers, default_layer, resolve_layers
from xcam.result import CamResult
from xcam.targets import Resolved, Targets, flatten_logits, resolve_targets


@dataclass
class LayerContext:
    """What a weighting rule may look at, for one layer."""

    name: str
    activations: torch.Tensor  # A, [B, C, h, w]
    gradients: torch.Tensor | None  # dS/dA, same shape; None for gradient-free methods
    logits: torch.Tensor  # [B, K]
    target: Resolved
    model: nn.Module
    module: nn.Module


def check_input(x: object) -> torch.Tensor:
    """A float ``[B, C, H, W]`` tensor (``[C, H, W]`` is taken as a batch of one), finite."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"the input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise InputError(f"the input must be [B, C, H, W] (or [C, H, W]), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError("the input batch is empty")
    if not x.dtype.is_floating_point:
        raise InputError(f"the input must be a float tensor, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise InputError("the input contains NaN or infinite values")
    return x


def normalize(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale each ``[H, W]`` map of ``[B, H, W]`` to ``[0, 1]``.

    A constant map (nothing to show) becomes zeros and is flagged, never NaN.
    """
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - lo
    constant = span[:, 0, 0] <= 0
    scaled = (maps - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return scaled.clamp_(0.0, 1.0), constant


def _flat_or_raw(logits: torch.Tensor) -> torch.Tensor:
    try:
        return flatten_logits(logits)
    except TargetError:  # e.g. a regression output explained through a callable target
        return logits


class BaseCAM:
    """A class activation map method: ``Method(model, layers=None)(x, targets=None)``.

    Subclasses set ``name`` (registry key) and ``needs_gradients`` and implement
    :meth:`weights`. The map of a layer is ``ReLU(sum_c w_c * A_c)``; with several layers
    the maps are upsampled to the input, normalised, averaged and normalised again.
    """

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = True

    def __init__(self, model: nn.Module, layers: Layers = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self._layers = resolve_layers(model, layers)

    @property
    def layers(self) -> list[str] | None:
        return None if self._layers is None else [n for n, _ in self._layers]

    def weights(self, ctx: LayerContext) -> torch.Tensor:
        """Channel weights ``[B, C]`` (or per-position weights ``[B, C, h, w]``)."""
        raise NotImplementedError

    def _resolve(self, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
        if self._layers is None:
            name = default_layer(self.model, x)
            self._layers = resolve_layers(self.model, name)
        assert self._layers is not None
        return self._layers

    def _check_model_input(self, x: torch.Tensor) -> None:
        param = next(self.model.parameters(), None)
        if param is None:
            return
        if param.device != x.device:
            raise InputError(
                f"the input is on {x.device} but the model is on {param.device}; move one of them"
            )
        if param.dtype.is_floating_point and param.dtype != x.dtype:
            raise InputError(f"the input is {x.dtype} but the model's weights are {param.dtype}")

    def __call__(self, x: torch.Tensor, targets: Targets = None) -> CamResult:
        x = check_input(x)
        self._check_model_input(x)
        layers = self._resolve(x)
        names = [n for n, _ in layers]
        cam_model = CamModel(self.model, [m for _, m in layers], grad_handles=self.needs_gradients)
        grad_mode = torch.enable_grad() if self.needs_gradients else torch.no_grad()
        with preserved_state(self.model), grad_mode:
            logits, *acts = cam_model(x)
            target = resolve_targets(logits, targets)
            grads = self._gradients(target.scores, acts) if self.needs_gradients else None
        flat = _flat_or_raw(logits.detach())
        layer_maps: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for i, (name, module) in enumerate(layers):
                a = acts[i].detach()
                ctx = LayerContext(
                    name=name,
                    activations=a,
                    gradients=None if grads is None else grads[i],
                    logits=flat,
                    target=target,
                    model=self.model,
                    module=module,
                )
                layer_maps[name] = self.combine(a, self.weights(ctx), name)
            maps, degenerate = self.fuse(list(layer_maps.values()), x.shape[-2:])
        return CamResult(
            maps=maps,
            logits=flat,
            targets=target.classes if target.classes is not None else targets,  # type: ignore[arg-type]
            scores=target.scores.detach(),
            layer_maps=layer_maps,
            degenerate=degenerate,
            method=self.name,
            layers=names,
        )

    @staticmethod
    def _gradients(scores: torch.Tensor, acts: list[torch.Tensor]) -> list[torch.Tensor]:
        """``dS/dA`` for every layer by ``autograd.grad``; a layer S does not use gets zeros.

        The batch's scores are summed: in eval mode samples don't interact, so each
        sample's gradient is its own.
        """
        if not scores.requires_grad:  # the score does not depend on any activation
            return [torch.zeros_like(a) for a in acts]
        grads = torch.autograd.grad(scores.sum(), acts, allow_unused=True)
        return [torch.zeros_like(a) if g is None else g for a, g in zip(acts, grads, strict=True)]

    @staticmethod
    def combine(acts: torch.Tensor, weights: torch.Tensor, name: str = "") -> torch.Tensor:
        """``ReLU(sum_c w_c A_c)``: ``[B, h, w]``. ``weights`` is ``[B, C]`` or ``[B, C, h, w]``."""
        if weights.dim() == 2:
            weights = weights[:, :, None, None]
        cam = F.relu((weights * acts).sum(dim=1))
        if not bool(torch.isfinite(cam).all()):
            raise FloatingPointError(
                f"the map of layer {name!r} is not finite (overflow in activations or gradients)"
            )
        return cam

    @staticmethod
    def fuse(
        layer_maps: list[torch.Tensor], size: tuple[int, int] | torch.Size
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Upsample each layer's map to ``size`` (bilinear), normalise, average, normalise."""
        ups = []
        for cam in layer_maps:
            up = F.interpolate(cam[:, None], size=tuple(size), mode="bilinear", align_corners=False)
            ups.append(normalize(up[:, 0])[0])
        return normalize(torch.stack(ups).mean(dim=0))
