"""Every hook xcam registers lives here, scoped to one call and removed in ``finally``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from xcam.errors import InputError


@contextmanager
def preserved_state(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Run the body with ``model`` in eval mode, then restore every module's training flag.

    Explaining in eval mode means BatchNorm uses its running statistics and updates
    nothing, and Dropout is off: the explanation is of the model as it predicts.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        if eval_mode:
            for module, flag in flags:
                if flag:  # touching only modules in training mode keeps eval models cheap
                    module.training = False
        yield
    finally:
        for module, flag in flags:
            if module.training != flag:
                module.training = flag


class Capture:
    """The activations of named layers from one forward pass.

    With ``grad_handles`` each captured activation is a tensor that ``autograd.grad``
    can differentiate against, even under frozen parameters or an input that needs no
    gradient (a fresh leaf is made where the graph has none below the layer).

    The module's output is handed on as a clone, so an in-place op that follows the
    layer (``ReLU(inplace=True)``) changes the clone and never the captured values.
    """

    def __init__(self, layers: Sequence[tuple[str, nn.Module]], grad_handles: bool = False):
        self.layers = list(layers)
        self.grad_handles = grad_handles
        self.activations: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise InputError(
                    f"layer {name!r} returns {type(output).__name__}, not a tensor; "
                    "pick a layer whose output is one [B, C, H, W] tensor"
                )
            if name in self.activations:
                raise InputError(
                    f"layer {name!r} runs more than once in one forward pass (a shared "
                    "module); pick a layer that runs once"
                )
            act = output
            if self.grad_handles and not act.requires_grad:
                act = act.detach().requires_grad_(True)
            self.activations[name] = act
            return act.clone()

        return hook

    def __enter__(self) -> Capture:
        self.activations = {}
        try:
            for name, module in self.layers:
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __exit__(self, *exc: object) -> None:  # never swallows the error
        self.remove()

    def ordered(self) -> list[torch.Tensor]:
        """Activations in the order of ``layers``; a layer that never ran is an error."""
        missing = [n for n, _ in self.layers if n not in self.activations]
        if missing:
            raise InputError(
                f"layer(s) {', '.join(map(repr, missing))} did not run in the forward pass"
            )
        return [self.activations[n] for n, _ in self.layers]


@contextmanager
def replaced_output(module: nn.Module, value: torch.Tensor) -> Iterator[None]:
    """Within the body, ``module``'s forward returns ``value`` instead of its own output."""
    handle = module.register_forward_hook(lambda _m, _i, _o: value)
    try:
        yield
    finally:
        handle.remove()
