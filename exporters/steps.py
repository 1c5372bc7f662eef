"""The steps of an export, in order (:func:`run`): prepare the model (a :class:`CamModel`,
or a :class:`exporters.gradients.GradModel` traced with its gradients), describe the file
(:class:`ExportMetadata`), write it with the format's writer, check it against eager
PyTorch, and move it into place only then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from exporters.errors import ExportError, UnsupportedOpError
from exporters.report import ExportReport
from exporters.spec import ExportSpec
from exporters.versions import versions
from xcam.core.artifact import ExportMetadata, describe_outputs
from xcam.core.files import staged
from xcam.core.tracing import TRACE_LOCK


@dataclass
class Prepared:
    """The model made ready for one export."""

    spec: ExportSpec  # its layer names resolved
    module: nn.Module  # what the format's writer exports
    reference: nn.Module  # the same function in eager PyTorch: parity's reference
    outputs: tuple[torch.Tensor, ...]  # the reference's outputs on the example
    activation: str | None = None  # the model's final activation, if any
    # gradients of a model ending in an activation: those of the scores before it (parity)
    unsaturated: nn.Module | None = None
    closed: list[str] = field(default_factory=list)  # layers with a closed-form gradient
    token_layouts: dict[str, list] = field(default_factory=dict)  # layers of tokens


def run(model: nn.Module, spec: ExportSpec) -> ExportReport:
    """Export ``model`` as ``spec`` says. One export at a time in the process; the file is
    written into a private folder beside ``spec.path`` and moved into place only once
    checked, so a failure leaves an existing file untouched."""
    from xcam.core.capture import preserved_state

    _make_folder(spec.path)
    notes = list(spec.notes)
    with TRACE_LOCK, preserved_state(model), staged(spec.path) as target:
        prepared = prepare(model, spec, notes)
        report = write(prepared, describe(prepared), target, notes)
        if prepared.spec.check:
            check(prepared, target, report)
    return report


def _make_folder(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"can't write {path}: {e.strerror or e}") from None


# -- prepare ----------------------------------------------------------------------------------


def prepare(model: nn.Module, spec: ExportSpec, notes: list[str]) -> Prepared:
    """``CamModel(model, layers)`` ready to export, or with ``spec.gradients`` its
    :class:`GradModel` traced into a graph; notes added to ``notes``."""
    from xcam.core.cammodel import CamModel
    from xcam.core.layers import default_layer

    layers = default_layer(model, spec.example) if spec.layers is None else spec.layers
    activation = _final_activation(model, layers, spec)
    if spec.pre_activation and activation is None:
        raise ExportError(
            "pre_activation: the model's output does not come out of a final Sigmoid, "
            "Softmax or LogSoftmax (module or function), so it already is the score before "
            "one; export without --pre-activation"
        )
    cam_model = CamModel(
        model, layers, output=spec.output, pre_activation=spec.pre_activation
    ).eval()
    spec = spec.resolved(cam_model.layer_names)
    tokens = token_layouts(model, spec.layer_names, spec.example)
    if spec.gradients:
        _check_grids(spec, tokens)
        prepared = _prepare_gradients(model, spec, activation, notes, tokens)
    else:
        with torch.no_grad():
            outputs = tuple(cam_model(*spec.args))
        prepared = Prepared(spec, cam_model, cam_model, outputs, activation)
    prepared.token_layouts = tokens
    return prepared


def token_layouts(model: nn.Module, names: list[str], example: torch.Tensor) -> dict[str, list]:
    """The layers of ``names`` that output tokens, not ``[B, C, h, w]``: name ->
    ``[layout, prefix tokens]`` (see :mod:`xcam.core.tokens`), found by one probe forward
    for a model that has any (a ViT's ``[B, N, C]``, a Swin's channels-last stages)."""
    from xcam.core.layers import candidate_layers
    from xcam.core.tokens import may_have_tokens

    if not may_have_tokens(model):
        return {}
    infos = candidate_layers(model, example[:1])
    return {i.name: [i.layout, i.prefix] for i in infos if i.name in names and not i.is_map}


def _final_activation(model: nn.Module, layers: object, spec: ExportSpec) -> str | None:
    """The Sigmoid / Softmax / LogSoftmax the model's output comes out of, if any."""
    from xcam.core.cammodel import CamModel

    watched = CamModel(model, layers, output=spec.output, watch=True).eval()
    with torch.no_grad():
        watched(spec.example)
    return watched.activation


def _check_grids(spec: ExportSpec, tokens: dict[str, list]) -> None:
    """A token grid's shape follows from the input's size, fixed when traced: in-graph
    gradients of a grid layer with ``dynamic_spatial`` are an :class:`ExportError`."""
    grids = [n for n in spec.layer_names if tokens.get(n, ["nhwc"])[0] != "nhwc"]
    if grids and spec.dynamic_spatial:
        raise ExportError(
            f"layer {grids[0]!r} outputs [B, N, C] tokens, whose h x w grid the in-graph "
            "Grad-CAM fixes from the example's size: export it with a fixed input size (no "
            "--dynamic-spatial), or without --gradients"
        )


