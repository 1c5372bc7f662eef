"""The interface every runtime shares: run a batch, get logits and activations by name."""

from __future__ import annotations

from pathlib import Path

import torch

from xcam.core.artifact import (
    LOGITS,
    METADATA_KEY,
    TARGET_INPUT,
    ExportMetadata,
    check_input_shape,
    grad_name,
    static_mismatch,
)
from xcam.core.errors import InputError, ModelSpecError


def read_metadata(name: str, text: str) -> ExportMetadata:
    """The metadata JSON an exported file carries, parsed; anything else is a
    :class:`ModelSpecError` naming the file (its fields are checked by
    :func:`check_metadata`)."""

    try:
        return ExportMetadata.from_json(text)
    except (ValueError, TypeError) as e:
        msg = f"{name}: its '{METADATA_KEY}' metadata is unreadable ({e})"
        raise ModelSpecError(msg) from None


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_metadata(
    name: str,
    meta: ExportMetadata,
    graph_inputs: list[str] | None = None,
    graph_outputs: list[str] | None = None,
) -> None:
    """Every field of a file's metadata has the type xcam writes, and the names it lists
    are the graph's (where the runtime tells them); else a :class:`ModelSpecError` naming
    the field. A file is untrusted input: its metadata decides what is read and run."""
    import math

    def refuse(field: str, what: str) -> None:
        raise ModelSpecError(
            f"{name}: its metadata's {field} {_short(getattr(meta, field))} is not {what}; the "
            "file is damaged or was not written by `xcam export` (export it again)"
        )

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def names(v: object) -> bool:
        return isinstance(v, list) and all(isinstance(n, str) and n for n in v)

    for field in ("format", "exporter", "input_name", "layout", "dtype"):
        if not isinstance(getattr(meta, field), str):
            refuse(field, "a string")
    for field in ("activation", "model"):
        if getattr(meta, field) is not None and not isinstance(getattr(meta, field), str):
            refuse(field, "a string or null")
    for field in ("gradients", "pre_activation", "dynamic_batch", "dynamic_spatial"):
        if not isinstance(getattr(meta, field), bool):
            refuse(field, "true or false")
    if not names(meta.layers) or not meta.layers or len(set(meta.layers)) != len(meta.layers):
        refuse("layers", "a non-empty list of distinct layer names")
    if not names(meta.output_names) or len(set(meta.output_names)) != len(meta.output_names):
        refuse("output_names", "a list of distinct output names")
    if not names(meta.input_names) or not meta.input_names:
        refuse("input_names", "a non-empty list of input names")
    if not names(meta.closed_form):
        refuse("closed_form", "a list of layer names")
    if not isinstance(meta.outputs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.outputs.items()
    ):
        refuse("outputs", "an object of output names and descriptions")
    if not isinstance(meta.versions, dict):
        refuse("versions", "an object")
    if meta.output is not None and not (isinstance(meta.output, str) or is_int(meta.output)):
        refuse("output", "an output index, a key or null")
    for field in ("num_classes", "opset"):
        value = getattr(meta, field)
        if value is not None and not (is_int(value) and value >= 1):
            refuse(field, "a positive integer or null")
    if meta.classes is not None and not (
        isinstance(meta.classes, list) and all(isinstance(c, str) for c in meta.classes)
    ):
        refuse("classes", "a list of class names or null")
    channels = meta.input_shape[1] if len(meta.input_shape) == 4 else None
    for field in ("mean", "std"):
        value = getattr(meta, field)
        if value is None:
            continue
        if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        ):
            refuse(field, "a list of finite numbers or null")
        if field == "std" and min(value, default=1.0) <= 0:
            refuse(field, "a list of positive numbers (inputs are divided by it)")
        if channels is not None and len(value) != channels:
            refuse(field, f"one number per input channel ({channels})")
    wanted = [LOGITS, *meta.layers]
    if meta.gradients:
        wanted += [grad_name(layer) for layer in meta.layers]
    missing = [n for n in wanted if n not in meta.output_names]
    if missing:
        refuse("output_names", f"complete: it lacks {', '.join(map(repr, missing))}")
    for field, listed, real in (
        ("output_names", meta.output_names, graph_outputs),
        ("input_names", meta.input_names, graph_inputs),
    ):
        unknown = [n for n in listed if real is not None and n not in real]
        if unknown:
            refuse(
                field,
                f"the graph's: it has no {', '.join(map(repr, unknown))} (it has "
                f"{', '.join(map(repr, real or []))})",
            )


