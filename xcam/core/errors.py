"""Errors raised by xcam. Each one names the problem in words a user can act on."""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path


class XCamError(ValueError):
    """Base class of xcam's own errors (a ``ValueError``: the input was wrong)."""


class LayerNotFoundError(XCamError, KeyError):
    """A layer reference names no module of the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TargetError(XCamError):
    """A target does not fit the model's output."""


class InputError(XCamError):
    """An input tensor or image is not something the model can take."""


class HeadError(XCamError):
    """The model's head does not have the form a method needs (e.g. CAM's pooled-linear head)."""


class ModelSpecError(XCamError):
    """A model spec (``demo``, ``torchvision:NAME``, ``pkg.mod:factory``) can't be loaded."""


class LayerTypeError(XCamError):
    """A layer exists but is not of the kind asked for (e.g. kernels of a non-Conv2d layer)."""


class UntrustedFileError(ModelSpecError):
    """A file whose format runs code at load (TorchScript, ``.pt2``) was not trusted."""


class OutputError(XCamError):
    """An output folder or file can't be used: locked by another run, or would be clobbered."""


class NumericalError(XCamError, FloatingPointError):
    """A computation overflowed: non-finite logits, activations, gradients or maps."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name if the message is empty),
    without terminal colour codes: exporters' messages run to pages, the headline is what a
    user reads."""
    text = _ANSI.sub("", str(error)).strip()
    return (text.splitlines() or [type(error).__name__])[0]


# xcam's own folders: a warning about the caller's call names the first line outside them
_OWN = tuple(
    str(folder) + os.sep
    for folder in (
        Path(__file__).resolve().parents[1],
        Path(__file__).resolve().parents[2] / "exporters",
    )
)


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside xcam: the user's line that
    built or called the explainer, however many of xcam's own calls lie in between."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_OWN):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
