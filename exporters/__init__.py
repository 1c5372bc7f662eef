"""Exporters: a model with its target-layer activations as named graph outputs, written as
ONNX, TorchScript or a ``torch.export`` package, with metadata and a parity check.

    report = exporters.export(model, ["layer4"], torch.randn(2, 3, 224, 224), "m.onnx")
    backend = xcam.load("m.onnx")          # run it: logits and activations by name

What an export produces is declared as data (:class:`exporters.spec.ExportSpec`), and
produced by the steps of :mod:`exporters.steps`: prepare the model, describe the file,
write it with the format's writer, check parity, move it into place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from exporters import steps
from exporters.errors import ExportError, ParityError, UnsupportedOpError
from exporters.report import ExportReport
from exporters.spec import build_spec
from xcam.core.artifact import FORMATS as _FORMAT_TABLE
from xcam.core.artifact import ExportMetadata

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
    # the first statement, so locals() holds exactly the arguments: build_spec takes them all
    spec = build_spec(**locals())
    return steps.run(model, spec)
