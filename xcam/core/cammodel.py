"""``CamModel``: a model whose forward returns the logits and the target-layer activations."""

from __future__ import annotations

import torch
from torch import nn

from xcam.core.capture import Capture
from xcam.core.errors import TargetError
from xcam.core.final import final_activations
from xcam.core.layers import Layers, resolve_layers
from xcam.core.targets import describe_output as _structure
from xcam.core.targets import per_image


class _Whole:
    """``output=WHOLE``: the model's output as it is, a tuple or dict included (for a callable
    target, which may combine several heads)."""

    def __repr__(self) -> str:
        return "WHOLE"


WHOLE = _Whole()
OutputSelector = int | str | _Whole | None


def select_output(out: object, output: OutputSelector = None) -> torch.Tensor:
    """The logits tensor of a model output: as is, or ``out[output]`` for a tuple or dict
    (``WHOLE``: the output as it is, whatever its structure)."""
    if output is WHOLE:
        return out  # type: ignore[return-value]
    if output is None:
        if isinstance(out, torch.Tensor) or per_image(out):  # a detector's: box targets read it
            return out  # type: ignore[return-value]
        if isinstance(out, dict):
            raise TargetError(
                f"the model returns a dict {{{_structure(out)}}}; choose the logits with "
                "output=KEY (--output KEY on the command line)"
            )
        if isinstance(out, tuple | list):
            raise TargetError(
                f"the model returns a {type(out).__name__} ({_structure(out)}); choose the "
                "logits with output=INDEX (--output INDEX on the command line)"
            )
        raise TargetError(f"the model returns {type(out).__name__}, not a tensor")
    try:
        chosen = out[output]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        raise TargetError(
            f"output={output!r} selects nothing from the model's {type(out).__name__}"
        ) from None
    if not isinstance(chosen, torch.Tensor):
        raise TargetError(f"output={output!r} is a {type(chosen).__name__}, not a tensor")
    return chosen


class CamModel(nn.Module):
    """Wrap ``model`` so that ``forward(x)`` returns ``(logits, *activations)``.

    A model that returns a tuple or dict names its logits with ``output`` (an index or key).
    The activations are ordinary outputs of the forward, in the order of ``layers``,
    so tracing or exporting this module makes them real graph outputs with the names
    in :attr:`output_names`; nothing is left registered on the model between calls.

    ``watch``: note in :attr:`activation` whether the logits came out of a final
    Sigmoid / Softmax / LogSoftmax (module or function). ``pre_activation``: return the
    scores before that activation instead (an export then computes those).

    Example::

        cm = CamModel(torchvision.models.resnet18(), ["layer3", "layer4"])
        logits, a3, a4 = cm(torch.randn(2, 3, 224, 224))
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Layers,
        grad_handles: bool = False,
        output: OutputSelector = None,
        *,
        pre_activation: bool = False,
        watch: bool = False,
        record_from_layers: bool = False,
    ):
        super().__init__()
        resolved = resolve_layers(model, layers)
        if resolved is None:
            raise ValueError("CamModel needs explicit layers (names or modules)")
        self.model = model
        self.layer_names: list[str] = [n for n, _ in resolved]
        self._layers = resolved
        # internal: make activations differentiable handles (used by gradient methods)
        self.grad_handles = grad_handles
        # internal: autograd off until the first layer (see Capture's start_recording)
        self.record_from_layers = record_from_layers
        # which part of a tuple / dict output holds the logits
        self.output = output
        self.pre_activation = pre_activation
        self.watch = watch or pre_activation
        self.activation: str | None = None  # found by the last watched forward

    @property
    def layers(self) -> list[tuple[str, nn.Module]]:
        """The target layers as ``(name, module)``, in order."""
        return list(self._layers)

    @property
    def output_names(self) -> list[str]:
        return ["logits", *self.layer_names]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with (
            Capture(self._layers, self.grad_handles, self.record_from_layers) as cap,
            final_activations(self.watch) as final,
        ):
            logits = select_output(self.model(x), self.output)
        if final is not None:
            self.activation, before = final.find(logits)
            if self.pre_activation:
                logits = before
        return (logits, *cap.ordered())
