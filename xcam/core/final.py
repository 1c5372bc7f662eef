"""The model's final activation (sigmoid, softmax, log-softmax), found as the model runs:
a torch function mode that remembers which tensors those functions produced, so the
explained scores can be the probabilities the model outputs or the logits before them.
Not a hook: nothing is registered on the model."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


def _final_functions() -> dict[Any, str]:
    """The calls whose result is a probability (or its log), as a ``TorchFunctionMode`` sees
    them; ``nn.Sigmoid`` / ``nn.Softmax`` / ``nn.LogSoftmax`` call these too."""
    fn, t = torch.nn.functional, torch.Tensor
    return {
        torch.sigmoid: "sigmoid",
        fn.sigmoid: "sigmoid",
        t.sigmoid: "sigmoid",
        torch.softmax: "softmax",
        fn.softmax: "softmax",
        t.softmax: "softmax",
        torch.log_softmax: "log_softmax",
        fn.log_softmax: "log_softmax",
        t.log_softmax: "log_softmax",
    }


def _reshaping_functions() -> set[Any]:
    """Ops that only rearrange values: ``sigmoid(z).squeeze(1)`` is still a probability."""
    t = torch.Tensor
    return {
        torch.reshape,
        t.reshape,
        t.view,
        torch.flatten,
        t.flatten,
        torch.squeeze,
        t.squeeze,
        torch.unsqueeze,
        t.unsqueeze,
        t.__getitem__,
    }


class FinalActivations(TorchFunctionMode):
    """Remembers, for each tensor a sigmoid / softmax / log-softmax produced in this thread
    (or a reshape of one), the activation and the tensor before it, so that the model's
    output can be told apart from raw logits and traced back to them (:meth:`find`).

    Works inside ``torch.jit.trace``, ``torch.export`` and ``make_fx``: the pre-activation is
    an ordinary tensor of the forward, so the exported graph computes it.
    """

    PRUNE_EVERY = 64  # drop records of tensors that are gone (attention softmaxes, SE gates)

    def __init__(self) -> None:
        super().__init__()
        self.finals = _final_functions()
        self.reshaping = _reshaping_functions()
        self._seen: dict[int, tuple[Any, str, torch.Tensor]] = {}
        self._added = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor) or not args:
            return out
        kind = self.finals.get(func)
        if kind is not None:
            pre = args[0]
        elif func in self.reshaping and (found := self._lookup(args[0])) is not None:
            kind, before = found
            pre = func(before, *args[1:], **kwargs)  # the same rearrangement of the logits
        else:
            return out
        if isinstance(pre, torch.Tensor) and pre is not out:  # in-place (sigmoid_): no logits
            self._remember(out, kind, pre)
        return out

    def _remember(self, out: torch.Tensor, kind: str, pre: torch.Tensor) -> None:
        self._added += 1
        if self._added % self.PRUNE_EVERY == 0:
            self._seen = {k: v for k, v in self._seen.items() if v[0]() is not None}
        self._seen[id(out)] = (weakref.ref(out), kind, pre)

    def _lookup(self, t: object) -> tuple[str, torch.Tensor] | None:
        entry = self._seen.get(id(t))
        if entry is None or entry[0]() is not t:
            return None
        return entry[1], entry[2]

    def find(self, output: torch.Tensor) -> tuple[str | None, torch.Tensor]:
        """``(activation, logits)`` when ``output`` came out of a final activation, else
        ``(None, output)``."""
        found = self._lookup(output)
        return (None, output) if found is None else found


@contextmanager
def final_activations(active: bool = True) -> Iterator[FinalActivations | None]:
    """Within the body (in this thread), record sigmoid / softmax / log-softmax results
    (:class:`FinalActivations`); yields None and costs nothing when not ``active``."""
    if not active:
        yield None
        return
    with FinalActivations() as watch:
        yield watch


FINAL_ACTIVATIONS = (nn.Softmax, nn.Sigmoid, nn.LogSoftmax)


def final_activation(model: nn.Module) -> nn.Module | None:
    """The model's last leaf module when it is a Softmax / Sigmoid / LogSoftmax, else None
    (seen without running the model; a functional one is found on the first call)."""
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    return leaves[-1] if leaves and isinstance(leaves[-1], FINAL_ACTIVATIONS) else None
