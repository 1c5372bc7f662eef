"""Every hook xcam registers lives here, scoped to one call and removed in ``finally``."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from xcam.core.errors import InputError
from xcam.core.targets import output_tensors


@contextmanager
def preserved_state(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Run the body with ``model`` in eval mode, then restore every module's training flag.

    Explaining in eval mode means BatchNorm uses its running statistics and updates
    nothing, and Dropout is off: the explanation is of the model as it predicts.
    """
    flags = [(m, m.training) for m in _all_modules(model)]
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


def _all_modules(model: nn.Module) -> list[nn.Module]:
    """``model`` and every module below it, once each: ``list(model.modules())``, in a
    third of its time (this runs on every call of an explainer)."""
    found, seen, i = [model], {id(model)}, 0
    while i < len(found):
        for child in found[i]._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                found.append(child)
        i += 1
    return found


class Capture:
    """The activations of named layers from one forward pass.

    With ``grad_handles`` each captured activation is a tensor that ``autograd.grad``
    can differentiate against, even under frozen parameters or an input that needs no
    gradient (a fresh leaf is made where the graph has none below the layer).

    The module's output is handed on as a clone, so an in-place op that follows the
    layer (``ReLU(inplace=True)``) changes the clone and never the captured values.

    With ``start_recording`` the forward is expected to run with autograd off: the first
    target layer to run turns it on, so only what depends on the captured activations is
    recorded (nothing below them is: a gradient costs inference plus the tail). The
    caller's ``torch.no_grad()`` restores its own mode when it exits.

    Hooks are module-wide, so a forward of the same model in another thread would see
    them: they act only in the thread that entered the capture.
    """

    def __init__(
        self,
        layers: Sequence[tuple[str, nn.Module]],
        grad_handles: bool = False,
        start_recording: bool = False,
    ):
        self.layers = list(layers)
        self.grad_handles = grad_handles
        self.start_recording = start_recording
        self.activations: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._thread = threading.get_ident()

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor | None:
            if threading.get_ident() != self._thread:
                return None  # another thread's forward of the same model
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
            if self.start_recording:  # record from here on (grad mode is thread-local)
                torch.set_grad_enabled(True)
            self.activations[name] = act
            return act.clone()

        return hook

    def __enter__(self) -> Capture:
        self.activations = {}
        self._thread = threading.get_ident()
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
def replaced_output(
    module: nn.Module, value: torch.Tensor, grad_mode: bool | None = None
) -> Iterator[None]:
    """Within the body, ``module``'s forward returns ``value`` instead of its own output.

    ``grad_mode``: the autograd mode from the replacement on (the body runs the layers
    before it with autograd off, and their outputs are discarded anyway)."""
    thread = threading.get_ident()

    def hook(_module: nn.Module, _inputs: object, _output: object) -> torch.Tensor | None:
        if threading.get_ident() != thread:
            return None
        if grad_mode is not None:
            torch.set_grad_enabled(grad_mode)
        return value

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# -- guided backprop -------------------------------------------------------------------------

# activation modules that guided backprop does not guide (it guides nn.ReLU only); ReLU6 is a
# Hardtanh, listed for a clear name in the warning
UNGUIDED_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU6,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.LogSigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Threshold,
    nn.GLU,
)


def _watched_functions() -> dict[Any, str]:
    """Functional activations, as a ``TorchFunctionMode`` sees them, with a name to report."""
    fn, t = torch.nn.functional, torch.Tensor
    pairs = [
        (fn.relu, "F.relu"),
        (fn.relu_, "F.relu_"),
        (torch.relu, "torch.relu"),
        (torch.relu_, "torch.relu_"),
        (t.relu, "Tensor.relu"),
        (t.relu_, "Tensor.relu_"),
        (fn.relu6, "F.relu6"),
        (fn.hardtanh, "F.hardtanh"),
        (fn.hardtanh_, "F.hardtanh_"),
        (fn.leaky_relu, "F.leaky_relu"),
        (fn.leaky_relu_, "F.leaky_relu_"),
        (fn.prelu, "F.prelu"),
        (fn.rrelu, "F.rrelu"),
        (fn.rrelu_, "F.rrelu_"),
        (fn.elu, "F.elu"),
        (fn.elu_, "F.elu_"),
        (fn.selu, "F.selu"),
        (torch.selu, "torch.selu"),
        (fn.celu, "F.celu"),
        (fn.gelu, "F.gelu"),
        (fn.silu, "F.silu"),
        (fn.mish, "F.mish"),
        (fn.hardswish, "F.hardswish"),
        (fn.hardsigmoid, "F.hardsigmoid"),
        (fn.softplus, "F.softplus"),
        (fn.threshold, "F.threshold"),
        (fn.glu, "F.glu"),
        (fn.sigmoid, "F.sigmoid"),
        (torch.sigmoid, "torch.sigmoid"),
        (t.sigmoid, "Tensor.sigmoid"),
        (t.sigmoid_, "Tensor.sigmoid_"),
        (fn.tanh, "F.tanh"),
        (torch.tanh, "torch.tanh"),
        (t.tanh, "Tensor.tanh"),
        (t.tanh_, "Tensor.tanh_"),
    ]
    return dict(pairs)


