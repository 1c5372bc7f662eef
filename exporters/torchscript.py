"""TorchScript by tracing the hook-free forward. TorchScript is deprecated upstream; this
path is kept working and its deprecation warnings are silenced here, and only here."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from exporters.errors import ExportError
from xcam.core.artifact import METADATA_FILE, ExportMetadata
from xcam.core.errors import first_line


def scriptable(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """An aten graph (from make_fx) rewritten so that ``torch.jit.script`` accepts it: op
    overloads become their packets and symbolic sizes ``x.size(d)``, which keeps the batch
    dimension dynamic (a trace would bake the example's sizes into every reshape)."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            if node.target is torch.ops.aten.sym_size.int:
                node.op, node.target = "call_method", "size"
            elif node.target is torch.ops.aten.sym_numel.default:
                node.op, node.target = "call_method", "numel"
            else:
                node.target = node.target.overloadpacket
        elif node.op == "call_function" and node.target in (torch.sym_max, torch.sym_min):
            node.target = max if node.target is torch.sym_max else min
    gm.recompile()
    return gm


def export_torchscript(
    module: torch.nn.Module, args: tuple, path: Path, metadata: ExportMetadata
) -> list[str]:
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            if isinstance(module, torch.fx.GraphModule):  # the gradient graph
                traced = torch.jit.script(scriptable(module))
                metadata.exporter = "torch.jit.script (of the make_fx gradient graph)"
            else:
                traced = torch.jit.trace(module, args, check_trace=False, strict=False)
    except Exception as e:
        first = first_line(e)
        raise ExportError(f"TorchScript tracing failed: {first}") from e
    refuse_data_branches(caught, "TorchScript tracing")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.save is deprecated upstream
            extra = {METADATA_FILE: metadata.to_json()}
            torch.jit.save(traced, str(path), _extra_files=extra)
    except Exception as e:
        raise ExportError(f"TorchScript save failed: {first_line(e)}") from e
    return ["TorchScript is deprecated upstream; prefer onnx or pt2 for new deployments"]


def refuse_data_branches(caught: list[warnings.WarningMessage], what: str) -> None:
    """A trace that turned a tensor into a Python bool kept one branch of an ``if`` on tensor
    data: it would be silently wrong on other inputs. An :class:`ExportError` then."""
    tracer = torch.jit.TracerWarning
    found = (
        w for w in caught if issubclass(w.category, tracer) and "Python boolean" in str(w.message)
    )
    branch = next(found, None)
    if branch is not None:
        where = f" ({Path(branch.filename).name}:{branch.lineno})" if branch.filename else ""
        raise ExportError(
            f"{what}: the model branches on the values of a tensor{where}; a trace records "
            "only the branch this example took, so the file would be silently wrong on other "
            "inputs. Use --format onnx (opset 18+) or pt2, or rewrite the branch with torch.where"
        )
