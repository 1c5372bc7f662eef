"""A loaded backend as a source: activations from the file; their gradients from the eager
tail of the model after each layer, or from the file's own graph (exported with gradients,
no eager model needed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from xcam.core.artifact import GRADCAM, LOGITS, grad_name
from xcam.core.cammodel import OutputSelector, select_output
from xcam.core.capture import preserved_state
from xcam.core.errors import XCamError
from xcam.core.ops import layer_gradients
from xcam.core.targets import (
    RegionTarget,
    Targets,
    covering_classes,
    flatten_logits,
    is_class_maps,
    resolve_targets,
    score_functions,
)
from xcam.sources.base import Captured, LayerRef
from xcam.sources.eager import EagerModel


class BackendSource:
    """Activations from ``backend``; gradients from its graph where it has them and the
    targets are classes, else from ``eager``'s tail (None: a file explained alone)."""

    def __init__(
        self, backend: Any, eager: EagerModel | None, method: str, output: OutputSelector = None
    ):
        self.backend = backend
        self.eager = eager
        self.method = method  # the explaining class's name, for messages
        self.output = output  # the part of the eager tail's output the file's logits are
        self.name = backend.format

    def for_input(self, x: torch.Tensor, names: list[str]) -> BackendSource:
        return self

    def capture(
        self,
        x: torch.Tensor,
        layers: list[LayerRef],
        targets: Targets,
        output: OutputSelector,
        gradients: bool,
    ) -> Captured:
        graph_targets = not score_functions(targets) or _predicted_region(targets)
        if gradients and self.backend.has_gradients and graph_targets:
            return in_graph(self.backend, x, layers, targets)
        outs = self.backend.run(x)
        logits = outs[LOGITS]
        acts = [outs[n] for n, _ in layers]
        if not gradients:
            return Captured(logits, acts, resolve_targets(logits, targets, self.activation), None)
        eager = self._eager_for_gradients()
        return self._tail_gradients(eager, x, layers, logits, acts, targets)

    @property
    def activation(self) -> str | None:
        return self.backend.activation

    def forward(self, output: OutputSelector) -> Callable[[torch.Tensor], torch.Tensor]:
        backend = self.backend
        return lambda xb: backend.run(xb)[LOGITS]

    def _eager_for_gradients(self) -> EagerModel:
        if self.eager is not None:
            return self.eager
        path = self.backend.path.name
        if self.backend.has_gradients:  # a callable target
            choose = (
                "or a class per sample (ints)"
                if self.backend.has_target_input
                else "(re-export with --target-input to choose classes)"
            )
            raise XCamError(
                f"{path} computes in its graph the gradient of one score, the top-1 "
                f"class {choose}; a callable target needs the eager model to differentiate: "
                "Method(model, layers, backend=xcam.load(path)), or export with --target-input "
                "and pass class indices"
            )
        raise XCamError(
            f"{self.method} needs gradients, and {path} has none in its "
            "graph: export with --gradients, or give the eager model as well — in Python "
            "Method(model, layers, backend=xcam.load(path)); on the command line "
            "`xcam explain MODEL_SPEC --backend onnxruntime|torchscript|pt2`"
        )

    def _tail_gradients(self, eager, x, layers, logits, acts, targets) -> Captured:
        """``dS/dA`` at the backend's activations, through the eager tail after each layer."""
        # targets resolved once on the backend's logits, so every layer explains the same class
        fixed = resolve_targets(logits, targets, self.activation)
        # (for a single logit, the classes are the decision the backend made)
        per_layer = targets if fixed.classes is None else fixed.classes
        grads, target = [], fixed
        device = eager.device
        with preserved_state(eager.model), torch.enable_grad():
            for (name, _), a in zip(layers, acts, strict=True):
                tail = eager.tail(name)
                leaf = a.detach().to(device).requires_grad_(True)
                # a clone, so an in-place op right after the layer (densenet's final
                # F.relu(inplace=True)) acts on it and never on the leaf
                with eager.watch() as watch:
                    out = select_output(tail(leaf.clone(), x.to(device)), self.output)
                out = eager.scores(watch, out)
                _check_tail(out, logits, name, self.backend)
                target = resolve_targets(out, per_layer, self.activation)
                grads.append(layer_gradients(target.scores, [leaf])[0].to(a.device))
        return Captured(logits, acts, target, grads)


def in_graph(backend: Any, x: torch.Tensor, layers: list[LayerRef], targets: Targets) -> Captured:
    """Gradients computed inside the exported graph: no eager model is needed."""
    wanted, outs = None, None
    if _predicted_region(targets):
        # the graph's region is the predicted one: its class goes in as the target input
        targets = [targets.category] * x.shape[0]  # type: ignore[union-attr]
    if targets is not None:
        k = backend.metadata.num_classes
        if not k:  # a file that doesn't say: its logits do
            outs = backend.run(x)
            k = flatten_logits(outs[LOGITS]).shape[1]
        probe = torch.zeros(x.shape[0], k)
        wanted = resolve_targets(probe, targets).classes  # validates range and length
    if outs is None or (wanted is not None and backend.has_target_input):
        outs = backend.run(x, wanted if backend.has_target_input else None)
    logits = outs[LOGITS]
    if wanted is not None and not backend.has_target_input:
        top = resolve_targets(logits, None, backend.activation).classes
        if not torch.equal(top.cpu(), wanted.cpu()):
            raise XCamError(
                f"{backend.path.name} explains the top-1 class only; re-export with "
                "--target-input (target_input=True) to explain other classes"
            )
    names = [n for n, _ in layers]
    acts = [outs[n] for n in names]
    grads = [outs[grad_name(n)] for n in names]
    chosen = targets if wanted is None else wanted
    if is_class_maps(logits):  # the graph explained each sample's class over its region
        classes = covering_classes(logits) if wanted is None else wanted
        chosen = [RegionTarget(int(k)) for k in classes]
    target = resolve_targets(logits.detach(), chosen, backend.activation)
    # the file's map is fused over all of its layers: it is these layers' only if they're all
    fused = outs.get(GRADCAM) if names == list(backend.layer_names) else None
    if fused is not None and tuple(fused.shape) != (x.shape[0], *x.shape[-2:]):
        fused = None
    return Captured(logits, acts, target, grads, fused)


def _predicted_region(targets: Targets) -> bool:
    """A region target over the predicted region: what a segmentation file's graph computes."""
    return isinstance(targets, RegionTarget) and targets.mask is None


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
