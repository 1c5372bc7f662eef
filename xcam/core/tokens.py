"""Token activations as feature maps: what a transformer's layer outputs, laid out as the
``[B, C, h, w]`` map every method reads.

A *layout* says how a layer's output holds its positions:

- ``"nchw"``: a ``[B, C, h, w]`` map already (CNN layers): nothing to do;
- ``"nhwc"``: ``[B, h, w, C]`` (Swin stages, the inside of a ConvNeXt block): permuted;
- ``"grid"``: ``[B, N, C]``, ``N = h·w`` tokens in row-major order (``h:w`` as the input's
  aspect): reshaped;
- ``"cls+grid"``: ``[B, P + N, C]``, ``P`` prefix tokens (ViT's class token; DeiT's
  distillation token too) before the grid: dropped, the grid reshaped;
- a callable ``output -> [B, C, h, w]`` for any other layout.

The gradient of a layer's output is laid out as the output, so it is turned into a map the
same way: only the grid positions enter a map (as with pytorch-grad-cam's
``reshape_transform``, applied there to activations and gradients alike). Methods that run
the model on after the layer with changed activations (Ablation-CAM, Recipro-CAM) need the
way back, :meth:`Layout.to_tokens`; a callable has none.

Example::

    >>> import torch
    >>> from xcam.core.tokens import Layout
    >>> tokens = torch.arange(2 * 5 * 3.0).reshape(2, 5, 3)  # a class token + a 2x2 grid
    >>> m = Layout("cls+grid", prefix=1).to_map(tokens, (32, 32))
    >>> tuple(m.shape), m[0, :, 0, 1].tolist() == tokens[0, 2].tolist()
    ((2, 3, 2, 2), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from xcam.core.artifact import TOKEN_LAYOUTS
from xcam.core.errors import LayerTypeError, XCamError
from xcam.core.grid import grid_shape

# the layouts a name picks (``reshape="nhwc"``, ``--tokens nhwc``); "nchw" is a map as it is
LAYOUTS = ("nchw", *TOKEN_LAYOUTS)
Reshape = str | Callable[[torch.Tensor], torch.Tensor] | None
TOKENS_HINT = (
    "pass reshape= (--tokens on the command line): 'grid' for [B, N, C] tokens on an h x w "
    "grid, 'cls+grid' for a class token first, 'nhwc' for [B, h, w, C], or a callable that "
    "returns [B, C, h, w]"
)


@dataclass(frozen=True)
class Layout:
    """How one layer's output holds its positions (see the module docstring)."""

    kind: str = "nchw"  # one of LAYOUTS, or "custom" for ``fn``
    prefix: int = 0  # tokens before the grid ("cls+grid")
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def is_map(self) -> bool:
        return self.kind == "nchw"

    def to_map(self, t: torch.Tensor, size: Sequence[int], name: str = "") -> torch.Tensor:
        """``t`` (the layer's output, or its gradient) as ``[B, C, h, w]``; ``size`` is the
        input's ``(H, W)``, whose aspect a token grid has."""
        if self.fn is not None:
            m = self.fn(t)
            if not isinstance(m, torch.Tensor) or m.dim() != 4:
                got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
                raise LayerTypeError(
                    f"reshape= turned layer {name!r}'s {_shape(t)} output into {got}, not a "
                    "[B, C, h, w] map"
                )
            return m
        expected = 4 if self.kind in ("nchw", "nhwc") else 3
        if t.dim() != expected:
            raise LayerTypeError(_not_laid_out(name, t, self.kind))
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        grid = t[:, self.prefix :] if self.prefix else t
        h, w = grid_shape(grid.shape[1], size, name)
        return grid.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)

    def to_tokens(self, m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The way back: a ``[B, C, h, w]`` map as the layer's output, with the prefix tokens
        of ``like`` (the layer's own output for the same samples)."""
        if self.kind == "nchw":
            return m
        if self.kind == "nhwc":
            return m.permute(0, 2, 3, 1)
        if self.fn is not None:
            raise XCamError(
                "this method runs the model on after the layer with changed activations, "
                "which needs the way back from the map to the layer's output: a reshape= "
                "callable has none; give one of " + ", ".join(map(repr, LAYOUTS[1:]))
            )
        grid = m.flatten(2).transpose(1, 2)
        return torch.cat([like[:, : self.prefix].to(grid), grid], 1) if self.prefix else grid

    def describe(self, shape: Sequence[int], size: Sequence[int]) -> str:
        """``'cls+grid 14x14'``: the layout and the grid of an output of ``shape``."""
        if self.kind in ("nchw", "custom"):
            return self.kind
        if self.kind == "nhwc":
            return f"nhwc {shape[1]}x{shape[2]}"
        h, w = grid_shape(shape[1] - self.prefix, size)
        return f"{self.kind} {h}x{w}" + (f" ({self.prefix} dropped)" if self.prefix > 1 else "")


def layout_of(reshape: Reshape, model: nn.Module | None, name: str, out: torch.Tensor) -> Layout:
    """The layout of layer ``name`` whose output is ``out``: the caller's ``reshape`` (a name
    or a callable), else found: a 4-D output is a map (the layers
    :func:`permuted_layers` names are NHWC), 3-D tokens have the model's prefix tokens, or
    as many as leave a square grid."""
    check_reshape(reshape)
    if callable(reshape):
        return Layout("custom", fn=reshape)
    if reshape in ("nchw", "nhwc"):
        return Layout(reshape)
    if reshape is None and out.dim() == 4:
        return Layout("nchw")
    if out.dim() != 3:
        raise LayerTypeError(_not_laid_out(name, out, reshape))
    if reshape == "grid":
        return Layout("grid")
    prefix = prefix_tokens(model)
    if reshape == "cls+grid":
        return Layout("cls+grid", prefix=max(prefix or 1, 1))
    if prefix is None:  # a square grid, with or without a class token (never both)
        n = out.shape[1]
        if _square(n):
            prefix = 0
        elif _square(n - 1):
            prefix = 1
        else:
            raise LayerTypeError(
                f"layer {name!r} outputs {_shape(out)} tokens that make no square grid, "
                f"with or without a class token: {TOKENS_HINT}"
            )
    return Layout("cls+grid", prefix=prefix) if prefix else Layout("grid")


def check_reshape(reshape: object) -> None:
    """``reshape`` is None, a layout's name or a callable; anything else is an error."""
    if reshape is None or callable(reshape) or (isinstance(reshape, str) and reshape in LAYOUTS):
        return
    raise XCamError(
        f"reshape={reshape!r} is not a layout: give one of {', '.join(map(repr, LAYOUTS))} "
        "or a callable that returns [B, C, h, w]"
    )


def prefix_tokens(model: nn.Module | None) -> int | None:
    """How many tokens come before the grid in the model's token layers, where the model
    says: timm's ``num_prefix_tokens``; torchvision's ViT has its class token."""
    if model is None:
        return None
    count = getattr(model, "num_prefix_tokens", None)
    if isinstance(count, int):
        return count
    if isinstance(getattr(model, "class_token", None), torch.Tensor):
        return 1
    return None


def may_have_tokens(model: nn.Module) -> bool:
    """Whether any module of ``model`` can output tokens: a transformer's attention or
    LayerNorm, or a channels-last model (a plain CNN, Linear head and all, needs no probe)."""
    kinds = (nn.MultiheadAttention, nn.LayerNorm)
    return channels_last_model(model) or any(isinstance(m, kinds) for m in model.modules())


def channels_last_model(model: nn.Module) -> bool:
    """Whether some layers of ``model`` output ``[B, h, w, C]``: it has torchvision's
    ``Permute`` to NHWC (Swin, ConvNeXt), or says so as timm does (``output_fmt``)."""
    return timm_nhwc(model) or any(is_permute(m, True) for m in model.modules())


def timm_nhwc(model: nn.Module) -> bool:
    """A timm model whose features are channels-last (its Swin family)."""
    return str(getattr(model, "output_fmt", "")) == "NHWC"


# modules that take and give [B, C, h, w] even inside a channels-last model (timm's patch
# embedding convolution)
CHANNELS_FIRST = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)


def is_permute(module: nn.Module, to_channels_last: bool) -> bool:
    """Whether ``module`` is torchvision's ``Permute`` to NHWC (or back to NCHW)."""
    dims = getattr(module, "dims", None)
    if type(module).__name__ != "Permute" or dims is None:
        return False
    return list(dims) == ([0, 2, 3, 1] if to_channels_last else [0, 3, 1, 2])


def _square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape))


def _not_laid_out(name: str, t: torch.Tensor, kind: str | None) -> str:
    what = f"a {_shape(t)} tensor ({t.dim()}-D)"
    if kind in (None, "nchw"):
        return (
            f"layer {name!r} outputs {what}, not a [B, C, h, w] feature map or [B, N, C] "
            f"tokens: choose a layer with a spatial output (`xcam layers MODEL` lists them), "
            f"or {TOKENS_HINT}"
        )
    want = "[B, h, w, C]" if kind == "nhwc" else "[B, N, C] tokens"
    return f"layer {name!r} outputs {what}, not {want} as layout {kind!r} says (reshape=, --tokens)"
