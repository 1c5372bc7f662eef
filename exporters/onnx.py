"""ONNX through ``torch.onnx.export(dynamo=True)``, one self-contained file where possible."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from exporters.errors import ExportError, UnsupportedOpError, explain_failure
from xcam.core.artifact import METADATA_KEY, ExportMetadata

_OP = re.compile(r"op='([\w.:]+)'|\b(aten(?:::|\.)\w+(?:\.\w+)?)")
# the dynamo exporter writes this opset and above; below it, torch's TorchScript-based one
DYNAMO_MIN_OPSET = 18
# above this the protobuf limit forces weights into a .data sidecar
_SIDE_CAR_BYTES = 1_800_000_000


def export_onnx(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    output_names: list[str],
    dynamic_shapes: tuple | None,
    opset: int | None,
    metadata: ExportMetadata,
    input_names: list[str],
) -> list[str]:
    """Write ``path``; returns notes for the report."""
    notes: list[str] = []
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = n_bytes > _SIDE_CAR_BYTES
    try:
        if opset is not None and opset < DYNAMO_MIN_OPSET:
            notes.append(_export_legacy(module, args, path, output_names, input_names, opset))
            metadata.exporter = "torch.onnx.export(dynamo=False)"
        else:
            kwargs = {} if opset is None else {"opset_version": opset}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    dynamo=True,
                    input_names=input_names,
                    output_names=output_names,
                    dynamic_shapes=dynamic_shapes,
                    external_data=external,
                    verbose=False,
                    **kwargs,
                )
    except Exception as e:
        raise _failure(e) from e
    if external:
        notes.append("weights over 1.8 GB: stored in a .data file beside the .onnx")
    notes.append(_write_metadata(path, metadata, opset))
    return notes


def _failure(error: Exception) -> ExportError:
    """The exporter's error: an :class:`UnsupportedOpError` where it names an operator it
    can't translate, else an :class:`ExportError` with the root cause."""
    text = str(error)
    match = _OP.search(text)
    if match and any(
        phrase in text.lower()
        for phrase in ("not supported", "no decomposition", "translation", "unsupported")
    ):
        op = match.group(1) or match.group(2)
        return UnsupportedOpError(op, "ONNX", type(error).__name__)
    return ExportError(f"ONNX export failed: {explain_failure(error)}")


def _write_metadata(path: Path, metadata: ExportMetadata, opset: int | None) -> str:
    """Record the opset written in ``metadata`` (refusing another than the one asked for)
    and store it in the file's ``metadata_props``; returns the note saying which."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    metadata.opset = next(
        (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None
    )
    if opset is not None and metadata.opset != opset:
        raise ExportError(f"ONNX export wrote opset {metadata.opset}, not the {opset} asked for")
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    onnx.save(model, str(path))
    return f"ONNX opset {metadata.opset}"


def _export_legacy(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    output_names: list[str],
    input_names: list[str],
    opset: int,
) -> str:
    """An opset below 18 through torch's TorchScript-based exporter (deprecated upstream,
    the only one that writes old opsets). It traces, so a branch on tensor values is
    refused as in the TorchScript format. Batch (and input H, W) stay dynamic."""
    from exporters.torchscript import refuse_data_branches

    axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in [*input_names, *output_names]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=axes,
        )
    refuse_data_branches(caught, "ONNX export (opset below 18)")
    return f"opset {opset}: written by torch's TorchScript-based exporter (deprecated upstream)"