class _GuidedReLU(torch.autograd.Function):
    """Identity on a ReLU's output ``y``; backward passes ``ReLU(g)`` where ``y > 0``.

    ``y = relu(x)`` is positive exactly where ``x`` is, so the mask is the input's, and the
    ReLU's own backward (the same mask) that follows changes nothing: the gradient that
    reaches the ReLU's input is ``(x > 0) * ReLU(g)``. An in-place ReLU's output is already
    ``relu(x)``, so it is handled the same way.
    """

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y > 0)
        return y.clone()  # a new tensor: in-place ops after the ReLU never touch y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (mask,) = ctx.saved_tensors
        return grad.clamp(min=0) * mask


@dataclass
class GuidedReport:
    """What :func:`guided_relus` saw in one forward pass.

    ``guided``: calls of ``nn.ReLU`` modules whose backward was guided; ``unguided``: the
    activations it could not guide, as ``(what, where)``: an activation module that is not
    ``nn.ReLU`` (``("SiLU", "features.0.2")``) or a functional activation called outside an
    activation module (``("F.relu", "functional")``).
    """

    guided: int = 0
    unguided: list[tuple[str, str]] = field(default_factory=list)
    _outputs: list[Any] = field(default_factory=list, repr=False)
    _depth: int = field(default=0, repr=False)

    def exclude_outputs(self, out: object) -> None:
        """Forget activations whose result *is* the model's output (a sigmoid head, say):
        the last op of the model is part of the score, with nothing after it to guide."""
        final = {id(t) for t in output_tensors(out)}
        keep = [(rec, o) for rec, o in zip(self.unguided, self._outputs, strict=True)]
        keep = [(rec, o) for rec, o in keep if o is None or id(o) not in final]
        self.unguided = [rec for rec, _ in keep]
        self._outputs = [o for _, o in keep]

    def _add(self, what: str, where: str, out: object) -> None:
        self.unguided.append((what, where))
        self._outputs.append(out if isinstance(out, torch.Tensor) else None)

    def message(self) -> str | None:
        """A warning naming what could not be guided, or None."""
        if not self.unguided:
            return None
        counts: dict[tuple[str, str], int] = {}
        for rec in self.unguided:
            counts[rec] = counts.get(rec, 0) + 1
        parts = []
        for (what, where), n in counts.items():
            times = f" x{n}" if n > 1 else ""
            if where == "functional":
                parts.append(f"{what}(){times} called outside an nn.ReLU module")
            else:
                parts.append(f"{what} module {where!r}{times}")
        shown = parts[:8] + ([f"and {len(parts) - 8} more"] if len(parts) > 8 else [])
        return (
            "guided backprop guides nn.ReLU modules only; these activations pass the plain "
            "gradient, so the attribution is partly unguided: " + "; ".join(shown)
        )


class _ActivationWatch(TorchFunctionMode):
    """Records functional activations called outside any activation module."""

    def __init__(self, report: GuidedReport):
        super().__init__()
        self.report = report
        self.watched = _watched_functions()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = self.watched.get(func)
        if name is not None and self.report._depth == 0:
            self.report._add(name, "functional", out)
        return out


@contextmanager
def guided_relus(
    model: nn.Module, warn: bool = True, stacklevel: int = 1
) -> Iterator[GuidedReport]:
    """Within the body, every ``nn.ReLU`` module of ``model`` backpropagates guided.

    Guided backprop (Springenberg et al. 2015): at a ReLU, the gradient passed to the
    input is ``(input > 0) * ReLU(grad_output)``. Each ``nn.ReLU`` module (in place or
    not) gets a forward hook that wraps its output in an identity with that backward;
    the model itself is not changed, and the hooks are removed in ``finally``.

    Activations it cannot guide are recorded in the yielded :class:`GuidedReport` and,
    with ``warn``, named in one ``UserWarning`` when the body ends without error: activation
    modules other than ``nn.ReLU`` that ran, and functional activations (``F.relu``,
    ``torch.sigmoid``, ``F.silu``…) called outside an activation module — seen by a
    ``TorchFunctionMode`` during the body. ``stacklevel`` counts from the ``with`` statement.
    """
    report = GuidedReport()
    handles: list[torch.utils.hooks.RemovableHandle] = []
    thread = threading.get_ident()  # the hooks act only in this thread (see Capture)

    def enter(_module: nn.Module, _inputs: object) -> None:
        if threading.get_ident() == thread:
            report._depth += 1

    def leave_relu(_module: nn.Module, _inputs: object, output: object) -> object:
        if threading.get_ident() != thread:
            return None
        report._depth -= 1
        if not isinstance(output, torch.Tensor):
            return None
        report.guided += 1
        return _GuidedReLU.apply(output)

    def leave_other(name: str):
        def hook(module: nn.Module, _inputs: object, output: object) -> None:
            if threading.get_ident() != thread:
                return
            report._depth -= 1
            report._add(type(module).__name__, name, output)

        return hook

    try:
        for name, module in model.named_modules():
            if isinstance(module, nn.ReLU):
                leave = leave_relu
            elif isinstance(module, UNGUIDED_ACTIVATIONS):
                leave = leave_other(name)
            else:
                continue
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave, always_call=True))
        with _ActivationWatch(report):
            yield report
    finally:
        for handle in handles:
            handle.remove()
    if warn:
        message = report.message()
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=2 + stacklevel)
