"""An export made on first use: ``backend="onnxruntime"`` (or ``"torchscript"``, ``"pt2"``)
exports the eager model for each input shape it meets, checks it against eager PyTorch
(:mod:`exporters.parity`), caches it, and explains through it: gradients from the eager
tail, or from the export's own graph with ``export_options={"gradients": True}``."""

from __future__ import annotations

import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

import torch

from xcam.backends import Backend, load
from xcam.core.artifact import FORMATS
from xcam.sources.backend import BackendSource
from xcam.sources.eager import EagerModel


class AutoExport:
    """Exports of ``eager``'s model in ``format``, one per input shape, device and layers."""

    def __init__(self, eager: EagerModel, format: str, options: dict[str, Any], method: str):
        self.eager = eager
        self.format = format
        self.options = options  # for exporters.export, output and pre_activation included
        self.method = method
        self._exports: dict[tuple, Backend] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._lock = threading.Lock()

    def for_input(self, x: torch.Tensor, names: list[str]) -> BackendSource:
        """The source for ``x``'s shape: its export, made and checked on first use."""
        key = (tuple(x.shape[1:]), str(x.device), tuple(names))
        with self._lock:
            if key not in self._exports:
                self._exports[key] = self._export(x, names)
            output = self.options.get("output")
            return BackendSource(self._exports[key], self.eager, self.method, output)

    def _export(self, x: torch.Tensor, names: list[str]) -> Backend:
        import exporters

        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="xcam-")
            # removed with the explainer (or by close()), never left to the interpreter's
            # "Implicitly cleaning up" ResourceWarning
            weakref.finalize(self, self._tmp.cleanup)
        suffix = FORMATS[self.format].suffix
        path = Path(self._tmp.name) / f"model{len(self._exports)}{suffix}"
        exporters.export(self.eager.model, names, x, path, format=self.format, **self.options)
        # xcam's own export of the caller's model, in a private folder: trusted
        return load(path, device=str(x.device), trust_code=True)

    def close(self) -> None:
        """Remove the exported files; the next call exports again."""
        with self._lock:
            self._exports.clear()
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
