"""TorchScript archives (``torch.jit``; deprecated upstream, kept working and isolated)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from xcam.backends.base import Backend
from xcam.core.artifact import METADATA_FILE, read_metadata
from xcam.core.errors import XCamError

EXTRA_FILE = METADATA_FILE  # where the metadata JSON is stored


class TorchScriptBackend(Backend):
    format = "torchscript"

    def __init__(self, path: str | Path, device: str = "cpu"):
        path = Path(path)
        extra = {EXTRA_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated upstream
            self.module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        if not extra[EXTRA_FILE]:
            raise XCamError(f"{path.name} was not exported by xcam (no {EXTRA_FILE} inside)")
        self.module.eval()
        super().__init__(path, read_metadata(path.name, extra[EXTRA_FILE]), device)

    def _run(self, x: torch.Tensor, target: torch.Tensor | None) -> list[torch.Tensor]:
        x = x.to(self.device, self.exported_dtype)  # a half-precision export takes float16
        args = (x,) if target is None else (x, target.to(self.device))
        with torch.no_grad():
            return list(self.module(*args))
