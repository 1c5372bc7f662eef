"""Layer references: dotted names, module objects, or ``None`` for the last spatial layer."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from xcam.core.errors import InputError, LayerNotFoundError, ModelSpecError, XCamError

LayerRef = str | nn.Module
Layers = LayerRef | Sequence[LayerRef] | None


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    """Map each submodule (by identity) to its first dotted name; the root is excluded."""
    names: dict[nn.Module, str] = {}
    for name, module in model.named_modules():
        if name and module not in names:
            names[module] = name
    return names


def floating_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's floating parameters (float16 for a ``model.half()``), or
    None when it has none."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    return None if param is None else param.dtype


def unwrap_model(model: nn.Module) -> nn.Module:
    """The eager module to hook: a ``torch.compile``d model's original module (its
    ``_orig_mod``, the same parameters), ``model`` itself otherwise. A TorchScript module
    (``torch.jit.script`` / ``trace``) can't be hooked: :class:`ModelSpecError`."""
    import sys

    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # loaded once anything compiled
    if eval_frame is not None:
        while isinstance(model, eval_frame.OptimizedModule):
            model = model._orig_mod
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelSpecError(
            f"a TorchScript module ({type(model).__name__}, from torch.jit.script or trace) "
            "can't be hooked to capture its layers: pass the Python module it was made from "
            "(xcam exports that to TorchScript itself, with its layers as outputs)"
        )
    return model


def _closest(name: str, candidates: Sequence[str], n: int = 5) -> list[str]:
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not close:  # fall back to names sharing the first path component
        head = name.split(".")[0]
        close = [c for c in candidates if c.split(".")[0] == head][:n]
    return close or list(candidates[:n])


def resolve_layer(model: nn.Module, ref: LayerRef) -> tuple[str, nn.Module]:
    """Return ``(dotted_name, module)`` for a name or a module object of ``model``."""
    if isinstance(ref, nn.Module):
        name = module_names(model).get(ref)
        if name is None:
            raise LayerNotFoundError(
                f"the module {type(ref).__name__} given as a layer is not part of the model"
            )
        return name, ref
    if not isinstance(ref, str) or not ref:
        raise LayerNotFoundError(
            f"a layer is a dotted module name or an nn.Module, got {ref!r} ({type(ref).__name__})"
        )
    try:
        return ref, model.get_submodule(ref)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = _closest(ref, names)
        raise LayerNotFoundError(
            f"no layer named {ref!r} in {type(model).__name__}; closest: {', '.join(close)}"
            " (`xcam layers MODEL` lists them all)"
        ) from None


def resolve_layers(model: nn.Module, layers: Layers) -> list[tuple[str, nn.Module]] | None:
    """Resolve one reference or a list of them; ``None`` stays ``None`` (chosen at run time)."""
    if layers is None:
        return None
    single = isinstance(layers, str | nn.Module) or not isinstance(layers, Iterable)
    refs = [layers] if single else list(layers)  # a lone 123 is named by resolve_layer
    if not refs:
        raise LayerNotFoundError("an empty list of layers was given")
    resolved = [resolve_layer(model, r) for r in refs]
    seen: set[str] = set()
    for name, _ in resolved:
        if name in seen:
            raise LayerNotFoundError(f"layer {name!r} is listed twice")
        seen.add(name)
    return resolved


