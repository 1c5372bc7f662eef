"""Typed export errors: each names what went wrong and what to do."""

from __future__ import annotations

from xcam.core.errors import XCamError, first_line


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


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception behind ``error`` (``raise … from`` chains, then implicit
    ones): wrappers such as torch.onnx's "step 1/3" say where, the cause says why."""
    seen = {id(error)}
    while (nxt := error.__cause__ or error.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        error = nxt
    return error


def explain_failure(error: BaseException) -> str:
    """The root cause's first line, with a remedy where the cause is a known one."""
    cause = root_cause(error)
    line = first_line(cause)
    if "DataDependent" in type(cause).__name__ or "data-dependent" in line:
        line += (
            " (the model branches on the values of a tensor, which no export can record: "
            "rewrite the branch with torch.where)"
        )
    return line
