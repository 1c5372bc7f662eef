"""xcam: class activation maps for PyTorch CNNs, from eager PyTorch and exported models.

``import xcam`` is cheap: torch, numpy, PIL and friends load on first use of a name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from xcam.core.version import __version__

# public name -> module that defines it
_LAZY = {
    "CamModel": "xcam.core.cammodel",
    "CamResult": "xcam.core.result",
    "Attribution": "xcam.core.result",
    "LayerNotFoundError": "xcam.core.errors",
    "resolve_layers": "xcam.core.layers",
    "candidate_layers": "xcam.core.layers",
    "TargetError": "xcam.core.errors",
    "RegionTarget": "xcam.core.targets",
    "BoxTarget": "xcam.core.targets",
    "InputError": "xcam.core.errors",
    "LayerTypeError": "xcam.core.errors",
    "HeadError": "xcam.core.errors",
    "XCamError": "xcam.core.errors",
    "get_method": "xcam.methods.registry",
    "list_methods": "xcam.methods.registry",
    "register_method": "xcam.methods.registry",
    "BaseCAM": "xcam.methods.base",
    "CAM": "xcam.methods.cam",
    "GradCAM": "xcam.methods.gradcam",
    "GradCAMPlusPlus": "xcam.methods.gradcampp",
    "XGradCAM": "xcam.methods.xgradcam",
    "HiResCAM": "xcam.methods.hirescam",
    "LayerCAM": "xcam.methods.layercam",
    "EigenCAM": "xcam.methods.eigencam",
    "EigenGradCAM": "xcam.methods.eigengradcam",
    "ScoreCAM": "xcam.methods.scorecam",
    "AblationCAM": "xcam.methods.ablationcam",
    "ReciproCAM": "xcam.methods.reciprocam",
    "FullGrad": "xcam.attributions.fullgrad",
    "GuidedBackprop": "xcam.attributions.guided",
    "GuidedGradCAM": "xcam.attributions.guided",
    "load_model": "xcam.models",
    "explain_dataset": "xcam.pipeline.dataset",
    "load": "xcam.backends",
    "Backend": "xcam.backends",
}

__all__ = [
    "CAM",
    "AblationCAM",
    "Attribution",
    "Backend",
    "BaseCAM",
    "BoxTarget",
    "CamModel",
    "CamResult",
    "EigenCAM",
    "EigenGradCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HeadError",
    "HiResCAM",
    "InputError",
    "LayerCAM",
    "LayerNotFoundError",
    "LayerTypeError",
    "ReciproCAM",
    "RegionTarget",
    "ScoreCAM",
    "TargetError",
    "XCamError",
    "XGradCAM",
    "__version__",
    "candidate_layers",
    "explain_dataset",
    "get_method",
    "list_methods",
    "load",
    "load_model",
    "register_method",
    "resolve_layers",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from xcam.attributions.fullgrad import FullGrad
    from xcam.attributions.guided import GuidedBackprop, GuidedGradCAM
    from xcam.backends import Backend, load
    from xcam.core.cammodel import CamModel
    from xcam.core.errors import (
        HeadError,
        InputError,
        LayerNotFoundError,
        LayerTypeError,
        TargetError,
        XCamError,
    )
    from xcam.core.layers import candidate_layers, resolve_layers
    from xcam.core.result import Attribution, CamResult
    from xcam.core.targets import BoxTarget, RegionTarget
    from xcam.methods.ablationcam import AblationCAM
    from xcam.methods.base import BaseCAM
    from xcam.methods.cam import CAM
    from xcam.methods.eigencam import EigenCAM
    from xcam.methods.eigengradcam import EigenGradCAM
    from xcam.methods.gradcam import GradCAM
    from xcam.methods.gradcampp import GradCAMPlusPlus
    from xcam.methods.hirescam import HiResCAM
    from xcam.methods.layercam import LayerCAM
    from xcam.methods.reciprocam import ReciproCAM
    from xcam.methods.registry import get_method, list_methods, register_method
    from xcam.methods.scorecam import ScoreCAM
    from xcam.methods.xgradcam import XGradCAM
    from xcam.models import load_model
    from xcam.pipeline.dataset import explain_dataset


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xcam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
