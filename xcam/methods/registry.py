"""The method registry, a leaf module of one plain dict: ``name -> class``.

Method files import :func:`register_method` from here (never from a package ``__init__``),
so registering imports nothing above this module. The built-in classes live in two
packages, :mod:`xcam.methods` (class activation maps) and :mod:`xcam.attributions`
(pixel-space methods); :func:`get_method` and :func:`list_methods` import both by name on
first use, as a plugin registry loads its entry points.

Example::

    >>> from xcam.methods.registry import get_method
    >>> get_method("Grad-CAM++").__name__, get_method("gradcam").in_graph
    ('GradCAMPlusPlus', True)
"""

from __future__ import annotations

import importlib
from typing import Any, TypeVar

from xcam.core.errors import XCamError
from xcam.core.names import method_key

BUILTIN_PACKAGES = ("xcam.methods", "xcam.attributions")

C = TypeVar("C", bound=type)

_REGISTRY: dict[str, Any] = {}


def register_method(cls: C) -> C:
    """Class decorator: register ``cls`` under ``cls.name``; a taken name is an error."""
    name = getattr(cls, "name", "")
    if not name:
        raise XCamError(f"{cls.__name__} has no name to register under")
    key = method_key(name)
    if key in _REGISTRY and _REGISTRY[key] is not cls:
        raise XCamError(
            f"a method named {name!r} is already registered ({_REGISTRY[key].__name__})"
        )
    _REGISTRY[key] = cls
    return cls


def _builtins() -> dict[str, Any]:
    for package in BUILTIN_PACKAGES:  # each registers its classes on import
        importlib.import_module(package)
    return _REGISTRY


def get_method(name: str) -> Any:
    """The method class registered as ``name`` (case, '-' and '_' are ignored)."""
    if not isinstance(name, str):
        raise XCamError(f"a method is named by a string, got {name!r} ({type(name).__name__})")
    try:
        return _builtins()[method_key(name)]
    except KeyError:
        raise XCamError(
            f"unknown method {name!r}; available: {', '.join(list_methods())}"
        ) from None


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(cls.name for cls in _builtins().values())
