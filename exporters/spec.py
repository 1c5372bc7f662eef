"""What an export produces, declared as data: :class:`ExportSpec`, built once from
``exporters.export``'s arguments and validated (:func:`build_spec`) before anything runs.

Its inputs, outputs, dynamic axes, parity sizes and tolerance are read off the spec by every
step of :mod:`exporters.steps`, so each is decided in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from exporters.errors import ExportError
from exporters.onnx import DYNAMO_MIN_OPSET
from exporters.parity import DEFAULT_TOLERANCE
from xcam.core.artifact import (
    FORMATS,
    GRADCAM,
    INPUT,
    LOGITS,
    MAX_SIDE,
    TARGET_INPUT,
    grad_name,
)

# the dimensions of the [B, C, H, W] input an export may leave dynamic: (name, min, max).
# torch.export specialises dimensions of size 0 and 1, so a dynamic batch starts at 1 with
# an example batch of at least 2 (see build_spec)
DYNAMIC_AXES: dict[int, tuple[str, int, int]] = {
    0: ("batch", 1, 65536),
    2: ("height", 8, MAX_SIDE),
    3: ("width", 8, MAX_SIDE),
}

# the exporter that writes each format (a writer may record a variant: ONNX below the dynamo
# opsets, a compiled pt2 package, a scripted gradient graph)
EXPORTERS = {
    "onnx": "torch.onnx.export(dynamo=True)",
    "torchscript": "torch.jit.trace",
    "pt2": "torch.export",
}


@dataclass(frozen=True)
class ExportSpec:
    """One export: the file, its format and what its graph takes and gives.

    ``layers`` is the request (None: the model's default layer); ``layer_names``, the
    names they resolve to, are filled in once the model is prepared (:meth:`resolved`).
    ``mean``, ``std`` and ``classes`` are recorded in the metadata as given.
    """

    format: str
    path: Path
    example: torch.Tensor  # checked, in the model's dtype, batch ≥ 2 when dynamic
    layers: Any = None
    layer_names: tuple[str, ...] = ()
    gradients: bool = False
    target_input: bool = False
    pre_activation: bool = False
    output: int | str | None = None
    dynamic_batch: bool = True
    dynamic_spatial: bool = False
    opset: int | None = None
    aoti: bool | None = None
    check: bool = True
    tolerance: float = DEFAULT_TOLERANCE
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    classes: Sequence[str] | None = None
    model_spec: str | None = None
    notes: tuple[str, ...] = ()  # what building the spec changed in the example

    def resolved(self, layer_names: Sequence[str]) -> ExportSpec:
        """This spec with its layers resolved to module names."""
        return replace(self, layer_names=tuple(layer_names))

    @property
    def exporter(self) -> str:
        return EXPORTERS[self.format]

    @property
    def input_names(self) -> list[str]:
        """The graph's inputs: the batch, and with in-graph gradients and ``target_input``
        the class per sample to explain."""
        return [INPUT, TARGET_INPUT] if self.gradients and self.target_input else [INPUT]

    @property
    def output_names(self) -> list[str]:
        """The graph's outputs: logits, one activation per layer, and with gradients one
        gradient per layer and the fused map."""
        names = [LOGITS, *self.layer_names]
        if self.gradients:
            names += [grad_name(n) for n in self.layer_names] + [GRADCAM]
        return names

    @property
    def args(self) -> tuple[torch.Tensor, ...]:
        """Example arguments for the graph (the target: -1, the top-1 class)."""
        if len(self.input_names) == 1:
            return (self.example,)
        return (self.example, torch.full((self.example.shape[0],), -1, dtype=torch.long))

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """The input dimensions left dynamic, by index: their names."""
        axes = ([0] if self.dynamic_batch else []) + ([2, 3] if self.dynamic_spatial else [])
        return {i: DYNAMIC_AXES[i][0] for i in axes}

    def dynamic_shapes(self) -> tuple | None:
        """``dynamic_shapes`` for ``torch.export`` / the dynamo ONNX exporter: one ``Dim``
        per dynamic axis, the batch shared with the target input. None: all static."""
        dims = {
            i: torch.export.Dim(name, min=DYNAMIC_AXES[i][1], max=DYNAMIC_AXES[i][2])
            for i, name in self.dynamic_axes.items()
        }
        if not dims:
            return None
        if len(self.input_names) == 1:
            return (dims,)
        return (dims, {0: dims[0]} if 0 in dims else None)

    @property
    def input_shape(self) -> list[int | None]:
        """``[B, C, H, W]`` as the metadata records it: None where dynamic."""
        axes = self.dynamic_axes
        return [None if i in axes else int(s) for i, s in enumerate(self.example.shape)]

    def output_shapes(self, outputs: Sequence[torch.Tensor]) -> dict[str, list[int | None]]:
        """Each output's shape on the example, None for a dynamic batch."""
        return {
            n: [None if (i == 0 and self.dynamic_batch) else int(s) for i, s in enumerate(o.shape)]
            for n, o in zip(self.output_names, outputs, strict=True)
        }

    @property
    def parity_batches(self) -> tuple[int, ...]:
        return (1, 2, 3) if self.dynamic_batch else (int(self.example.shape[0]),)

    @property
    def parity_sizes(self) -> list[tuple[int, int]]:
        """A second spatial size to check a spatially dynamic export at."""
        h, w = self.example.shape[-2:]
        return [(h + 32, w + 16)] if self.dynamic_spatial else []


def build_spec(
    model: nn.Module,
    layers: Any,
    example: torch.Tensor,
    path: str | Path,
    format: str = "onnx",
    gradients: bool = False,
    dynamic_batch: bool = True,
    opset: int | None = None,
    check: bool = True,
    *,
    output: int | str | None = None,
    dynamic_spatial: bool = False,
    aoti: bool | None = None,
    tolerance: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    model_spec: str | None = None,
    target_input: bool = False,
    pre_activation: bool = False,
) -> ExportSpec:
    """The spec of ``exporters.export(...)`` with these arguments (see there), validated:
    an :class:`ExportError` (or the input's :class:`xcam.InputError`) for what can't be
    exported, before anything is written or traced."""
    _check_request(model, format, gradients, opset)
    example, notes = _prepare_example(model, example, dynamic_batch)
    _check_batchnorm(model)
    return ExportSpec(
        format=format,
        path=Path(path),
        example=example,
        layers=layers,
        gradients=gradients,
        target_input=target_input,
        pre_activation=pre_activation,
        output=output,
        dynamic_batch=dynamic_batch,
        dynamic_spatial=dynamic_spatial,
        opset=opset,
        aoti=aoti,
        check=check,
        tolerance=_tolerance(tolerance, example.dtype),
        mean=mean,
        std=std,
        classes=classes,
        model_spec=model_spec,
        notes=tuple(notes),
    )


def _check_request(model: nn.Module, format: str, gradients: bool, opset: int | None) -> None:
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; one of {', '.join(FORMATS)}")
    if not isinstance(model, nn.Module):
        raise ExportError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if gradients and format == "onnx" and opset is not None and opset < DYNAMO_MIN_OPSET:
        raise ExportError(
            f"--gradients needs ONNX opset {DYNAMO_MIN_OPSET} or above (the gradient graph is "
            f"written by torch's dynamo exporter); opset {opset} was asked for"
        )


def _prepare_example(
    model: nn.Module, example: torch.Tensor, dynamic_batch: bool
) -> tuple[torch.Tensor, list[str]]:
    """The example checked, in the model's dtype, and with a batch of at least 2 when the
    batch is dynamic (torch.export specialises dimensions of size 0 and 1); notes of what
    changed."""
    from xcam.core.inputs import check_input
    from xcam.core.layers import floating_dtype

    example = check_input(example)
    notes: list[str] = []
    dtype = floating_dtype(model)
    if dtype is not None and example.dtype != dtype:  # e.g. a model.half()
        notes.append(f"example cast from {example.dtype} to the model's {dtype}")
        example = example.to(dtype)
    if dynamic_batch and example.shape[0] == 1:
        example = example.expand(2, *example.shape[1:]).clone()
        notes.append("example batch of 1 repeated to 2 (0/1 specialisation of dynamic dims)")
    return example, notes


def _tolerance(tolerance: float | None, dtype: torch.dtype) -> float:
    """Parity's tolerance: as given, else the rounding of a 16-bit float for a half-precision
    export, else :data:`exporters.parity.DEFAULT_TOLERANCE`."""
    if tolerance is not None:
        return tolerance
    if dtype in (torch.float16, torch.bfloat16):
        return 16 * torch.finfo(dtype).eps
    return DEFAULT_TOLERANCE


def _check_batchnorm(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
            not m.track_running_stats or m.running_mean is None
        ):
            raise ExportError(
                f"BatchNorm {name!r} has no running statistics (track_running_stats=False), so "
                "its output depends on the batch: an export would not match. Train with "
                "running statistics or replace it"
            )
