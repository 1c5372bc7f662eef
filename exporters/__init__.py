"""Exporters: a model with its target-layer activations as named graph outputs, written as
ONNX, TorchScript or a ``torch.export`` package, with metadata and a parity check.

Not implemented in this version: :func:`export` says so. ``xcam.CamModel`` is the module
these exporters will export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FORMATS = ("onnx", "torchscript", "pt2")


def export(
    model: Any,
    layers: Any,
    example: Any,
    path: str | Path,
    format: str = "onnx",
    gradients: bool = False,
    **options: Any,
) -> Any:
    """Export ``CamModel(model, layers)`` to ``path`` in ``format`` (not implemented yet)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; one of {', '.join(FORMATS)}")
    raise NotImplementedError(f"exporting to {format} is not implemented yet in this version")