def _prepare_gradients(
    model: nn.Module,
    spec: ExportSpec,
    activation: str | None,
    notes: list[str],
    tokens: dict[str, list],
) -> Prepared:
    from exporters.gradients import GradModel, closed_form_heads, trace

    names = list(spec.layer_names)
    heads = closed_form_heads(model, names, spec.example, spec.output, spec.pre_activation)
    heads = [None if n in tokens else h for n, h in zip(names, heads, strict=True)]
    closed = [n for n, h in zip(names, heads, strict=True) if h is not None]
    static = not spec.dynamic_spatial
    reference = GradModel(
        model,
        names,
        spec.output,
        heads,
        static,
        pre_activation=spec.pre_activation,
        activation=activation,
        token_layouts=tokens,
    )
    unsaturated = None
    if activation is not None and not spec.pre_activation:
        # the same gradients of the scores before the activation: the scale that says when
        # a probability's gradient is saturated (see check_parity)
        unsaturated = GradModel(
            model,
            names,
            spec.output,
            [None] * len(names),
            static,
            pre_activation=True,
            activation=activation,
            token_layouts=tokens,
        )
    start = time.perf_counter()
    try:
        module = trace(reference, spec.example, spec.target_input)
    except NotImplementedError as e:
        raise UnsupportedOpError(str(e), "gradient", "no forward form") from e
    notes.append(
        f"gradients traced in {time.perf_counter() - start:.1f}s"
        + (f"; closed form (W/(h·w)) for {', '.join(closed)}" if closed else "")
    )
    with torch.no_grad():
        outputs = tuple(reference(*spec.args))
    return Prepared(spec, module, reference, outputs, activation, unsaturated, closed)


# -- describe, write, check -------------------------------------------------------------------


def describe(prepared: Prepared) -> ExportMetadata:
    """The metadata the file carries: the contract with the backend that runs it."""
    spec = prepared.spec
    logits = prepared.outputs[0]
    return ExportMetadata(
        format=spec.format,
        exporter=spec.exporter,
        layers=list(spec.layer_names),
        output_names=spec.output_names,
        outputs=describe_outputs(spec.layer_names, spec.gradients, prepared.token_layouts),
        input_shape=spec.input_shape,
        dtype=str(spec.example.dtype).replace("torch.", ""),
        num_classes=_num_classes(logits),
        classes=list(spec.classes) if spec.classes is not None else None,
        mean=list(spec.mean) if spec.mean is not None else None,
        std=list(spec.std) if spec.std is not None else None,
        opset=spec.opset,
        dynamic_batch=spec.dynamic_batch,
        dynamic_spatial=spec.dynamic_spatial,
        model=spec.model_spec,
        versions=versions(),
        gradients=spec.gradients,
        input_names=spec.input_names,
        closed_form=prepared.closed,
        token_layouts=prepared.token_layouts,
        activation=prepared.activation,
        pre_activation=spec.pre_activation,
        output=spec.output,
    )


def _num_classes(logits: torch.Tensor) -> int:
    """K of ``[B, K]`` logits, of ``[B, K, 1, 1]``, and of class maps ``[B, K, H, W]``."""
    from xcam.core.targets import is_class_maps

    if is_class_maps(logits):
        return int(logits.shape[1])
    return int(logits.reshape(logits.shape[0], -1).shape[1])


def _write_onnx(module: nn.Module, spec: ExportSpec, meta: ExportMetadata, path: Path):
    from exporters.onnx import export_onnx

    return export_onnx(
        module,
        spec.args,
        path,
        spec.output_names,
        spec.dynamic_shapes(),
        spec.opset,
        meta,
        spec.input_names,
    )


def _write_torchscript(module: nn.Module, spec: ExportSpec, meta: ExportMetadata, path: Path):
    from exporters.torchscript import export_torchscript

    notes = ["TorchScript traces are shape-polymorphic where the model is"]
    return (notes if spec.dynamic_spatial else []) + export_torchscript(
        module, spec.args, path, meta, not spec.dynamic_spatial
    )


def _write_pt2(module: nn.Module, spec: ExportSpec, meta: ExportMetadata, path: Path):
    from exporters.pt2 import export_pt2

    return export_pt2(module, spec.args, path, spec.dynamic_shapes(), meta, spec.aoti)


# format -> writer(module, spec, metadata, path) -> notes; each writer may record the exact
# exporter it used in the metadata
WRITERS: dict[str, Callable[[nn.Module, ExportSpec, ExportMetadata, Path], list[str]]] = {
    "onnx": _write_onnx,
    "torchscript": _write_torchscript,
    "pt2": _write_pt2,
}


def write(prepared: Prepared, meta: ExportMetadata, target: Path, notes: list[str]) -> ExportReport:
    """Write ``target`` with the format's writer; the report of what was written."""
    spec = prepared.spec
    start = time.perf_counter()
    notes += WRITERS[spec.format](prepared.module, spec, meta, target)
    elapsed = time.perf_counter() - start
    return ExportReport(
        path=spec.path,
        format=spec.format,
        outputs=spec.output_shapes(prepared.outputs),
        file_bytes=target.stat().st_size,
        export_seconds=elapsed,
        metadata=meta,
        notes=notes,
    )


def check(prepared: Prepared, target: Path, report: ExportReport) -> None:
    """Load the file just written and compare it with eager PyTorch (see
    :func:`exporters.parity.check_parity`); the errors and the time go in ``report``."""
    from exporters.parity import check_parity
    from xcam.backends import load

    spec = prepared.spec
    start = time.perf_counter()
    backend = load(target, device=str(spec.example.device), trust_code=True)
    report.max_errors = check_parity(
        backend,
        prepared.reference,
        spec.example,
        batches=spec.parity_batches,
        sizes=spec.parity_sizes,
        tolerance=spec.tolerance,
        unsaturated=prepared.unsaturated,
        notes=report.notes,
    )
    report.check_seconds = time.perf_counter() - start
