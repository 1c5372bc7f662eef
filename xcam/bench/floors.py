"""The floor on each backend: plain inference, ``x -> logits``, of the model alone."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from xcam.core.artifact import LOGITS, ExportMetadata, describe_outputs
from xcam.core.tracing import TRACE_LOCK

Floor = Callable[[torch.Tensor], object]


def ort_session(path: Path, threads: int | None, device: str = "cpu"):
    """A session made as xcam's ONNX Runtime backend makes it (same threads, no spinning);
    on CUDA's absence it runs on the CPU, as ONNX Runtime does, with no error."""
    from xcam.core.runtime import device_providers, open_session

    return open_session(path, providers=device_providers(device), threads=threads)


def export_plain(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """The model alone, logits only, written by the exporters' ONNX writer (torch's dynamo
    exporter, as for xcam's own files) with a dynamic batch."""
    from exporters.onnx import export_onnx

    meta = ExportMetadata(
        format="onnx",
        exporter="torch.onnx.export(dynamo=True)",
        layers=[],
        output_names=[LOGITS],
        outputs=describe_outputs([]),
        input_shape=[None, *(int(s) for s in example.shape[1:])],
        dtype=str(example.dtype).replace("torch.", ""),
    )
    batch = torch.export.Dim("batch", min=1, max=1024)
    with TRACE_LOCK:
        export_onnx(model, (example,), path, [LOGITS], ({0: batch},), None, meta, ["input"])
    return path


def _eager_floor(model: nn.Module, example: torch.Tensor, tmp: Path, threads) -> Floor:
    def eager(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return model(x)

    return eager


def _torchscript_floor(model: nn.Module, example: torch.Tensor, tmp: Path, threads) -> Floor:
    with TRACE_LOCK, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.freeze(torch.jit.trace(model, example))

    def scripted(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return traced(x)

    return scripted


def _pt2_floor(model: nn.Module, example: torch.Tensor, tmp: Path, threads) -> Floor:
    batch = torch.export.Dim("batch", min=1, max=1024)
    with TRACE_LOCK:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    module = program.module()

    def exported(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return module(x)

    return exported


def _onnx_floor(model: nn.Module, example: torch.Tensor, tmp: Path, threads) -> Floor:
    device = example.device.type
    session = ort_session(export_plain(model, example, tmp / "plain.onnx"), threads, device)
    if device == "cuda":
        return lambda x: session.run([LOGITS], {"input": x.cpu().numpy()})
    return lambda x: session.run([LOGITS], {"input": x.numpy()})


_FLOORS = {"eager": _eager_floor, "torchscript": _torchscript_floor, "pt2": _pt2_floor}


def plain_floor(
    backend: str, model: nn.Module, example: torch.Tensor, tmp: Path, threads: int | None
) -> Floor:
    """``x -> logits`` for plain inference on ``backend`` (``onnxruntime`` and ``ingraph``:
    the plain model on ONNX Runtime); ``tmp`` takes any file it writes."""
    return _FLOORS.get(backend, _onnx_floor)(model, example, tmp, threads)
