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
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    metadata: ExportMetadata,
    static_spatial: bool = True,
) -> list[str]:
    notes = []
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
    try:
        refuse_data_branches(caught, "TorchScript tracing")
    except ExportError as refused:
        # torch.jit.trace sees a branch on a size (a transformer's padding, its assertions)
        # as one on a tensor; make_fx tells them apart: it records a size branch for the
        # fixed sizes and can't trace a branch on values at all
        traced = _scripted_aten_graph(module, args, static_spatial, refused)
        metadata.exporter = "torch.jit.script (of the make_fx graph)"
        notes.append(
            "traced by make_fx and scripted: the model branches on sizes, which "
            "torch.jit.trace can't tell from branches on values"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.save is deprecated upstream
            extra = {METADATA_FILE: metadata.to_json()}
            torch.jit.save(traced, str(path), _extra_files=extra)
    except Exception as e:
        raise ExportError(f"TorchScript save failed: {first_line(e)}") from e
    return [*notes, "TorchScript is deprecated upstream; prefer onnx or pt2 for new deployments"]


def _scripted_aten_graph(
    module: torch.nn.Module, args: tuple, static_spatial: bool, refused: ExportError
) -> torch.jit.ScriptModule:
    """``module`` as a make_fx aten graph, scripted; ``refused`` where the model branches on
    tensor values indeed (or the graph can't be scripted)."""
    from exporters.gradients import aten_graph

    try:
        with torch.no_grad():
            gm = aten_graph(module, args, static_spatial)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.script(scriptable(gm))
    except Exception as e:
        raise refused from e


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
