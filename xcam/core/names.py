"""How a method's name is matched (torch-free: the CLI picks the in-graph path with it
before anything imports torch): case, '-', '_' and spaces are ignored."""

from __future__ import annotations


def method_key(name: str) -> str:
    """``"Grad-CAM++"`` and ``"gradcam++"`` alike: ``"gradcam++"``."""
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")