class Backend:
    """An exported model loaded for one runtime and device.

    ``run(x)`` returns ``{"logits": …, "<layer>": …}`` as torch tensors on ``device``;
    calling the backend returns ``(logits, *activations)`` like :class:`xcam.CamModel`.
    A backend is usable wherever a model is: ``xcam.GradCAM(xcam.load("m.onnx"))``.
    """

    format = ""

    def __init__(
        self,
        path: str | Path,
        metadata: ExportMetadata,
        device: str = "cpu",
        graph_input_shape: list[int | None] | None = None,
        *,
        graph_inputs: list[str] | None = None,
        graph_outputs: list[str] | None = None,
    ):
        self.path = Path(path)
        self.metadata = metadata
        self.device = torch.device(device)
        try:  # never trust a size the file claims: it decides how large images are made
            check_input_shape(self.path.name, metadata.input_shape, graph_input_shape)
        except ValueError as e:
            raise ModelSpecError(str(e)) from None
        check_metadata(self.path.name, metadata, graph_inputs, graph_outputs)

    @property
    def layer_names(self) -> list[str]:
        return list(self.metadata.layers)

    @property
    def output_names(self) -> list[str]:
        return list(self.metadata.output_names)

    def check_input(self, x: torch.Tensor) -> None:
        shape = self.metadata.input_shape
        if x.dim() != len(shape):
            raise InputError(f"{self.path.name} takes {len(shape)}-D input, got {tuple(x.shape)}")
        problem = static_mismatch(self.path.name, shape, tuple(x.shape))
        if problem is not None:
            raise InputError(problem)

    @property
    def exported_dtype(self) -> torch.dtype:
        """The floating dtype the file was exported for (float32 unless it says otherwise)."""
        found = getattr(torch, str(self.metadata.dtype), None)
        if isinstance(found, torch.dtype) and found.is_floating_point:
            return found
        return torch.float32

    @property
    def activation(self) -> str | None:
        """The final activation the file's ``logits`` went through (None: raw scores)."""
        from xcam.core.decision import ACTIVATIONS

        found = self.metadata.activation
        if self.metadata.pre_activation or found not in ACTIVATIONS:
            return None
        return found

    @property
    def has_gradients(self) -> bool:
        return bool(self.metadata.gradients)

    @property
    def has_target_input(self) -> bool:
        return TARGET_INPUT in self.metadata.input_names

    def _run(self, x: torch.Tensor, target: torch.Tensor | None) -> list[torch.Tensor]:
        raise NotImplementedError

    def _target(self, x: torch.Tensor, target: object) -> torch.Tensor | None:
        if target is None:
            return (
                torch.full((x.shape[0],), -1, dtype=torch.long) if self.has_target_input else None
            )
        if not self.has_target_input:
            raise InputError(
                f"{self.path.name} takes no target input (it explains the top-1 class); "
                "re-export with target_input=True (--target-input) to choose classes"
            )
        t = torch.as_tensor(target, dtype=torch.long).reshape(-1)
        return t.expand(x.shape[0]).clone() if t.numel() == 1 else t

    def run(self, x: torch.Tensor, target: object = None) -> dict[str, torch.Tensor]:
        """Outputs by name for a float ``[B, C, H, W]`` batch (``target``: a class per sample,
        -1 for top-1, where the file was exported with a target input)."""
        self.check_input(x)
        outs = self._run(x, self._target(x, target))
        return dict(zip(self.output_names, outs, strict=True))

    def __call__(self, x: torch.Tensor, target: object = None) -> tuple[torch.Tensor, ...]:
        outs = self.run(x, target)
        return tuple(outs[n] for n in self.output_names)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, device={str(self.device)!r}, "
            f"layers={self.layer_names})"
        )
