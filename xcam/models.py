"""Model specs: ``demo``, ``torchvision:NAME`` (+ a state-dict file), ``package.module:factory``.

A spec resolves to a :class:`ModelInfo`: the module plus what is needed to feed it images
(input size, normalisation) and to name its outputs (class names).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from xcam.core.artifact import format_of
from xcam.core.files import sha256_file
from xcam.errors import ModelSpecError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelInfo:
    """A model ready to explain, with how its inputs are made."""

    model: nn.Module  # or a loaded backend (xcam.Backend) for an exported file
    spec: str
    input_size: tuple[int, int] = (224, 224)  # (H, W)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    classes: list[str] | None = None
    default_layer: str | None = None
    notes: list[str] = field(default_factory=list)
    # SHA-256 of the file the weights came from (a state dict, an exported file), if any
    fingerprint: str | None = None

    def class_name(self, k: int) -> str:
        if self.classes is not None and 0 <= k < len(self.classes):
            return self.classes[k]
        return str(k)


def _load_state_dict(model: nn.Module, weights: str | Path, trust: bool = False) -> None:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, so a
    malicious pickle cannot run. One that needs code is refused unless ``trust``."""
    path = Path(weights)
    if not path.is_file():
        raise ModelSpecError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights only load failed" not in str(e).lower():
            raise ModelSpecError(
                f"could not read {str(path)!r} as a state dict (loaded with weights_only=True): {e}"
            ) from None
        if not trust:
            raise ModelSpecError(
                f"{str(path)!r} needs code to load (it pickles objects that are not tensors or "
                "plain containers), and unpickling it would run that code. Save a plain state "
                "dict (torch.save(model.state_dict(), path)), or, if you trust the file, pass "
                "trust_weights=True (--trust-weights on the command line)"
            ) from None
        state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelSpecError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[:4]
        raise ModelSpecError(
            f"{str(path)!r} does not fit {type(model).__name__}: " + " ".join(first)
        ) from None


def load_model(
    spec: str | nn.Module,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    *,
    trust_weights: bool = False,
    trust_code: bool = False,
) -> ModelInfo:
    """Resolve a model spec. Without ``weights``, torchvision models get seeded random weights.

    ``weights`` load with ``weights_only=True``; ``trust_weights`` allows a checkpoint that
    needs code to unpickle (it runs that code). An exported file is read by
    :func:`xcam.load`: ``trust_code`` allows the formats that run code at load
    (TorchScript, ``.pt2``). ``fingerprint`` is the SHA-256 of the file the weights came
    from (the state dict, the exported file, the demo's bundled weights)."""
    info = _resolve(spec, weights, device, seed, trust_weights, trust_code)
    if weights is not None:
        info.fingerprint = sha256_file(weights)
    elif isinstance(spec, str) and format_of(spec) is not None:
        info.fingerprint = sha256_file(spec)
    elif spec == "demo":
        from xcam import demo

        info.fingerprint = sha256_file(demo.weights_path())
    else:  # weights made by code (a factory, a seed): the tensors themselves
        info.fingerprint = state_digest(info.model)
    return info


def state_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes, in order)."""
    import hashlib

    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _resolve(spec, weights, device, seed: int, trust_weights: bool, trust_code: bool) -> ModelInfo:
    if isinstance(spec, nn.Module):
        return ModelInfo(spec.to(device), type(spec).__name__)
    if not isinstance(spec, str) or not spec:
        raise ModelSpecError(f"a model spec is a non-empty string, got {spec!r}")
    if spec == "demo":
        from xcam import demo

        model = demo.load_demo_model(device)
        if weights is not None:
            _load_state_dict(model, weights, trust_weights)
        return ModelInfo(
            model, "demo", demo.INPUT_SIZE, demo.MEAN, demo.STD, list(demo.CLASSES), "block3"
        )
    if format_of(spec) is not None:
        if weights is not None:
            raise ModelSpecError(
                f"{spec} is an exported file with its weights inside; --weights is for a model "
                "spec (demo, torchvision:NAME, package.module:factory)"
            )
        return _exported(spec, device, trust_code)
    if spec.startswith("torchvision:"):
        return _torchvision(spec, spec.split(":", 1)[1], weights, device, seed, trust_weights)
    if ":" in spec:
        return _factory(spec, weights, device, trust_weights)
    raise ModelSpecError(
        f"unknown model spec {spec!r}: use 'demo', 'torchvision:NAME', 'package.module:factory' "
        "or an exported file"
    )


def _torchvision(
    spec: str, name: str, weights, device, seed: int, trust_weights: bool
) -> ModelInfo:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=5, cutoff=0.4)
        raise ModelSpecError(
            f"torchvision has no classification model {name!r}; closest: {', '.join(close)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None)
    notes = []
    if weights is None:
        notes.append(f"{name}: random weights (seed {seed}); pass --weights FILE for real ones")
    else:
        _load_state_dict(model, weights, trust_weights)
    return ModelInfo(model.eval().to(device), spec, notes=notes)


def _factory(spec: str, weights, device, trust_weights: bool) -> ModelInfo:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelSpecError(
            f"cannot import {module_name!r} for model spec {spec!r}: {e}"
        ) from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ModelSpecError(f"{module_name!r} has no attribute {attr!r}")
    model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{spec!r} gave a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        _load_state_dict(model, weights, trust_weights)
    return ModelInfo(model.eval().to(device), spec)


def _exported(spec: str, device, trust_code: bool) -> ModelInfo:
    """An exported file: its backend, with preprocessing read from the file's metadata."""
    from xcam.backends import load

    backend = load(spec, device=str(device), trust_code=trust_code)
    meta = backend.metadata
    h, w = meta.input_shape[2:4] if len(meta.input_shape) == 4 else (None, None)
    info = ModelInfo(
        backend,  # type: ignore[arg-type]
        spec,
        input_size=(h or 224, w or 224),
        mean=tuple(meta.mean) if meta.mean else IMAGENET_MEAN,
        std=tuple(meta.std) if meta.std else IMAGENET_STD,
        classes=meta.classes,
        default_layer=None,  # methods use all the file's layers unless given some
    )
    if meta.mean is None:
        info.notes.append(f"{Path(spec).name} records no normalisation: using ImageNet's")
    return info
