"""TorchScript by tracing the hook-free forward. TorchScript is deprecated upstream; this
path is kept working and its deprecation warnings are silenced here, and only here."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from exporters.errors import ExportError
from exporters.metadata import METADATA_KEY, ExportMetadata


def export_torchscript(
    module: torch.nn.Module, example: torch.Tensor, path: Path, metadata: ExportMetadata
) -> list[str]:
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, example, check_trace=False, strict=False)
            torch.jit.save(
                traced, str(path), _extra_files={f"{METADATA_KEY}.json": metadata.to_json()}
            )
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"TorchScript tracing failed: {first}") from e
    return ["TorchScript is deprecated upstream; prefer onnx or pt2 for new deployments"]
