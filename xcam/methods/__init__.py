"""The method registry: ``get_method("gradcam")``, ``list_methods()``.

Each method is one small file holding its weighting rule; importing this package
registers the built-in ones.
"""

from __future__ import annotations

from typing import TypeVar

from xcam.core.errors import XCamError
from xcam.methods.base import BaseCAM

M = TypeVar("M", bound=type[BaseCAM])

_REGISTRY: dict[str, type[BaseCAM]] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def register_method(cls: M) -> M:
    """Class decorator: register ``cls`` under ``cls.name``; a taken name is an error."""
    if not cls.name:
        raise XCamError(f"{cls.__name__} has no name to register under")
    key = _key(cls.name)
    if key in _REGISTRY and _REGISTRY[key] is not cls:
        raise XCamError(
            f"a method named {cls.name!r} is already registered ({_REGISTRY[key].__name__})"
        )
    _REGISTRY[key] = cls
    return cls


def get_method(name: str) -> type[BaseCAM]:
    """The method class registered as ``name`` (case, '-' and '_' are ignored)."""
    try:
        return _REGISTRY[_key(name)]
    except KeyError:
        raise XCamError(
            f"unknown method {name!r}; available: {', '.join(list_methods())}"
        ) from None


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(cls.name for cls in _REGISTRY.values())


# built-in methods register themselves on import
from xcam.methods import (  # noqa: E402, F401
    ablationcam,
    cam,
    eigencam,
    eigengradcam,
    fullgrad,
    gradcam,
    gradcampp,
    guided,
    hirescam,
    layercam,
    reciprocam,
    scorecam,
    xgradcam,
)
