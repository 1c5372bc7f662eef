"""Where a method's activations and gradients come from, chosen once when it is built:

- :class:`~xcam.sources.eager.EagerModel`: the ``nn.Module`` itself (``backend="eager"``);
- :class:`~xcam.sources.backend.BackendSource`: a file from :func:`xcam.load`, with
  gradients from its graph (exported with ``--gradients``) or from the eager tail;
- :class:`~xcam.sources.export.AutoExport`: ``backend="onnxruntime"`` and friends, an export
  of the eager model made, parity-checked and cached on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from xcam.backends import BACKENDS, Backend
from xcam.core.artifact import BACKEND_FORMAT
from xcam.core.cammodel import OutputSelector
from xcam.core.errors import XCamError, warn_caller
from xcam.core.final import final_activation
from xcam.core.layers import Layers, resolve_layers, unwrap_model
from xcam.sources.backend import BackendSource
from xcam.sources.base import Captured, LayerRef, Source
from xcam.sources.eager import EagerModel, saturation_warning
from xcam.sources.export import AutoExport

__all__ = [
    "AutoExport",
    "BackendSource",
    "Captured",
    "EagerModel",
    "LayerRef",
    "Opened",
    "Source",
    "open_source",
]


@dataclass
class Opened:
    """What :func:`open_source` decided for a method."""

    source: EagerModel | BackendSource | AutoExport
    eager: EagerModel | None  # the eager model, where there is one
    backend: Backend | None  # the loaded file, where one was given
    layers: list[LayerRef] | None  # None: the default layer, found on the first input
    output: OutputSelector
    pre_activation: bool


@dataclass
class Request:
    """What the caller asked a method for; :func:`open_source` completes it with the
    choices a loaded file made (its ``output``, ``pre_activation``)."""

    model: Any
    layers: Layers
    backend: Any
    output: OutputSelector
    pre_activation: bool
    needs_gradients: bool
    export_options: dict[str, Any]
    method: str  # the class's name, for messages
    warned: bool = False  # about a saturating final activation


def open_source(request: Request) -> Opened:
    """The source for ``request``: checked, with the file's choices adopted."""
    if isinstance(request.model, Backend):
        layers = backend_layers(request.model, request.layers)
        adopt_file(request, request.model)
        source = BackendSource(request.model, None, request.method, request.output)
        return Opened(source, None, request.model, layers, request.output, request.pre_activation)
    model, layers = _plain_model(request)
    _warn_if_probability(request, model)
    backend = request.backend
    if isinstance(backend, Backend):
        adopt_file(request, backend)  # before the eager model: it settles pre_activation
    eager = EagerModel(
        model,
        pre_activation=request.pre_activation,
        needs_gradients=request.needs_gradients,
        warned=request.warned,
    )
    if isinstance(backend, Backend):
        if layers is None:
            layers = resolve_layers(model, backend.layer_names)  # all, as the file
        backend_layers(backend, [n for n, _ in layers])
        source: Any = BackendSource(backend, eager, request.method, request.output)
    elif backend in (None, "eager"):
        source, backend = eager, None
    elif backend in BACKENDS:
        options = {
            "output": request.output,
            "pre_activation": request.pre_activation,
            **request.export_options,
        }
        source = AutoExport(eager, BACKEND_FORMAT[backend].name, options, request.method)
        backend = None
    else:
        raise XCamError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    return Opened(source, eager, backend, layers, request.output, request.pre_activation)


def _plain_model(request: Request) -> tuple[nn.Module, list[LayerRef] | None]:
    """The model to explain (a wrapper's inner model) and its target layers."""
    model, layers = request.model, request.layers
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module or a loaded backend, got {type(model).__name__}"
        )
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        warn_caller(
            f"{type(model).__name__} unwrapped: xcam explains its .module (layer names "
            "without the 'module.' prefix)"
        )
        model = model.module
        layers = _unprefixed(layers)
    plain = unwrap_model(model)  # torch.compile: its _orig_mod; TorchScript: a clear error
    if plain is not model:
        model, layers = plain, _unprefixed(layers, "_orig_mod.")
    return model, resolve_layers(model, layers)


def _warn_if_probability(request: Request, model: nn.Module) -> None:
    """Warn (once) when the model's last module is a probability a gradient saturates."""
    final = final_activation(model)
    if final is not None and not request.pre_activation and request.needs_gradients:
        request.warned = True
        warn_caller(saturation_warning(model, type(final).__name__))


def _unprefixed(layers: Layers, prefix: str = "module.") -> Layers:
    """Layer names of a wrapper (DataParallel's ``module.layer4``, torch.compile's
    ``_orig_mod.layer4``) as names in the wrapped model."""

    def strip(ref):
        return ref[len(prefix) :] if isinstance(ref, str) and ref.startswith(prefix) else ref

    if isinstance(layers, list | tuple):
        return [strip(r) for r in layers]
    return strip(layers)


def backend_layers(backend: Any, layers: Layers) -> list[LayerRef]:
    """The file's outputs named by ``layers`` (None: all of them, fused as its own map)."""
    names = backend.layer_names
    if layers is None:
        return [(n, None) for n in names]
    refs = [layers] if isinstance(layers, str) else list(layers)  # type: ignore[arg-type]
    for ref in refs:
        if not isinstance(ref, str) or ref not in names:
            raise XCamError(
                f"layer {ref!r} is not an output of {backend.path.name}; it has "
                f"{', '.join(names)}. Re-export with that layer"
            )
    return [(r, None) for r in refs]


def adopt_file(request: Request, backend: Any) -> None:
    """The file's choices hold for the eager tail too: the part of a tuple / dict output
    it exported as ``logits`` (another one is an error), and ``pre_activation`` (a file
    that applies the final activation can't skip it)."""
    meta, name = backend.metadata, backend.path.name
    if request.output is None:
        request.output = meta.output
    elif meta.output is not None and request.output != meta.output:
        raise XCamError(
            f"output={request.output!r}, but {name} was exported with --output "
            f"{meta.output} (output={meta.output!r}): its logits are that part of the "
            f"model's output. Pass output={meta.output!r}, or re-export with --output "
            f"{request.output}"
        )
    if meta.pre_activation:
        request.pre_activation = True
    elif meta.activation is not None and request.pre_activation:
        raise XCamError(
            f"pre_activation=True, but {name} applies the model's final "
            f"{meta.activation} in its graph: re-export with --pre-activation "
            "(pre_activation=True)"
        )
    elif meta.activation is not None and request.needs_gradients and not request.warned:
        request.warned = True
        warn_caller(
            f"{name} outputs probabilities (its model ends in "
            f"{meta.activation}): their gradient saturates (near 0 or 1 it vanishes), so "
            "maps can be flat. Export with --pre-activation (pre_activation=True) to "
            "explain the score before it"
        )
