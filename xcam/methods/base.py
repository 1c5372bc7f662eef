"""The base of every class activation map: a method is its weighting rule.

Capturing (:mod:`xcam.sources`), combining, ReLU, normalising and upsampling
(:mod:`xcam.core.ops`) are shared; a subclass sets ``name`` and implements :meth:`weights`.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, ClassVar

import torch
from torch import nn

from xcam.core import ops
from xcam.core.artifact import FORMATS
from xcam.core.cammodel import WHOLE, OutputSelector
from xcam.core.decision import BOXES, PRESENT
from xcam.core.errors import InputError, NumericalError, XCamError
from xcam.core.inputs import check_input, first_conv_channels
from xcam.core.layers import Layers, candidate_layers, default_layer, resolve_layers
from xcam.core.result import CamResult, outcome
from xcam.core.targets import (
    Targets,
    detected_boxes,
    flat_output,
    flatten_logits,
    present_labels,
    reported_logits,
    score_functions,
)
from xcam.core.tokens import Layout, Reshape, channels_last_model, check_reshape, layout_of
from xcam.core.tracing import FX_GATE
from xcam.methods.augment import AUGMENTATIONS, augmented
from xcam.methods.context import LayerContext
from xcam.sources import AutoExport, Captured, LayerRef, Request, open_source
from xcam.sources.eager import no_tail


class BaseCAM:
    """A class activation map method: ``Method(model, layers=None)(x, targets=None)``.

    Subclasses set ``name`` (registry key) and ``needs_gradients`` and implement
    :meth:`weights`. The map of a layer is ``ReLU(sum_c w_c * A_c)``; with several layers
    the maps are upsampled to the input, normalised, averaged and normalised again.

    ``reshape`` says how a layer that outputs tokens (a vision transformer's) becomes a
    ``[B, C, h, w]`` map: ``"grid"``, ``"cls+grid"``, ``"nhwc"`` or a callable; by default
    torchvision's and timm's ViT and Swin layers are found (see :mod:`xcam.core.tokens`).

    ``backend`` says where the activations come from: ``"eager"`` (default), one of
    ``"onnxruntime"``, ``"torchscript"``, ``"pt2"`` (the model is exported on the first call,
    checked against eager, and cached per input shape; ``export_options`` go to
    :func:`exporters.export`), or a backend from :func:`xcam.load`. ``model`` may itself be a
    loaded backend. Gradients then come from the eager *tail* of the model after each layer
    (see :mod:`xcam.core.tail`) or from the file's own graph (see :mod:`xcam.sources`).
    """

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = True
    uses_layers: ClassVar[bool] = True  # False: the method has no target layer (FullGrad, ...)
    # the map needs only each layer's activations and their gradients, so it can come from a
    # file with in-graph gradients (no eager model): what `xcam.lite` and `xcam bench` rely on
    in_graph: ClassVar[bool] = False
    # the method's map is the Grad-CAM map a file with in-graph gradients outputs: read from
    # the file, not recomputed (upsampling and normalising in torch cost as much as the
    # file's own work). Read from the class that sets it only, so a subclass with another
    # rule never inherits it
    reads_gradcam_output: ClassVar[bool] = False
    # the method differentiates the eager model itself (down to its input, or at every
    # biased layer): no backend or exported file can serve it
    eager_only: ClassVar[bool] = False
    augmentations: ClassVar[tuple[tuple[bool, float], ...]] = AUGMENTATIONS
    # attributes of a subclass that change its maps (they enter :meth:`settings`)
    output_options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        model: Any,
        layers: Layers = None,
        backend: Any = "eager",
        *,
        output: OutputSelector = None,
        export_options: dict[str, Any] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        center: bool = False,
        pre_activation: bool = False,
        reshape: Reshape = None,
    ):
        self._layouts: dict[str, Layout] = {}
        self.reshape = reshape  # how token layers become maps (None: found per layer)
        self._nhwc: set[str] | None = None  # the model's channels-last layers, once probed
        self.aug_smooth = aug_smooth
        self.eigen_smooth = eigen_smooth
        self.center = center  # the eigen projections subtract each channel's mean first
        self.export_options = dict(export_options or {})
        request = Request(
            model,
            layers,
            backend,
            output,
            pre_activation,
            self.needs_gradients,
            self.export_options,
            type(self).__name__,
        )
        opened = open_source(request)
        self.source = opened.source
        self.eager = opened.eager
        self.backend = opened.backend
        self._output = opened.output
        self._pre_activation = opened.pre_activation
        self._layers = opened.layers
        self.model: nn.Module | None = None if self.eager is None else self.eager.model
        # checked against every input
        self._in_channels = None if self.model is None else first_conv_channels(self.model)

    @property
    def reshape(self) -> Reshape:
        """How a layer of tokens becomes a map: ``"grid"``, ``"cls+grid"``, ``"nhwc"``, a
        callable, or None (found per layer)."""
        return self._reshape

    @reshape.setter
    def reshape(self, value: Reshape) -> None:
        check_reshape(value)
        self._reshape = value
        self._layouts.clear()  # found with the old value

    @property
    def activation(self) -> str | None:
        """What the explained logits went through: ``"sigmoid"``, ``"softmax"``,
        ``"log_softmax"`` (the model's own final activation, kept), or None (raw scores:
        no final activation, or ``pre_activation``)."""
        if self.backend is not None:
            return self.backend.activation
        return None if self.eager is None else self.eager.activation

    @property
    def pre_activation(self) -> bool:
        """Explain the scores before the model's final sigmoid / softmax (set at
        construction, or by the loaded file)."""
        return self._pre_activation

    @pre_activation.setter
    def pre_activation(self, value: bool) -> None:
        # one value for every part that reads it: the eager model and future exports
        self._pre_activation = value
        if self.eager is not None:
            self.eager.pre_activation = value
        if isinstance(self.source, AutoExport):
            self.source.options["pre_activation"] = value

    @property
    def output(self) -> OutputSelector:
        """Which part of a tuple / dict model output holds the logits (None: the output)."""
        return self._output

    @output.setter
    def output(self, value: OutputSelector) -> None:
        self._output = value
        if isinstance(self.source, AutoExport):
            self.source.options["output"] = value
        elif hasattr(self.source, "output"):
            self.source.output = value

    @property
    def layers(self) -> list[str] | None:
        return None if self._layers is None else [n for n, _ in self._layers]

    # the auto-export's cache, its folder and the eager tails (what the tests look into)
    @property
    def _exports(self) -> dict:
        """The exports made so far (``backend="onnxruntime"`` and friends)."""
        return self.source._exports if isinstance(self.source, AutoExport) else {}

    @property
    def _tmp(self) -> Any:
        return self.source._tmp if isinstance(self.source, AutoExport) else None

    @property
    def _tails(self) -> dict:
        return {} if self.eager is None else self.eager._tails

    def close(self) -> None:
        """Remove the files of the models this explainer exported (``backend="onnxruntime"``
        and friends); the next call exports again. Also done when it is garbage-collected,
        or on leaving a ``with`` block."""
        if isinstance(self.source, AutoExport):
            self.source.close()

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def settings(self) -> dict[str, Any]:
        """Every option that changes this explainer's maps, as plain data: the method part
        of a job's run record (options of speed alone, like batch sizes, are left out)."""
        if self.backend is not None:
            backend = f"{self.backend.format}:{self.backend.path.name}"
        elif isinstance(self.source, AutoExport):
            backend = FORMATS[self.source.format].backend
        else:
            backend = "eager"
        found = {
            "method": self.name,
            "layers": self.layers,
            "backend": backend,
            "output": self.output,
            "aug_smooth": self.aug_smooth,
            "eigen_smooth": self.eigen_smooth,
            "center": self.center,
            "pre_activation": self.pre_activation,
            "reshape": self.reshape
            if self.reshape is None or isinstance(self.reshape, str)
            else getattr(self.reshape, "__qualname__", type(self.reshape).__name__),
        }
        found.update({k: getattr(self, k) for k in self.output_options})
        return found

    def weights(self, ctx: LayerContext) -> torch.Tensor:
        """Channel weights ``[B, C]`` (or per-position weights ``[B, C, h, w]``)."""
        raise NotImplementedError

    def layer_map(self, ctx: LayerContext) -> torch.Tensor:
        """The layer's map ``[B, h, w]``: ``ReLU(sum_c w_c A_c)``, or with ``eigen_smooth``
        the ReLU of the first principal component of the weighted activations ``w_c A_c``."""
        weights = self.weights(ctx)
        return self.combine(ctx.activations, weights, ctx.name, self.eigen_smooth, self.center)

    combine = staticmethod(ops.combine)
    fuse = staticmethod(ops.fuse)

    def __call__(self, x: torch.Tensor, targets: Targets = None) -> CamResult:
        x = self._check_model_input(check_input(x))
        if isinstance(targets, str) and targets in (PRESENT, BOXES):
            return self._per_row(x, targets)
        with FX_GATE.shared():  # see xcam.core.tracing: no torch.fx trace meanwhile
            result = self._explain(x, targets)
            if not self.aug_smooth:
                return result
            return augmented(x, result, self._explain, self.augmentations, self._fixed_size())

    def _per_row(self, x: torch.Tensor, kind: str) -> CamResult:
        """``targets="present"`` (a row per label a multi-label head says is present) or
        ``"boxes"`` (a row per box a detector finds), and ``samples`` to say whose: one
        forward finds them, one explanation explains them."""
        output = self._output_for(None)
        with FX_GATE.shared():
            layers = self._resolve(x)
            source = self.source.for_input(x, [n for n, _ in layers])
            out = source.forward(output)(x)
        if kind == PRESENT:
            flat = flatten_logits(out)
            samples, labels = present_labels(flat, self.activation)
            # a single output's label 0 present is its positive decision, target 1
            chosen: Any = torch.ones_like(labels) if flat.shape[1] == 1 else labels
        else:
            flat = flat_output(out)
            samples, chosen = detected_boxes(out)
            labels = chosen
        if len(samples) == 0:  # nothing present anywhere: no rows
            return CamResult(
                maps=x.new_zeros((0, *x.shape[-2:]), dtype=torch.float32),
                logits=flat[:0].detach().clone(),
                targets=labels,
                scores=flat.new_zeros(0),
                layer_maps={},
                degenerate=torch.zeros(0, dtype=torch.bool),
                method=self.name,
                layers=[n for n, _ in layers],
                backend=source.name,
                activation=self.activation,
                samples=samples,
            )
        result = self(x[samples.to(x.device)], chosen)
        result.samples = samples
        return result

    def _check_model_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` checked against the eager model (channels, layout) and moved to its device
        and dtype; integer inputs are cast with a warning (they are rarely normalised)."""
        if self.model is None:
            return x if x.dtype.is_floating_point else x.float()
        expected = self._in_channels
        if expected is not None and x.shape[1] != expected:
            if x.shape[-1] == expected:
                raise InputError(
                    f"the input {tuple(x.shape)} looks channels-last (NHWC); the model takes "
                    f"NCHW with {expected} channels: use x.permute(0, 3, 1, 2)"
                )
            raise InputError(
                f"the input has {x.shape[1]} channels; the model's first convolution takes "
                f"{expected}"
            )
        param = next(self.model.parameters(), None)
        if param is None or self.source is not self.eager:
            return x if x.dtype.is_floating_point else x.float()
        if not x.dtype.is_floating_point:
            warnings.warn(
                f"the input is {x.dtype}; it is cast to {param.dtype} as it is (values are not "
                "rescaled: normalise it as the model expects)",
                UserWarning,
                stacklevel=3,
            )
        dtype = param.dtype if param.dtype.is_floating_point else torch.float32
        return x.to(device=param.device, dtype=dtype)

    def _resolve(self, x: torch.Tensor) -> list[LayerRef]:
        if self._layers is None:
            assert self.model is not None
            self._layers = resolve_layers(self.model, default_layer(self.model, x))
        return self._layers

    def _output_for(self, targets: Targets) -> OutputSelector:
        """What of the model's output the targets see: ``output``; without it, a callable
        target sees the whole output (several heads may enter its score)."""
        if self.output is None and score_functions(targets):
            return WHOLE
        return self.output

    def _explain(self, x: torch.Tensor, targets: Targets) -> CamResult:
        layers = self._resolve(x)
        source = self.source.for_input(x, [n for n, _ in layers])
        output = self._output_for(targets)
        got = source.capture(x, layers, targets, output, self.needs_gradients)
        forward = source.forward(output)
        layer_maps = self._layer_maps(x, layers, got, targets, forward, output)
        if self._reads_gradcam(got):
            maps = got.gradcam.float()
            top = maps.flatten(1).amax(dim=1)  # normalised: 1, or 0 for a constant map
            if not bool(torch.isfinite(top).all()):
                raise NumericalError(f"{source.name} gave a map that is not finite")
            degenerate = top <= 0
        else:
            with torch.no_grad():
                maps, degenerate = self.fuse(list(layer_maps.values()), x.shape[-2:])
        return CamResult(
            maps=maps,
            layer_maps=layer_maps,
            degenerate=degenerate,
            method=self.name,
            layers=[n for n, _ in layers],
            backend=source.name,
            **outcome(got.output, got.target, targets),
        )

    def _reads_gradcam(self, got: Captured) -> bool:
        """Whether the source's fused Grad-CAM map is this explainer's map."""
        own = type(self).__dict__.get("reads_gradcam_output", False)
        return got.gradcam is not None and own and not self.eigen_smooth

    def _layer_maps(self, x, layers, got: Captured, targets, forward, output) -> dict:
        """Each layer's map ``[B, h, w]`` from what the source captured."""
        flat = reported_logits(got.output)
        tail = self.eager.run_tail if self.eager is not None else no_tail(type(self).__name__)
        size = x.shape[-2:]
        found = {}
        with torch.no_grad():
            for i, (name, module) in enumerate(layers):
                raw = got.activations[i].detach()
                layout = self._layout(name, raw, x)
                a = layout.to_map(raw, size, name)
                g = None if got.gradients is None else got.gradients[i]
                layer_tail = functools.partial(tail, name, x, output=output)
                if not layout.is_map:
                    g = None if g is None else layout.to_map(g, size, name)
                    layer_tail = _through(layout, raw, layer_tail)
                ctx = LayerContext(
                    name=name,
                    activations=a,
                    gradients=None if g is None else g.to(a.device),
                    logits=flat.to(a.device),
                    target=got.target,
                    model=self.model,
                    module=module,
                    inputs=x,
                    output=got.output,
                    targets=targets,
                    forward=forward,
                    tail=layer_tail,
                )
                found[name] = self.layer_map(ctx)
        return found

    def _layout(self, name: str, out: torch.Tensor, x: torch.Tensor) -> Layout:
        """How layer ``name``'s output ``out`` becomes a map (found once per layer)."""
        found = self._layouts.get(name)
        if found is None:
            found = self._layouts[name] = self._find_layout(name, out, x)
        return found

    def _find_layout(self, name: str, out: torch.Tensor, x: torch.Tensor) -> Layout:
        """The caller's ``reshape``; else what a file explained alone says of its layers;
        else what the output and the eager model show (see :func:`layout_of`)."""
        if self.reshape is None and self.model is None and self.backend is not None:
            kind, prefix = self.backend.metadata.token_layouts.get(name, (None, 0))
            if kind is not None:
                return Layout(kind, prefix=prefix)
        found = layout_of(self.reshape, self.model, name, out)
        if self.reshape is None and found.is_map and name in self._channels_last(x):
            return Layout("nhwc")
        return found

    def _channels_last(self, x: torch.Tensor) -> set[str]:
        """The eager model's layers with ``[B, h, w, C]`` outputs: a probe forward, once, for
        a channels-last model only (torchvision's Swin and ConvNeXt, timm's Swin)."""
        if self._nhwc is None:
            model = self.model
            if model is None or not channels_last_model(model):
                self._nhwc = set()
            else:
                infos = candidate_layers(model, x[:1].detach())
                self._nhwc = {i.name for i in infos if i.layout == "nhwc"}
        return self._nhwc

    def _fixed_size(self) -> str | None:
        """The name of the loaded file this explainer runs, when its input size is fixed."""
        if self.backend is None:
            return None
        shape = self.backend.metadata.input_shape
        if len(shape) == 4 and shape[2] is not None and shape[3] is not None:
            return self.backend.path.name
        return None


def _through(layout: Layout, raw: torch.Tensor, tail: Any) -> Any:
    """A layer's tail that takes maps: each map goes back to the layer's own layout (with the
    prefix tokens of its sample) before the model runs on."""

    def run(maps: torch.Tensor, rows: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        like = raw[rows.to(raw.device)]
        return tail(layout.to_tokens(maps, like), rows, *args, **kwargs)

    return run


class BatchedCAM(BaseCAM):
    """A gradient-free method that re-runs the model, or its tail after the layer, on many
    variants of each sample: in batches of ``batch_size`` rows, by default as many as fit
    ``memory_budget`` bytes."""

    needs_gradients = False

    def __init__(
        self,
        model: Any,
        layers: Layers = None,
        backend: Any = "eager",
        *,
        batch_size: int | None = None,
        memory_budget: int = 1 << 30,
        **options: Any,
    ):
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise XCamError(f"batch_size must be a positive int or None, got {batch_size!r}")
        if memory_budget < 1:
            raise XCamError(
                f"memory_budget must be a positive number of bytes, got {memory_budget}"
            )
        super().__init__(model, layers, backend, **options)
        self.batch_size = batch_size
        self.memory_budget = memory_budget

    def rows_per_batch(self, row_bytes: int, cap: int) -> int:
        """``batch_size``, else as many rows of ``row_bytes`` as fit the budget (1 to ``cap``)."""
        if self.batch_size is not None:
            return self.batch_size
        return int(max(1, min(cap, self.memory_budget // max(row_bytes, 1))))
