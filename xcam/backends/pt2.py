"""``torch.export`` packages: an AOTInductor-compiled package, or a saved ExportedProgram."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from xcam.backends.base import Backend
from xcam.core.artifact import METADATA_FILE, METADATA_KEY, read_metadata
from xcam.core.errors import XCamError

EXTRA_FILE = METADATA_FILE  # where the metadata JSON is stored


def is_aoti_package(path: str | Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        return any("/aotinductor/" in n for n in zf.namelist())


class Pt2Backend(Backend):
    format = "pt2"

    def __init__(self, path: str | Path, device: str = "cpu"):
        path = Path(path)
        if not zipfile.is_zipfile(path):
            raise XCamError(f"{path.name} is not a .pt2 package (not a zip archive)")
        self.aoti = is_aoti_package(path)
        if self.aoti:
            self.runner = torch._inductor.aoti_load_package(str(path))
            text = self.runner.get_metadata().get(METADATA_KEY, "")
        else:
            extra = {EXTRA_FILE: ""}
            program = torch.export.load(str(path), extra_files=extra)
            self.runner = program.module().to(device)
            text = extra[EXTRA_FILE]
        if not text:
            raise XCamError(f"{path.name} was not exported by xcam (no '{METADATA_KEY}' metadata)")
        super().__init__(path, read_metadata(path.name, text), device)
        if self.aoti:
            key = self.runner.get_metadata().get("AOTI_DEVICE_KEY", "cpu")
            if key != self.device.type:
                raise XCamError(
                    f"{path.name} was compiled by AOTInductor for {key}; load it with "
                    f"device={key!r} or re-export on {self.device.type}"
                )

    def _run(self, x: torch.Tensor, target: torch.Tensor | None) -> list[torch.Tensor]:
        x = x.to(self.device, self.exported_dtype)  # a half-precision export takes float16
        args = (x,) if target is None else (x, target.to(self.device))
        with torch.no_grad():
            return list(self.runner(*args))
