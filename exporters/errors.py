"""Typed export errors: each names what went wrong and what to do."""

from __future__ import annotations

from xcam.errors import XCamError


class ExportError(XCamError):
    """The model could not be exported."""


class UnsupportedOpError(ExportError):
    """An operator has no translation in the target format."""

    def __init__(self, op: str, fmt: str, detail: str = ""):
        self.op = op
        super().__init__(
            f"{fmt} export: operator {op} has no {fmt} translation. Remedy: express it with "
            "standard torch ops in the model, or use --format torchscript or pt2, which run "
            "any op torch runs" + (f" ({detail})" if detail else "")
        )


class ParityError(ExportError):
    """The exported artifact's outputs differ from eager PyTorch beyond the tolerance."""

    def __init__(self, message: str, errors: dict[str, dict[str, float]]):
        self.errors = errors
        super().__init__(message)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name if the message is empty):
    exporters' messages run to pages, the headline is what a user reads."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
