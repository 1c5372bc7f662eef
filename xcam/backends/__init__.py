"""Runtimes for exported models: ONNX Runtime, TorchScript, ``torch.export`` (.pt2).

``xcam.load(path, device)`` picks the backend from the file and returns it.
"""

from __future__ import annotations

from pathlib import Path

from xcam.backends.base import Backend
from xcam.errors import ModelSpecError, XCamError

BACKENDS = ("eager", "torchscript", "onnxruntime", "pt2")
FORMAT_OF_BACKEND = {"torchscript": "torchscript", "onnxruntime": "onnx", "pt2": "pt2"}
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "pt2": ".pt2"}


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".pt2":
        return "pt2"
    if suffix in (".ts", ".torchscript", ".jit", ".pt"):
        return "torchscript"
    raise ModelSpecError(
        f"can't tell the format of {path.name}: use .onnx, .pt2, or .ts for TorchScript"
    )


def load(path: str | Path, device: str = "cpu", **options) -> Backend:
    """A backend for an exported file: ONNX (``options``: ``strict``, ``threads``, ``spin``),
    TorchScript, or .pt2."""
    path = Path(path)
    if not path.is_file():
        raise ModelSpecError(f"{str(path)!r}: no such file")
    fmt = detect_format(path)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available() and fmt != "onnx":
            raise ModelSpecError(f"device {device!r} was asked for but CUDA is not available")
    try:
        if fmt == "onnx":
            from xcam.backends.onnxruntime import OnnxRuntimeBackend

            return OnnxRuntimeBackend(path, device, **options)
        if fmt == "torchscript":
            from xcam.backends.torchscript import TorchScriptBackend

            return TorchScriptBackend(path, device)
        from xcam.backends.pt2 import Pt2Backend

        return Pt2Backend(path, device)
    except XCamError:
        raise
    except Exception as e:  # a damaged or foreign file: the runtime's own error, in one line
        from exporters.errors import first_line

        raise ModelSpecError(f"{path.name} can't be read as {fmt}: {first_line(e)}") from e


__all__ = ["BACKENDS", "Backend", "load"]
