"""The peer libraries' arms: pytorch-grad-cam, torchcam and captum on the eager model."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

import torch
from torch import nn

from xcam.core.tokens import Layout

PeerArm = Callable[[torch.Tensor, torch.Tensor], object]

# xcam's method name -> the peer's class
_GRAD_CAM_LIB = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "fullgrad": "FullGrad",
}
_TORCHCAM = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMpp",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
}
_CAPTUM = {"gradcam": "LayerGradCam", "guidedbackprop": "GuidedBackprop"}
# the module each peer is imported as
_MODULES = {
    "pytorch-grad-cam": "pytorch_grad_cam",
    "torchcam": "torchcam.methods",
    "captum": "captum.attr",
}


def _missing(library: str) -> str | None:
    """Why ``library`` can't run (it is not installed), or None when it can."""
    if library == "pytorch-grad-cam":
        os.environ.setdefault("TQDM_DISABLE", "1")  # it prints a bar per sample
    try:
        importlib.import_module(_MODULES[library])
        if library == "pytorch-grad-cam":
            importlib.import_module("pytorch_grad_cam.utils.model_targets")
    except ImportError:
        return f"{library} is not installed (pip install 'xcam-deploy[bench]')"
    return None


def _grad_cam_lib_arm(
    method: str, model: nn.Module, layer: str, module: nn.Module, layout: Layout | None = None
) -> PeerArm:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, _GRAD_CAM_LIB[method])

    def grad_cam_lib(x: torch.Tensor, classes: torch.Tensor) -> object:
        targets = [ClassifierOutputTarget(int(c)) for c in classes]
        # a token layer: the peer's documented reshape_transform, here the layer's layout
        reshape = None if layout is None else lambda t: layout.to_map(t, x.shape[-2:])
        with cls(model=model, target_layers=[module], reshape_transform=reshape) as cam:
            return cam(input_tensor=x, targets=targets)

    return grad_cam_lib


def _torchcam_arm(
    method: str, model: nn.Module, layer: str, module: nn.Module, layout: Layout | None = None
) -> PeerArm:
    import torchcam.methods

    tcls = getattr(torchcam.methods, _TORCHCAM[method])

    def torchcam_arm(x: torch.Tensor, classes: torch.Tensor) -> object:
        extractor = tcls(model, target_layer=layer, input_shape=tuple(x.shape[1:]))
        try:
            with torch.enable_grad():
                scores = model(x)
                return extractor(class_idx=classes.tolist(), scores=scores)
        finally:
            extractor.remove_hooks()

    return torchcam_arm


def _captum_arm(
    method: str, model: nn.Module, layer: str, module: nn.Module, layout: Layout | None = None
) -> PeerArm:
    import captum.attr

    if method == "gradcam":
        gc = captum.attr.LayerGradCam(model, module)
        return lambda x, classes: gc.attribute(x, target=classes.tolist())
    gb = captum.attr.GuidedBackprop(model)
    return lambda x, classes: gb.attribute(x, target=classes.tolist())


# per peer: the methods it has, and how to make an arm of one
_Maker = Callable[..., PeerArm]
_PEERS: dict[str, tuple[dict[str, str], _Maker]] = {
    "pytorch-grad-cam": (_GRAD_CAM_LIB, _grad_cam_lib_arm),
    "torchcam": (_TORCHCAM, _torchcam_arm),
    "captum": (_CAPTUM, _captum_arm),
}


def peer_arm(
    library: str, method: str, model: nn.Module, layer: str, layout: Layout | None = None
) -> PeerArm | str | None:
    """``(x, classes) -> maps`` from a peer library, a string saying why there is none (it
    is not installed, or can't read the layer's tokens), or None when the peer has no such
    method. ``layout``: how the layer holds its positions, where it outputs tokens (only
    pytorch-grad-cam takes a reshape for them).

    Each call constructs the peer's object and removes its hooks at the end, so the hooks
    never slow down the other arms that share the model."""
    missing = _missing(library)
    if missing is not None:
        return missing
    module = model.get_submodule(layer)
    names, make = _PEERS[library]
    if method not in names:
        return None
    if layout is not None and not layout.is_map:
        if library != "pytorch-grad-cam":
            return f"{library} takes no reshape for token layers: not timed on {layer}"
        return make(method, model, layer, module, layout)
    return make(method, model, layer, module)
