"""``torch.export`` packages: AOTInductor-compiled where a C++ compiler is present,
otherwise (or with ``aoti=False``) the ExportedProgram saved by ``torch.export.save``."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from exporters.errors import ExportError, explain_failure
from xcam.core.artifact import METADATA_FILE, METADATA_KEY, ExportMetadata
from xcam.core.errors import first_line


def compiler_available() -> bool:
    return any(shutil.which(c) for c in ("c++", "g++", "clang++"))


def export_pt2(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    dynamic_shapes: tuple | None,
    metadata: ExportMetadata,
    aoti: bool | None,
) -> list[str]:
    notes: list[str] = []
    try:
        with torch.no_grad():
            program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes)
    except Exception as e:
        raise ExportError(f"torch.export failed: {explain_failure(e)}") from e
    if aoti is None:
        aoti = compiler_available()
        if not aoti:
            notes.append(
                "no C++ compiler found: saved the ExportedProgram, not an AOTInductor "
                "package (install g++ for compiled packages)"
            )
    if aoti:
        if not compiler_available():
            raise ExportError("AOTInductor packaging needs a C++ compiler (g++ or clang++)")
        metadata.exporter = "torch.export + AOTInductor"
        try:
            torch._inductor.aoti_compile_and_package(
                program,
                package_path=str(path),
                inductor_configs={"aot_inductor.metadata": {METADATA_KEY: metadata.to_json()}},
            )
        except Exception as e:
            first = first_line(e)
            raise ExportError(f"AOTInductor compilation failed: {first}") from e
        notes.append(f"AOTInductor package compiled for {args[0].device.type}")
    else:
        metadata.exporter = "torch.export (ExportedProgram)"
        torch.export.save(program, str(path), extra_files={METADATA_FILE: metadata.to_json()})
    return notes
