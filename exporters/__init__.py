"""Exporters: a model with its target-layer activations as named graph outputs, written as
ONNX, TorchScript or a ``torch.export`` package, with metadata and a parity check.

    report = exporters.export(model, ["layer4"], torch.randn(2, 3, 224, 224), "m.onnx")
    backend = xcam.load("m.onnx")          # run it: logits and activations by name
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from exporters.errors import ExportError, ParityError, UnsupportedOpError
from exporters.onnx import DYNAMO_MIN_OPSET
from exporters.versions import versions
from xcam.core.artifact import FORMATS as _FORMAT_TABLE
from xcam.core.artifact import (
    GRADCAM,
    LOGITS,
    MAX_SIDE,
    ExportMetadata,
    describe_outputs,
    grad_name,
)
from xcam.core.files import staged
from xcam.core.tracing import TRACE_LOCK

FORMATS = tuple(_FORMAT_TABLE)

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportMetadata",
    "ExportReport",
    "ParityError",
    "UnsupportedOpError",
    "export",
]


@dataclass
class ExportReport:
    """What an export wrote and how closely it matches eager PyTorch."""

    path: Path
    format: str
    outputs: dict[str, list[int | None]]
    file_bytes: int
    export_seconds: float
    check_seconds: float | None = None
    max_errors: dict[str, dict[str, float]] = field(default_factory=dict)
    metadata: ExportMetadata | None = None
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"exported {self.path} ({self.format}, {self.file_bytes / 1e6:.2f} MB) "
            f"in {self.export_seconds:.1f}s"
        ]
        for name, shape in self.outputs.items():
            dims = "x".join("B" if s is None else str(s) for s in shape)
            err = self.max_errors.get(name)
            check = f"  max abs err {err['max_abs']:.2e} (rel {err['max_rel']:.2e})" if err else ""
            lines.append(f"  output {name:<20} {dims}{check}")
        if self.check_seconds is not None:
            lines.append(f"  parity with eager: ok (batches 1, 2, 3; {self.check_seconds:.1f}s)")
        else:
            lines.append("  parity with eager: not checked (--no-check)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


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


def export(
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
) -> ExportReport:
    """Export ``CamModel(model, layers)``: outputs ``logits`` and one per layer.

    ``example`` fixes the channel count (and the spatial size unless ``dynamic_spatial``);
    with ``dynamic_batch`` any batch size runs (an example batch of 1 is repeated to 2,
    since torch.export specialises dimensions of size 0 and 1). ``check`` loads the file
    back and compares it with eager PyTorch at batch 1, 2 and 3 (and a second spatial size
    when spatially dynamic): a mismatch beyond ``tolerance`` raises :class:`ParityError`.
    ``aoti`` (pt2 only): compile with AOTInductor; None = when a C++ compiler is present.

    With ``gradients`` the graph also outputs ``<layer>.grad`` (the top-1 score's gradient
    with respect to each activation, or the class given by a second int64 input ``target``
    when ``target_input``, -1 meaning top-1) and ``gradcam``, the fused Grad-CAM map
    ``[B, H, W]`` in [0, 1] at input resolution (see :mod:`exporters.gradients`).

    A model whose output comes out of a final Sigmoid / Softmax / LogSoftmax (a module or a
    function) is noted as such in the metadata (``activation``): its ``logits`` are
    probabilities. With ``pre_activation`` the file outputs, and explains, the scores before
    that activation instead (a confident sigmoid's gradient vanishes in float32).
    """
    from exporters.parity import DEFAULT_TOLERANCE, check_parity
    from xcam.core.cammodel import CamModel
    from xcam.core.capture import preserved_state
    from xcam.core.inputs import check_input
    from xcam.core.layers import default_layer, floating_dtype

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; one of {', '.join(FORMATS)}")
    if not isinstance(model, nn.Module):
        raise ExportError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if gradients and format == "onnx" and opset is not None and opset < DYNAMO_MIN_OPSET:
        raise ExportError(
            f"--gradients needs ONNX opset {DYNAMO_MIN_OPSET} or above (the gradient graph is "
            f"written by torch's dynamo exporter); opset {opset} was asked for"
        )
    example = check_input(example)
    path = Path(path)
    notes: list[str] = []
    dtype = floating_dtype(model)
    if dtype is not None and example.dtype != dtype:  # e.g. a model.half()
        notes.append(f"example cast from {example.dtype} to the model's {dtype}")
        example = example.to(dtype)
    if tolerance is None and example.dtype in (torch.float16, torch.bfloat16):
        tolerance = 16 * torch.finfo(example.dtype).eps  # the rounding of a 16-bit float
    if dynamic_batch and example.shape[0] == 1:
        example = example.expand(2, *example.shape[1:]).clone()
        notes.append("example batch of 1 repeated to 2 (0/1 specialisation of dynamic dims)")
    _check_batchnorm(model)

    # one export at a time in the process; written into a private folder beside ``path`` and
    # moved into place only once checked, so a failure leaves an existing file untouched
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"can't write {path}: {e.strerror or e}") from None
    with TRACE_LOCK, preserved_state(model), staged(path) as target:
        if layers is None:
            layers = default_layer(model, example)
        cam_model = CamModel(model, layers, output=output, watch=True).eval()
        with torch.no_grad():
            cam_model(example)  # learns the final activation, if any
        activation = cam_model.activation
        if pre_activation and activation is None:
            raise ExportError(
                "pre_activation: the model's output does not come out of a final Sigmoid, "
                "Softmax or LogSoftmax (module or function), so it already is the score before "
                "one; export without --pre-activation"
            )
        cam_model = CamModel(model, layers, output=output, pre_activation=pre_activation).eval()
        layer_names = list(cam_model.layer_names)
        module: nn.Module = cam_model
        reference: nn.Module = cam_model
        unsaturated: nn.Module | None = None
        args: tuple = (example,)
        input_names = ["input"]
        closed: list[str] = []
        if gradients:
            from exporters.gradients import GradModel, closed_form_heads, trace

            heads = closed_form_heads(model, layer_names, example, output, pre_activation)
            closed = [n for n, h in zip(layer_names, heads, strict=True) if h is not None]
            reference = GradModel(
                model,
                layer_names,
                output,
                heads,
                not dynamic_spatial,
                pre_activation=pre_activation,
                activation=activation,
            )
            if activation is not None and not pre_activation:
                # the same gradients of the scores before the activation: the scale that
                # says when a probability's gradient is saturated (see check_parity)
                unsaturated = GradModel(
                    model,
                    layer_names,
                    output,
                    [None] * len(layer_names),
                    not dynamic_spatial,
                    pre_activation=True,
                    activation=activation,
                )
            if target_input:
                args = (example, torch.full((example.shape[0],), -1, dtype=torch.long))
                input_names.append("target")
            start = time.perf_counter()
            try:
                module = trace(reference, example, target_input)
            except NotImplementedError as e:
                raise UnsupportedOpError(str(e), "gradient", "no forward form") from e
            notes.append(
                f"gradients traced in {time.perf_counter() - start:.1f}s"
                + (f"; closed form (W/(h·w)) for {', '.join(closed)}" if closed else "")
            )
        with torch.no_grad():
            outs = reference(*args)
        names = [LOGITS, *layer_names]
        if gradients:
            names += [grad_name(n) for n in layer_names] + [GRADCAM]
        batch = torch.export.Dim("batch", min=1, max=65536) if dynamic_batch else None
        dims: dict[int, Any] = {}
        if batch is not None:
            dims[0] = batch
        if dynamic_spatial:
            dims[2] = torch.export.Dim("height", min=8, max=MAX_SIDE)
            dims[3] = torch.export.Dim("width", min=8, max=MAX_SIDE)
        dynamic_shapes: tuple | None = None
        if dims:
            dynamic_shapes = (dims,) if len(args) == 1 else (dims, {0: batch} if batch else None)
        flat = outs[0].reshape(outs[0].shape[0], -1)
        meta = ExportMetadata(
            format=format,
            exporter={
                "onnx": "torch.onnx.export(dynamo=True)",
                "torchscript": "torch.jit.trace",
                "pt2": "torch.export",
            }[format],
            layers=layer_names,
            output_names=names,
            outputs=describe_outputs(layer_names, gradients),
            input_shape=[None if i in dims else int(s) for i, s in enumerate(example.shape)],
            dtype=str(example.dtype).replace("torch.", ""),
            num_classes=int(flat.shape[1]),
            classes=list(classes) if classes is not None else None,
            mean=list(mean) if mean is not None else None,
            std=list(std) if std is not None else None,
            opset=opset,
            dynamic_batch=dynamic_batch,
            dynamic_spatial=dynamic_spatial,
            model=model_spec,
            versions=versions(),
            gradients=gradients,
            input_names=input_names,
            closed_form=closed,
            activation=activation,
            pre_activation=pre_activation,
            output=output,
        )
        start = time.perf_counter()
        if format == "onnx":
            from exporters.onnx import export_onnx

            notes += export_onnx(
                module, args, target, names, dynamic_shapes, opset, meta, input_names
            )
        elif format == "torchscript":
            from exporters.torchscript import export_torchscript

            if dynamic_spatial:
                notes.append("TorchScript traces are shape-polymorphic where the model is")
            notes += export_torchscript(module, args, target, meta)
        else:
            from exporters.pt2 import export_pt2

            notes += export_pt2(module, args, target, dynamic_shapes, meta, aoti)
        elapsed = time.perf_counter() - start

        report = ExportReport(
            path=path,
            format=format,
            outputs={
                n: [None if (i == 0 and dynamic_batch) else int(s) for i, s in enumerate(o.shape)]
                for n, o in zip(names, outs, strict=True)
            },
            file_bytes=target.stat().st_size,
            export_seconds=elapsed,
            metadata=meta,
            notes=notes,
        )
        if check:
            from xcam.backends import load

            start = time.perf_counter()
            device = str(example.device)
            backend = load(target, device=device, trust_code=True)  # the file just written
            h, w = example.shape[-2:]
            sizes = [(h + 32, w + 16)] if dynamic_spatial else []
            report.max_errors = check_parity(
                backend,
                reference,
                example,
                batches=(1, 2, 3) if dynamic_batch else (example.shape[0],),
                sizes=sizes,
                tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance,
                unsaturated=unsaturated,
                notes=report.notes,
            )
            report.check_seconds = time.perf_counter() - start
    return report
