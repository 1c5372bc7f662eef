"""The machinery every method shares: capture, gradients, combine, ReLU, normalise, upsample.

A method only says how to weight the channels of an activation (its ``weights``).
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xcam.core import ops
from xcam.core.cammodel import WHOLE, CamModel, OutputSelector, select_output
from xcam.core.capture import final_activations, preserved_state
from xcam.core.errors import InputError, LayerTypeError, XCamError
from xcam.core.inputs import check_input, first_conv_channels
from xcam.core.layers import Layers, default_layer, resolve_layers, unwrap_model
from xcam.core.ops import layer_gradients, normalize
from xcam.core.result import CamResult
from xcam.core.targets import (
    Resolved,
    Targets,
    class_probability,
    decision_score,
    flatten_logits,
    per_sample_scores,
    reported_logits,
    resolve_targets,
    score_functions,
)
from xcam.core.tracing import FX_GATE


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


FINAL_ACTIVATIONS = (nn.Softmax, nn.Sigmoid, nn.LogSoftmax)


def final_activation(model: nn.Module) -> nn.Module | None:
    """The model's last leaf module when it is a Softmax / Sigmoid / LogSoftmax, else None
    (seen without running the model; a functional one is found on the first call)."""
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    return leaves[-1] if leaves and isinstance(leaves[-1], FINAL_ACTIVATIONS) else None


def _saturation_warning(model: nn.Module, what: str) -> str:
    return (
        f"{type(model).__name__} ends in {what}: the gradient of a probability saturates "
        "(near 0 or 1 it vanishes), so maps can be flat or noisy. Pass pre_activation=True "
        "(--pre-activation) to explain the score before it"
    )


def _unprefixed(layers: Layers, prefix: str = "module.") -> Layers:
    """Layer names of a wrapper (DataParallel's ``module.layer4``, torch.compile's
    ``_orig_mod.layer4``) as names in the wrapped model."""

    def strip(ref):
        return ref[len(prefix) :] if isinstance(ref, str) and ref.startswith(prefix) else ref

    if isinstance(layers, list | tuple):
        return [strip(r) for r in layers]
    return strip(layers)


class BaseCAM:
    """A class activation map method: ``Method(model, layers=None)(x, targets=None)``.

    Subclasses set ``name`` (registry key) and ``needs_gradients`` and implement
    :meth:`weights`. The map of a layer is ``ReLU(sum_c w_c * A_c)``; with several layers
    the maps are upsampled to the input, normalised, averaged and normalised again.

    ``backend`` says where the activations come from: ``"eager"`` (default), one of
    ``"onnxruntime"``, ``"torchscript"``, ``"pt2"`` (the model is exported on the first call,
    checked against eager, and cached per input shape; ``export_options`` go to
    :func:`exporters.export`), or a backend from :func:`xcam.load`. ``model`` may itself be a
    loaded backend. Gradients then come from the eager *tail* of the model after each layer
    (see :mod:`xcam.core.tail`).
    """

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = True
    uses_layers: ClassVar[bool] = True  # False: the method has no target layer (FullGrad, ...)
    # the map needs only each layer's activations and their gradients, so it can come from a
    # file with in-graph gradients (no eager model): what `xcam.lite` and `xcam bench` rely on
    in_graph: ClassVar[bool] = False
    # flips x scales for aug_smooth; (False, 1.0), the input itself, comes first
    augmentations: ClassVar[tuple[tuple[bool, float], ...]] = (
        (False, 1.0),
        (True, 1.0),
        (False, 1.25),
        (True, 1.25),
        (False, 0.8),
        (True, 0.8),
    )

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
    ):
        from xcam.backends import BACKENDS, Backend

        self.aug_smooth = aug_smooth
        self.eigen_smooth = eigen_smooth
        self.center = center  # the eigen projections subtract each channel's mean first
        self._lock = threading.Lock()  # one explainer may serve many threads
        self.output = output
        self.export_options = dict(export_options or {})
        self.backend: Backend | None = None
        self._export_format: str | None = None
        self._exports: dict[tuple, Backend] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._tails: dict[str, nn.Module] = {}
        self.pre_activation = pre_activation
        self._activation: str | None = None  # the eager model's final activation, if any
        self._watched = False  # whether a forward has looked for it yet
        self._warned = False  # about a saturating final activation
        if isinstance(model, Backend):
            self.model = None
            self.backend = model
            self._layers = self._backend_layers(model, layers)
            self._adopt_file(model)
            return
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module or a loaded backend, got {type(model).__name__}"
            )
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            warnings.warn(
                f"{type(model).__name__} unwrapped: xcam explains its .module (layer names "
                "without the 'module.' prefix)",
                UserWarning,
                stacklevel=3,
            )
            model = model.module
            layers = _unprefixed(layers)
        plain = unwrap_model(model)  # torch.compile: its _orig_mod; TorchScript: a clear error
        if plain is not model:
            model, layers = plain, _unprefixed(layers, "_orig_mod.")
        self.model = model
        self._layers = resolve_layers(model, layers)
        final = final_activation(model)
        self._in_channels = first_conv_channels(model)  # checked against every input
        if final is not None and not pre_activation and self.needs_gradients:
            self._warned = True
            warnings.warn(
                _saturation_warning(model, type(final).__name__), UserWarning, stacklevel=3
            )
        if isinstance(backend, Backend):
            self._adopt_file(backend)
            self.backend = backend
            if self._layers is None:
                self._layers = resolve_layers(model, backend.layer_names)  # all, as the file
            self._backend_layers(backend, self.layers)
        elif backend in (None, "eager"):
            pass
        elif backend in BACKENDS:
            from xcam.core.artifact import BACKEND_FORMAT

            self._export_format = BACKEND_FORMAT[backend].name
        else:
            raise XCamError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")

    def _adopt_file(self, backend: Any) -> None:
        """The file's choices hold for the eager tail too: the part of a tuple / dict output
        it exported as ``logits`` (another one is an error), and ``pre_activation`` (a file
        that applies the final activation can't skip it)."""
        meta = backend.metadata
        if self.output is None:
            self.output = meta.output
        elif meta.output is not None and self.output != meta.output:
            raise XCamError(
                f"output={self.output!r}, but {backend.path.name} was exported with --output "
                f"{meta.output} (output={meta.output!r}): its logits are that part of the "
                f"model's output. Pass output={meta.output!r}, or re-export with --output "
                f"{self.output}"
            )
        if meta.pre_activation:
            self.pre_activation = True
        elif meta.activation is not None and self.pre_activation:
            raise XCamError(
                f"pre_activation=True, but {backend.path.name} applies the model's final "
                f"{meta.activation} in its graph: re-export with --pre-activation "
                "(pre_activation=True)"
            )
        elif meta.activation is not None and self.needs_gradients and not self._warned:
            self._warned = True
            warnings.warn(
                f"{backend.path.name} outputs probabilities (its model ends in "
                f"{meta.activation}): their gradient saturates (near 0 or 1 it vanishes), so "
                "maps can be flat. Export with --pre-activation (pre_activation=True) to "
                "explain the score before it",
                UserWarning,
                stacklevel=4,
            )

    @property
    def activation(self) -> str | None:
        """What the explained logits went through: ``"sigmoid"``, ``"softmax"``,
        ``"log_softmax"`` (the model's own final activation, kept), or None (raw scores:
        no final activation, or ``pre_activation``)."""
        if self.backend is not None:
            return self.backend.activation
        return None if self.pre_activation else self._activation

    def _final(self) -> contextlib.AbstractContextManager:
        """Around a forward of the eager model (or a tail of it): watch for its final
        activation, on the first call (to learn it) and with ``pre_activation`` (to explain
        the scores before it). Pass the output to :meth:`_logits`."""
        return final_activations(self.pre_activation or not self._watched)

    def _logits(self, watch: Any, logits: torch.Tensor) -> torch.Tensor:
        """The explained scores of an eager output seen by :meth:`_final`'s ``watch``."""
        if watch is not None:
            found, before = watch.find(logits)
            if self.pre_activation:
                logits = before
            self._learn(found)
        return logits

    def _learn(self, found: str | None) -> None:
        """What the first forward found at the model's end (later ones add nothing)."""
        if self._watched:
            return
        self._activation, self._watched = found, True
        if found is None or self.pre_activation or not self.needs_gradients or self._warned:
            return
        self._warned = True
        assert self.model is not None
        warnings.warn(_saturation_warning(self.model, found), UserWarning, stacklevel=5)

    @staticmethod
    def _backend_layers(backend: Any, layers: Layers) -> list[tuple[str, nn.Module | None]]:
        names = backend.layer_names
        if layers is None:  # every layer the file outputs, fused, as its own map does
            return [(n, None) for n in names]
        refs = [layers] if isinstance(layers, str) else list(layers)  # type: ignore[arg-type]
        for ref in refs:
            if not isinstance(ref, str) or ref not in names:
                raise XCamError(
                    f"layer {ref!r} is not an output of {backend.path.name}; it has "
                    f"{', '.join(names)}. Re-export with that layer"
                )
        return [(r, None) for r in refs]

    @property
    def layers(self) -> list[str] | None:
        return None if self._layers is None else [n for n, _ in self._layers]

    def close(self) -> None:
        """Remove the files of the models this explainer exported (``backend="onnxruntime"``
        and friends); the next call exports again. Also done when it is garbage-collected,
        or on leaving a ``with`` block."""
        with self._lock:
            self._exports.clear()
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # attributes of a subclass that change its maps (they enter :meth:`settings`)
    output_options: ClassVar[tuple[str, ...]] = ()

    def settings(self) -> dict[str, Any]:
        """Every option that changes this explainer's maps, as plain data: the method part
        of a job's run record (options of speed alone, like batch sizes, are left out)."""
        if self.backend is not None:
            backend = f"{self.backend.format}:{self.backend.path.name}"
        else:
            backend = {None: "eager", "onnx": "onnxruntime"}.get(
                self._export_format, self._export_format
            )
        found = {
            "method": self.name,
            "layers": self.layers,
            "backend": backend,
            "output": self.output,
            "aug_smooth": self.aug_smooth,
            "eigen_smooth": self.eigen_smooth,
            "center": self.center,
            "pre_activation": self.pre_activation,
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

    def _resolve(self, x: torch.Tensor) -> list[tuple[str, nn.Module | None]]:
        if self._layers is None:
            assert self.model is not None
            self._layers = resolve_layers(self.model, default_layer(self.model, x))
        assert self._layers is not None
        return self._layers

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
        if param is None or self._export_format is not None or self.backend is not None:
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

    def __call__(self, x: torch.Tensor, targets: Targets = None) -> CamResult:
        x = self._check_model_input(check_input(x))
        with FX_GATE.shared():  # see xcam.core.tracing: no torch.fx trace meanwhile
            result = self._explain(x, targets)
            return self._augmented(x, result) if self.aug_smooth else result

    def _augmented(self, x: torch.Tensor, result: CamResult) -> CamResult:
        """Test-time augmentation: explain flipped and rescaled copies of ``x`` (same classes
        as ``result``), map each back to ``x``'s coordinates and average."""
        size = tuple(x.shape[-2:])
        same = result.targets  # the classes found on x itself, or the callable
        maps = [result.maps]
        augmentations = self.augmentations[1:]
        fixed = self._fixed_size()
        if fixed is not None:  # a file that takes one size: its rescaled copies can't run
            augmentations = tuple((flip, scale) for flip, scale in augmentations if scale == 1.0)
            warnings.warn(
                f"aug_smooth: {fixed} has a fixed input size {size[0]}x{size[1]}, so only the "
                "flipped copy is averaged, not the rescaled ones (export with "
                "--dynamic-spatial for those)",
                UserWarning,
                stacklevel=3,
            )
        for flip, scale in augmentations:
            xt = x.flip(-1) if flip else x
            if scale != 1.0:
                scaled = [max(1, round(s * scale)) for s in size]
                xt = F.interpolate(xt, size=scaled, mode="bilinear", align_corners=False)
            m = self._explain(xt, same).maps  # type: ignore[arg-type]
            if scale != 1.0:
                m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            maps.append(m.flip(-1) if flip else m)
        fused, degenerate = normalize(torch.stack(maps).mean(dim=0))
        return replace(result, maps=fused, degenerate=degenerate)

    def _fixed_size(self) -> str | None:
        """The name of the loaded file this explainer runs, when its input size is fixed."""
        if self.backend is None:
            return None
        shape = self.backend.metadata.input_shape
        if len(shape) == 4 and shape[2] is not None and shape[3] is not None:
            return self.backend.path.name
        return None

    def _explain(self, x: torch.Tensor, targets: Targets) -> CamResult:
        layers = self._resolve(x)
        backend = self.backend or self._exported(x, [n for n, _ in layers])
        if backend is None:
            logits, acts, target, grads = self._eager(x, layers, targets)
        else:
            logits, acts, target, grads = self._from_backend(backend, x, layers, targets)
        return self._finish(x, layers, logits, acts, target, grads, targets, backend)

    def _eager(self, x, layers, targets):
        assert self.model is not None
        cam_model = CamModel(
            self.model,
            [m for _, m in layers],
            grad_handles=self.needs_gradients,
            output=self._output_for(targets),
            pre_activation=self.pre_activation,
            watch=not self._watched,
        )
        grad_mode = torch.enable_grad() if self.needs_gradients else torch.no_grad()
        with preserved_state(self.model), grad_mode:
            logits, *acts = cam_model(x)
            if cam_model.watch:
                self._learn(cam_model.activation)
            target = resolve_targets(logits, targets, self.activation)
            grads = layer_gradients(target.scores, acts) if self.needs_gradients else None
        return logits, acts, target, grads

    def _exported(self, x: torch.Tensor, names: list[str]):
        """Export the model for ``x``'s shape on first use; parity-checked, then cached."""
        if self._export_format is None:
            return None
        key = (tuple(x.shape[1:]), str(x.device), tuple(names))
        with self._lock:
            return self._export_for(key, x, names)

    def _export_for(self, key: tuple, x: torch.Tensor, names: list[str]):
        if key not in self._exports:
            import exporters
            from xcam.backends import load
            from xcam.core.artifact import FORMATS

            assert self.model is not None
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="xcam-")
                # removed with the explainer (or by close()), never left to the interpreter's
                # "Implicitly cleaning up" ResourceWarning
                weakref.finalize(self, self._tmp.cleanup)
            suffix = FORMATS[self._export_format].suffix
            path = Path(self._tmp.name) / f"model{len(self._exports)}{suffix}"
            options = {
                "output": self.output,
                "pre_activation": self.pre_activation,
                **self.export_options,
            }
            exporters.export(self.model, names, x, path, format=self._export_format, **options)
            # xcam's own export of the caller's model, in a private folder: trusted
            self._exports[key] = load(path, device=str(x.device), trust_code=True)
        return self._exports[key]

    def _tail(self, name: str) -> nn.Module:

        with self._lock:
            return self._tail_locked(name)

    def _tail_locked(self, name: str) -> nn.Module:
        from xcam.core.tail import InjectedTail, SplitTail, split_tail

        if name not in self._tails:
            assert self.model is not None
            cut, reason = split_tail(self.model, name)
            if cut is not None:
                tail: nn.Module = SplitTail(cut)
            else:
                warnings.warn(
                    f"gradients for {name!r} come from the whole eager model with the layer's "
                    f"output replaced by the backend's activations: {reason}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                tail = InjectedTail(self.model, name)
            self._tails[name] = tail
        return self._tails[name]

    def _from_backend(self, backend, x, layers, targets):
        in_graph = self.needs_gradients and backend.has_gradients and not score_functions(targets)
        if in_graph:
            return self._in_graph(backend, x, layers, targets)
        outs = backend.run(x)
        logits = outs["logits"]
        acts = [outs[n] for n, _ in layers]
        activation = backend.activation
        if not self.needs_gradients:
            return logits, acts, resolve_targets(logits, targets, activation), None
        if self.model is None and backend.has_gradients:  # a callable target
            choose = (
                "or a class per sample (ints)"
                if backend.has_target_input
                else "(re-export with --target-input to choose classes)"
            )
            raise XCamError(
                f"{backend.path.name} computes in its graph the gradient of one score, the top-1 "
                f"class {choose}; a callable target needs the eager model to differentiate: "
                "Method(model, layers, backend=xcam.load(path)), or export with --target-input "
                "and pass class indices"
            )
        if self.model is None:
            raise XCamError(
                f"{type(self).__name__} needs gradients, and {backend.path.name} has none in its "
                "graph: export with --gradients, or give the eager model as well — in Python "
                "Method(model, layers, backend=xcam.load(path)); on the command line "
                "`xcam explain MODEL_SPEC --backend onnxruntime|torchscript|pt2`"
            )
        # targets resolved once on the backend's logits, so every layer explains the same class
        fixed = resolve_targets(logits, targets, activation)
        # (for a single logit, the classes are the decision the backend made)
        per_layer = targets if fixed.classes is None else fixed.classes
        grads, target = [], fixed
        device = next(self.model.parameters()).device
        with preserved_state(self.model), torch.enable_grad():
            for (name, _), a in zip(layers, acts, strict=True):
                tail = self._tail(name)
                leaf = a.detach().to(device).requires_grad_(True)
                # a clone, so an in-place op right after the layer (densenet's final
                # F.relu(inplace=True)) acts on it and never on the leaf
                with self._final() as watch:
                    out = select_output(tail(leaf.clone(), x.to(device)), self.output)
                out = self._logits(watch, out)
                _check_tail(out, logits, name, backend)
                target = resolve_targets(out, per_layer, activation)
                grads.append(layer_gradients(target.scores, [leaf])[0].to(a.device))
        return logits, acts, target, grads

    def _in_graph(self, backend, x, layers, targets):
        """Gradients computed inside the exported graph: no eager model is needed."""
        from xcam.core.artifact import grad_name

        wanted, outs = None, None
        if targets is not None:
            k = backend.metadata.num_classes
            if not k:  # a file that doesn't say: its logits do
                outs = backend.run(x)
                k = flatten_logits(outs["logits"]).shape[1]
            probe = torch.zeros(x.shape[0], k)
            wanted = resolve_targets(probe, targets).classes  # validates range and length
        if outs is None or (wanted is not None and backend.has_target_input):
            outs = backend.run(x, wanted if backend.has_target_input else None)
        logits = outs["logits"]
        activation = backend.activation
        if wanted is not None and not backend.has_target_input:
            top = resolve_targets(logits, None, activation).classes
            if not torch.equal(top.cpu(), wanted.cpu()):
                raise XCamError(
                    f"{backend.path.name} explains the top-1 class only; re-export with "
                    "--target-input (target_input=True) to explain other classes"
                )
        acts = [outs[n] for n, _ in layers]
        grads = [outs[grad_name(n)] for n, _ in layers]
        target = resolve_targets(logits.detach(), targets if wanted is None else wanted, activation)
        return logits, acts, target, grads

    def _output_for(self, targets: Targets) -> OutputSelector:
        """What of the model's output the targets see: ``output``; without it, a callable
        target sees the whole output (several heads may enter its score)."""
        if self.output is None and score_functions(targets):
            return WHOLE
        return self.output

    def _forward_fn(
        self, backend: Any, output: OutputSelector = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Inputs -> logits through the whole model on this method's backend, no gradients."""
        if backend is not None:
            return lambda xb: backend.run(xb)["logits"]
        assert self.model is not None
        model = self.model

        def forward(xb: torch.Tensor) -> torch.Tensor:
            with preserved_state(model), torch.no_grad(), self._final() as watch:
                return self._logits(watch, select_output(model(xb), output))

        return forward

    def _run_tail(
        self,
        name: str,
        x: torch.Tensor,
        acts: torch.Tensor,
        rows: torch.Tensor,
        output: OutputSelector = None,
    ) -> torch.Tensor:
        """Logits from activations of ``name`` (row i from sample ``rows[i]`` of ``x``) by
        the eager tail of the model after that layer."""
        if self.model is None:
            raise XCamError(
                f"{type(self).__name__} re-runs the model after layer {name!r}, which needs the "
                "eager model: Method(model, layers, backend=xcam.load(path))"
            )
        tail = self._tail(name)
        device = next(self.model.parameters()).device
        example = x.to(device)[rows.to(device)]
        with preserved_state(self.model), torch.no_grad(), self._final() as watch:
            return self._logits(watch, select_output(tail(acts.to(device), example), output))

    def _finish(self, x, layers, logits, acts, target, grads, targets, backend) -> CamResult:
        flat = reported_logits(logits)
        layer_maps: dict[str, torch.Tensor] = {}
        output = self._output_for(targets)
        forward = self._forward_fn(backend, output)
        with torch.no_grad():
            for i, (name, module) in enumerate(layers):
                a = acts[i].detach()
                if a.dim() != 4:
                    shape = "x".join(map(str, a.shape))
                    raise LayerTypeError(
                        f"layer {name!r} outputs a {shape} tensor ({a.dim()}-D), not a "
                        "[B, C, h, w] feature map: choose a layer with a spatial output "
                        "(`xcam layers MODEL` lists them)"
                    )
                ctx = LayerContext(
                    name=name,
                    activations=a,
                    gradients=None if grads is None else grads[i].to(a.device),
                    logits=flat.to(a.device),
                    target=target,
                    model=self.model,
                    module=module,
                    inputs=x,
                    output=logits,
                    targets=targets,
                    forward=forward,
                    tail=functools.partial(self._run_tail, name, x, output=output),
                )
                layer_maps[name] = self.layer_map(ctx)
            maps, degenerate = self.fuse(list(layer_maps.values()), x.shape[-2:])
        return CamResult(
            maps=maps,
            logits=flat,
            targets=target.classes if target.classes is not None else targets,  # type: ignore[arg-type]
            scores=target.scores.detach(),
            layer_maps=layer_maps,
            degenerate=degenerate,
            method=self.name,
            layers=[n for n, _ in layers],
            backend="eager" if backend is None else backend.format,
            activation=target.activation,
        )

    combine = staticmethod(ops.combine)
    fuse = staticmethod(ops.fuse)


def _check_tail(out: torch.Tensor, logits: torch.Tensor, name: str, backend: Any) -> None:
    """The eager tail must reproduce the backend's logits, or the gradients are not theirs."""
    a, b = out.detach().float().cpu().reshape(-1), logits.detach().float().cpu().reshape(-1)
    if a.shape != b.shape:
        raise XCamError(
            f"the eager tail after {name!r} gives {a.numel()} logits, the backend {b.numel()}"
        )
    err = float((a - b).abs().max()) / max(float(b.abs().max()), 1.0)
    if err > 1e-3:
        raise XCamError(
            f"the eager tail after {name!r} does not reproduce {backend.path.name}'s logits "
            f"(relative error {err:.2g}): the export and the eager model differ"
        )


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
