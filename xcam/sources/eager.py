"""The eager model as a source: one forward with the target layers captured, ``dS/dA`` by
``autograd.grad``; and the eager parts every other source borrows: the model's tail after
a layer, its whole forward, and the final activation (sigmoid / softmax) found at its end.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from xcam.core.cammodel import CamModel, OutputSelector, select_output
from xcam.core.capture import preserved_state
from xcam.core.errors import XCamError, warn_caller
from xcam.core.final import final_activations
from xcam.core.ops import layer_gradients
from xcam.core.tail import InjectedTail, SplitTail, split_tail
from xcam.core.targets import Targets, resolve_targets
from xcam.sources.base import Captured, LayerRef


def saturation_warning(model: nn.Module, what: str) -> str:
    return (
        f"{type(model).__name__} ends in {what}: the gradient of a probability saturates "
        "(near 0 or 1 it vanishes), so maps can be flat or noisy. Pass pre_activation=True "
        "(--pre-activation) to explain the score before it"
    )


class EagerModel:
    """The caller's ``nn.Module``, explained as it runs (never modified: see
    :func:`xcam.core.capture.preserved_state`)."""

    name = "eager"

    def __init__(
        self, model: nn.Module, *, pre_activation: bool, needs_gradients: bool, warned: bool
    ):
        self.model = model
        self.pre_activation = pre_activation
        self.needs_gradients = needs_gradients
        self.warned = warned  # about a saturating final activation, once
        self.final_seen: str | None = None  # the final activation the first forward saw
        self.watched = False  # whether a forward has looked for it yet
        self._tails: dict[str, nn.Module] = {}
        self._cam_models: dict[tuple, CamModel] = {}
        self._lock = threading.Lock()  # one explainer may serve many threads

    @property
    def activation(self) -> str | None:
        """The final activation the explained scores went through (None: raw scores)."""
        return None if self.pre_activation else self.final_seen

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- the final activation ----------------------------------------------------------------

    def watch(self) -> contextlib.AbstractContextManager:
        """Around a forward of the model (or a tail of it): watch for its final activation,
        on the first call (to learn it) and with ``pre_activation`` (to explain the scores
        before it). Pass the output to :meth:`scores`."""
        return final_activations(self.pre_activation or not self.watched)

    def scores(self, watch: Any, out: torch.Tensor) -> torch.Tensor:
        """The output to explain from ``out``, an output of the model (or a tail) run inside
        :meth:`watch`: with ``pre_activation``, the scores before the final activation;
        else ``out`` itself. The first call also learns which activation that was."""
        if watch is not None:
            found, before = watch.find(out)
            if self.pre_activation:
                out = before
            self.learn(found)
        return out

    def learn(self, found: str | None) -> None:
        """What the first forward found at the model's end (later ones add nothing)."""
        if self.watched:
            return
        self.final_seen, self.watched = found, True
        if found is None or self.pre_activation or not self.needs_gradients or self.warned:
            return
        self.warned = True
        warn_caller(saturation_warning(self.model, found))

    # -- a source -----------------------------------------------------------------------------

    def for_input(self, x: torch.Tensor, names: list[str]) -> EagerModel:
        return self

    def capture(
        self,
        x: torch.Tensor,
        layers: list[LayerRef],
        targets: Targets,
        output: OutputSelector,
        gradients: bool,
    ) -> Captured:
        cam_model = self._cam_model([n for n, _ in layers], output, gradients)
        with preserved_state(self.model), forward_mode(gradients):
            logits, *acts = cam_model(x)
            if cam_model.watch:
                self.learn(cam_model.activation)
            target = resolve_targets(logits, targets, self.activation)
            grads = layer_gradients(target.scores, acts) if gradients else None
        return Captured(logits, acts, target, grads)

    def _cam_model(self, names: list[str], output: OutputSelector, gradients: bool) -> CamModel:
        """The model wrapped to return its logits and the layers' activations; kept for
        the next call once it has nothing to watch (a watching one records what it found)."""
        key = (tuple(names), output, gradients, self.pre_activation)
        found = self._cam_models.get(key)
        if found is not None and self._same_layers(found):
            return found
        cam_model = CamModel(
            self.model,
            names,  # found by get_submodule, no walk of the model
            grad_handles=gradients,
            output=output,
            pre_activation=self.pre_activation,
            watch=not self.watched,
            record_from_layers=gradients,
        )
        if not cam_model.watch:
            self._cam_models[key] = cam_model
        return cam_model

    def _same_layers(self, cam_model: CamModel) -> bool:
        """Whether the model still holds the wrapped model's target layers (one replaced or
        removed since is looked up again, and a missing one is reported as such)."""
        try:
            return all(self.model.get_submodule(n) is m for n, m in cam_model.layers)
        except AttributeError:
            return False

    def forward(self, output: OutputSelector) -> Callable[[torch.Tensor], torch.Tensor]:
        model = self.model

        def forward(xb: torch.Tensor) -> torch.Tensor:
            with preserved_state(model), torch.inference_mode(), self.watch() as watch:
                return self.scores(watch, select_output(model(xb), output))

        return forward

    # -- the tail after a layer -------------------------------------------------------------

    def tail(self, name: str) -> nn.Module:
        """The part of the model after layer ``name`` (cut once, then cached)."""
        with self._lock:
            if name not in self._tails:
                self._tails[name] = self._cut(name)
            return self._tails[name]

    def _cut(self, name: str) -> nn.Module:
        cut, reason = split_tail(self.model, name)
        if cut is not None:
            return SplitTail(cut)
        warn_caller(
            f"gradients for {name!r} come from the whole eager model with the layer's "
            f"output replaced by the backend's activations: {reason}",
            RuntimeWarning,
        )
        return InjectedTail(self.model, name)

    def run_tail(
        self,
        name: str,
        x: torch.Tensor,
        acts: torch.Tensor,
        rows: torch.Tensor,
        output: OutputSelector = None,
    ) -> torch.Tensor:
        """Logits from activations of ``name`` (row i from sample ``rows[i]`` of ``x``) by
        the tail of the model after that layer, no gradients."""
        tail = self.tail(name)
        device = self.device
        example = x.to(device)[rows.to(device)]
        with preserved_state(self.model), torch.inference_mode(), self.watch() as watch:
            return self.scores(watch, select_output(tail(acts.to(device), example), output))


@contextlib.contextmanager
def forward_mode(gradients: bool) -> Iterator[None]:
    """The autograd mode of a captured forward. Gradient-free: ``inference_mode``
    throughout. With gradients: off (even inside a caller's ``inference_mode``) until the
    first target layer turns it on for what follows, the tail and the score
    (:class:`~xcam.core.capture.Capture`'s ``start_recording``); the caller's mode is back
    on exit, after an error too."""
    if not gradients:
        with torch.inference_mode():
            yield
    elif torch.is_inference_mode_enabled():
        with torch.inference_mode(False), torch.no_grad():
            yield
    else:
        with torch.no_grad():
            yield


def no_tail(method: str) -> Callable[..., torch.Tensor]:
    """The ``tail`` of a method explaining a file alone: re-running it needs the model."""

    def tail(name: str, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise XCamError(
            f"{method} re-runs the model after layer {name!r}, which needs the "
            "eager model: Method(model, layers, backend=xcam.load(path))"
        )

    return tail