@dataclass(frozen=True)
class LayerInfo:
    """One module's output in a probe forward pass: a feature map, or tokens that make one
    (``layout``: see :mod:`xcam.core.tokens`; ``grid``: the map's ``(h, w)``)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    order: int  # when the module finished, in execution order
    layout: str = "nchw"
    grid: tuple[int, int] = (0, 0)
    prefix: int = 0  # tokens before the grid ("cls+grid")
    replicated: bool = False  # every position holds the same values (one position, upsampled)

    @property
    def positions(self) -> int:
        """How many positions the map has (``h·w``)."""
        return self.grid[0] * self.grid[1]

    @property
    def spatial(self) -> bool:
        """A grid of more than one position whose positions differ."""
        return self.positions > 1 and not self.replicated

    @property
    def is_map(self) -> bool:
        """A ``[B, C, h, w]`` output, as CNN layers give (not tokens, not NHWC)."""
        return self.layout == "nchw"


def candidate_layers(model: nn.Module, example: torch.Tensor) -> list[LayerInfo]:
    """Run ``model`` once on ``example`` and list modules whose output is a feature map:
    a 4-D ``[B, C, h, w]`` tensor, ``[B, h, w, C]`` (after torchvision's ``Permute`` to
    channels-last: Swin, ConvNeXt blocks), or ``[B, N, C]`` tokens on a square grid (with a
    class token or the model's prefix tokens: ViT).

    The list is in the order modules finish, so a block comes after its children.
    The model's mode and hooks are left as they were. A floating ``example`` is cast to
    the model's floating dtype (a probe of a ``model.half()``). The probe is a batch of two,
    the example's first sample and seeded uniform noise of its shape (a zero image makes many
    maps constant): a module whose output doesn't carry the batch (Swin V2's relative-position
    MLP, run on a table of offsets) is no map of the image, and a 4-D output whose positions
    all hold the same values in both samples is ``replicated`` (AlexNet's and VGG's
    ``avgpool`` at a small input copy one position to 6x6 or 7x7). A model that only runs at
    batch 1 is probed with the example's first sample alone.
    """
    from xcam.core.capture import preserved_state
    from xcam.core.tokens import CHANNELS_FIRST, is_permute, layout_of, timm_nhwc

    dtype = floating_dtype(model)
    if dtype is not None and example.is_floating_point() and example.dtype != dtype:
        example = example.to(dtype)
    batch = example.shape[0]
    second = example[:1]
    if example.is_floating_point():
        second = torch.rand(second.shape, generator=torch.Generator().manual_seed(0))
    probe = torch.cat([example[:1], second.to(example.device, example.dtype)])
    infos: list[LayerInfo] = []
    names = module_names(model)
    size = tuple(example.shape[-2:])
    channels_last = [False]  # flipped as torchvision's Permute modules run
    nhwc_model = timm_nhwc(model)  # timm's Swin: every 4-D output but a convolution's

    def record(module: nn.Module, _inputs: object, output: object) -> None:
        if is_permute(module, True) or is_permute(module, False):
            channels_last[0] = is_permute(module, True)
        if not isinstance(output, torch.Tensor) or output.dim() not in (3, 4):
            return
        if output.shape[0] != probe.shape[0]:
            return
        name, prefix = names[module], 0
        replicated = False
        if output.dim() == 4:
            nhwc = channels_last[0] or (nhwc_model and not isinstance(module, CHANNELS_FIRST))
            grid = tuple(output.shape[1:3] if nhwc else output.shape[2:])
            layout = "nhwc" if nhwc else "nchw"
            first = output[:, :1, :1] if nhwc else output[:, :, :1, :1]
            replicated = bool(torch.equal(output, first.expand_as(output)))
        else:
            try:
                found = layout_of(None, model, name, output)
            except XCamError:  # tokens of no grid (or not tokens at all)
                return
            layout, prefix = found.kind, found.prefix
            grid = found.to_map(output[:1], size, name).shape[2:]
        shape = (batch, *output.shape[1:])
        infos.append(
            LayerInfo(
                name, type(module).__name__, shape, len(infos), layout, grid, prefix, replicated
            )
        )

    handles = []
    with preserved_state(model):
        try:
            for module in names:
                handles.append(module.register_forward_hook(record))
            with torch.no_grad():
                try:
                    model(probe)
                except Exception:  # a model that only takes one sample (x.view(1, -1), ...)
                    infos.clear()
                    channels_last[0] = False
                    probe = example[:1]
                    model(probe)
        finally:
            for h in handles:
                h.remove()
    # a module called twice (shared) is listed once, at its last call
    last: dict[str, LayerInfo] = {i.name: i for i in infos}
    return sorted(last.values(), key=lambda i: i.order)


def default_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The last module (in execution order) whose output is a spatial 4-D map; for a vision
    transformer, the norm before its last attention (see :func:`family_default`)."""
    found = family_default(model) or last_spatial(candidate_layers(model, example))
    if found is None:
        raise InputError(
            f"{type(model).__name__} has no layer with a 4-D [B, C, H, W] output for an input of"
            f" shape {tuple(example.shape)}; pass layers= explicitly"
        )
    return found


def last_spatial(infos: Sequence[LayerInfo]) -> str | None:
    """The last of ``infos`` with a spatial 4-D output (NCHW or NHWC; positions that differ),
    else the last with more than one position, else the last 4-D."""
    maps = [i for i in infos if i.layout in ("nchw", "nhwc")]
    spatial = [i for i in maps if i.spatial] or [i for i in maps if i.positions > 1] or maps
    return spatial[-1].name if spatial else None


def family_default(model: nn.Module) -> str | None:
    """The default layer of a vision transformer: the first norm of its last block (the input
    of the last attention). Only the class token reaches the head, so the grid tokens of the
    last block's output have no gradient; the attention's input is where they still count.
    Of torchvision's segmentation models: the backbone layer whose features the classifier
    reads (after it, the layers are the per-pixel classifier itself). Of torchvision's
    detectors: the last stage of the backbone's body, before the FPN (after it come the
    detection heads, whose layers see proposals or anchors, not the image batch)."""
    found = _segmentation_backbone(model) or _detection_backbone(model)
    if found is not None:
        return found
    for blocks, norm in (("encoder.layers", "ln_1"), ("blocks", "norm1")):  # torchvision, timm
        try:
            container = model.get_submodule(blocks)
        except AttributeError:
            continue
        last = list(container.named_children())[-1:]
        if last and isinstance(getattr(last[0][1], norm, None), nn.Module):
            return f"{blocks}.{last[0][0]}.{norm}"
    return None


def _detection_backbone(model: nn.Module) -> str | None:
    """``backbone.body.<last stage>`` of a torchvision detector (a backbone with an FPN over
    the stages its ``body`` returns)."""
    body = getattr(getattr(model, "backbone", None), "body", None)
    returned = getattr(body, "return_layers", None)
    if not isinstance(returned, dict) or not returned or not hasattr(model.backbone, "fpn"):
        return None
    return f"backbone.body.{list(returned)[-1]}"


def _segmentation_backbone(model: nn.Module) -> str | None:
    """``backbone.<layer>`` of a torchvision segmentation model (its backbone returns the
    layers of ``return_layers``): the one it names ``out`` (FCN, DeepLabV3) or ``high``
    (LR-ASPP)."""
    backbone = getattr(model, "backbone", None)
    returned = getattr(backbone, "return_layers", None)
    if not isinstance(returned, dict) or not hasattr(model, "classifier"):
        return None
    for wanted in ("out", "high"):
        names = [k for k, v in returned.items() if v == wanted]
        if names:
            return f"backbone.{names[0]}"
    return None
