"""The versions an export records (xcam, torch and the ONNX stack)."""

from __future__ import annotations


def versions() -> dict[str, str]:
    import torch

    from xcam.core.version import __version__

    found = {"xcam": __version__, "torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "?")
        except ImportError:
            pass
    return found
