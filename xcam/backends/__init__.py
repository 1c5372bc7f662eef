"""Runtimes for exported models: ONNX Runtime, TorchScript, ``torch.export`` (.pt2).

``xcam.load(path, device)`` picks the backend from the file and returns it.
"""

from __future__ import annotations

from pathlib import Path

from xcam.backends.base import Backend
from xcam.core.artifact import BACKEND_FORMAT, FORMATS, format_of, untrusted_message
from xcam.core.errors import ModelSpecError, UntrustedFileError, XCamError

BACKENDS = ("eager", *BACKEND_FORMAT)


def detect_format(path: Path) -> str:
    found = format_of(path)
    if found is None:
        known = ", ".join(f"{s} ({f.name})" for f in FORMATS.values() for s in f.suffixes)
        raise ModelSpecError(f"can't tell the format of {path.name}: use one of {known}")
    return found.name


def load(path: str | Path, device: str = "cpu", trust_code: bool = False, **options) -> Backend:
    """A backend for an exported file: ONNX (``options``: ``strict``, ``threads``, ``spin``),
    TorchScript, or .pt2.

    TorchScript and ``.pt2`` files run code when they load (see
    :mod:`xcam.core.artifact`): they are refused with an :class:`UntrustedFileError`
    unless ``trust_code=True``. ONNX files carry no code and always load."""
    path = Path(path)
    if not path.is_file():
        raise ModelSpecError(f"{str(path)!r}: no such file")
    fmt = detect_format(path)
    if FORMATS[fmt].carries_code and not trust_code:
        raise UntrustedFileError(untrusted_message(path, FORMATS[fmt]))
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
        from xcam.core.errors import first_line

        raise ModelSpecError(f"{path.name} can't be read as {fmt}: {first_line(e)}") from e


__all__ = ["BACKENDS", "Backend", "load"]
