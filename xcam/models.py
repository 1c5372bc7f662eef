"""Model specs: ``demo``, ``torchvision:NAME`` and ``timm:NAME`` (+ a state-dict file),
``package.module:factory``.

A spec resolves to a :class:`ModelInfo`: the module plus what is needed to feed it images
(input size, normalisation) and to name its outputs (class names).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from xcam.core.artifact import IMAGENET_MEAN, IMAGENET_STD, format_of
from xcam.core.errors import ModelSpecError, first_line
from xcam.core.files import sha256_file

# for a channel ImageNet has no statistic for (grey, alpha, …): the average of its three
EXTRA_MEAN, EXTRA_STD = 0.449, 0.226


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
    # input channels: the first convolution's, or the exported file's input shape
    channels: int = 3
    # input_size, mean and std are xcam's defaults (ImageNet's), not known from the model
    assumed_preprocessing: bool = False

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype inputs are made in: the model's floating parameters' (float16 for a
        ``model.half()``), the exported file's, float32 otherwise."""
        from xcam.backends import Backend
        from xcam.core.layers import floating_dtype

        if isinstance(self.model, Backend):
            return self.model.exported_dtype
        return floating_dtype(self.model) or torch.float32

    def class_name(self, k: int) -> str:
        if self.classes is not None and 0 <= k < len(self.classes):
            return self.classes[k]
        return str(k)


def _load_state_dict(model: nn.Module, weights: str | Path, trust: bool = False) -> list[str]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, so a
    malicious pickle cannot run. One that needs code is refused unless ``trust``. Returns
    notes (a state dict of a ``torch.compile``d model has its ``_orig_mod.`` removed)."""
    path = Path(weights)
    if not path.is_file():
        raise ModelSpecError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        damage = checkpoint_damage(path, e)  # a cut file can look like one that needs code
        if damage is not None:
            raise ModelSpecError(
                f"can't read {str(path)!r} as a state dict: the file is truncated or corrupt "
                f"({damage}); save or download it again"
            ) from None
        if not _checkpoint_format(path):
            raise ModelSpecError(
                f"can't read {str(path)!r} as a state dict: it is not a file torch.save writes "
                "(a zip archive, or a pickle from before PyTorch 1.6)"
            ) from None
        if "weights only load failed" not in str(e).lower():
            raise ModelSpecError(
                f"could not read {str(path)!r} as a state dict (loaded with weights_only=True): "
                + first_line(e)
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
    notes = []
    prefix = "_orig_mod."
    if any(prefix in str(k) for k in state) and not any(prefix in k for k in model.state_dict()):
        state = {str(k).replace(prefix, ""): v for k, v in state.items()}
        notes.append(
            f"{path.name} was saved from a torch.compile'd model: its keys' {prefix!r} removed"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[:4]
        raise ModelSpecError(
            f"{str(path)!r} does not fit {type(model).__name__}: " + " ".join(first)
        ) from None
    return notes


def checkpoint_damage(path: Path, error: BaseException | None = None) -> str | None:
    """Why the file at ``path`` is not a whole ``torch.save`` checkpoint (cut short, or
    corrupt), or None when its structure is sound. Only the container is read: the zip
    directory and checksums, or the pickle opcodes of the old format (never unpickled)."""
    import pickletools
    import zipfile

    with open(path, "rb") as f:
        head = f.read(4)
        if not head:
            return "it is empty"
        if isinstance(error, EOFError) or "unexpected eof" in str(error).lower():
            return "it ends before its data does"
        if head.startswith(b"PK"):  # torch.save's zip format: its directory is at the end
            if not zipfile.is_zipfile(f):
                return "a zip archive without its directory: cut short"
            try:
                with zipfile.ZipFile(f) as archive:
                    bad = archive.testzip()
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                return f"a damaged zip archive: {first_line(e)}"
            return None if bad is None else f"{bad} in it fails its checksum"
        if not head.startswith(b"\x80"):  # no pickle protocol mark: not this format at all
            return None
        f.seek(0)
        try:  # the old format: pickles of the magic number, protocol, system info, the
            for _ in range(5):  # state and its storages' keys, then the storages' bytes
                for _op in pickletools.genops(f):
                    pass
        except ValueError as e:
            if "exhausted" in str(e) or "truncated" in str(e) or "EOF" in str(e):
                return "it ends in the middle of its data: cut short"
            return f"a damaged pickle: {first_line(e)}"
        except Exception as e:  # pickletools reads what it's given; any failure is damage
            return f"a damaged pickle: {first_line(e)}"
    return None


def _checkpoint_format(path: Path) -> bool:
    """The file starts as ``torch.save`` writes: a zip archive or a pickle (protocol 2+)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or head[:1] == b"\x80"


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
    _fit_channels(info)
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


def _fit_channels(info: ModelInfo) -> None:
    """``info.channels`` from the model; default statistics made to fit them."""
    from xcam.backends import Backend

    if isinstance(info.model, Backend):
        shape = info.model.metadata.input_shape
        channels = shape[1] if len(shape) == 4 and shape[1] else None
    else:
        from xcam.core.inputs import first_conv_channels

        channels = first_conv_channels(info.model)
    info.channels = channels or 3
    if info.channels != 3 and (info.mean, info.std) == (IMAGENET_MEAN, IMAGENET_STD):
        keep = 3 if info.channels > 3 else 0  # RGB first, as in RGBA
        info.mean = IMAGENET_MEAN[:keep] + (EXTRA_MEAN,) * (info.channels - keep)
        info.std = IMAGENET_STD[:keep] + (EXTRA_STD,) * (info.channels - keep)


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
        model, notes = _unwrapped(spec, type(spec).__name__)
        name = type(spec).__name__
        return ModelInfo(model.to(device), name, notes=notes, assumed_preprocessing=True)
    if not isinstance(spec, str) or not spec:
        raise ModelSpecError(f"a model spec is a non-empty string, got {spec!r}")
    if spec == "demo":
        from xcam import demo

        model = demo.load_demo_model(device)
        notes = [] if weights is None else _load_state_dict(model, weights, trust_weights)
        return ModelInfo(
            model,
            "demo",
            demo.INPUT_SIZE,
            demo.MEAN,
            demo.STD,
            list(demo.CLASSES),
            "block3",
            notes=notes,
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
    if spec.startswith("timm:"):
        return _timm(spec, spec.split(":", 1)[1], weights, device, seed, trust_weights)
    if ":" in spec:
        return _factory(spec, weights, device, trust_weights)
    raise ModelSpecError(
        f"unknown model spec {spec!r}: use 'demo', 'torchvision:NAME', 'timm:NAME', "
        "'package.module:factory' or an exported file"
    )


def _torchvision(
    spec: str, name: str, weights, device, seed: int, trust_weights: bool
) -> ModelInfo:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    segmentation = torchvision.models.list_models(module=torchvision.models.segmentation)
    make = functools.partial(torchvision.models.get_model, name, weights=None)
    if name in segmentation:  # its backbone would download ImageNet weights by default
        make = functools.partial(make, weights_backbone=None)
    what = "classification or segmentation model"
    model = _seeded("torchvision", what, name, available + segmentation, make, seed, 0.4)
    notes = _weight_notes(model, name, weights, seed, trust_weights)
    if weights is None and name.startswith("vit_"):  # torchvision zeroes the ViT's head
        notes.append(f"{name}'s head is all zeros until real weights load: its maps are blank")
    return ModelInfo(model.eval().to(device), spec, notes=notes, assumed_preprocessing=True)


def _timm(spec: str, name: str, weights, device, seed: int, trust_weights: bool) -> ModelInfo:
    """A timm model with seeded random weights (never downloaded), its input size and
    normalisation from its own configuration; timm is an optional dependency."""
    try:
        import timm
    except ImportError:
        raise ModelSpecError(
            f"{spec} needs timm, which is not installed: pip install timm"
        ) from None
    make = functools.partial(timm.create_model, name, pretrained=False)
    model = _seeded("timm", "model", name, timm.list_models(), make, seed, 0.6)
    notes = _weight_notes(model, name, weights, seed, trust_weights)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    size = tuple(cfg.get("input_size", (3, 224, 224)))[-2:]
    return ModelInfo(
        model.eval().to(device),
        spec,
        (int(size[0]), int(size[1])),
        tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)),
        notes=notes,
    )


def _seeded(
    library: str, what: str, name: str, available: list[str], make, seed: int, cutoff: float
) -> nn.Module:
    """``make()`` with random weights drawn from ``seed`` (the caller's random state kept);
    a name ``available`` lacks is a :class:`ModelSpecError` with the closest ones."""
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=5, cutoff=cutoff)
        hint = f"closest: {', '.join(close)}" if close else f"see {library}'s list of models"
        raise ModelSpecError(f"{library} has no {what} {name!r}; {hint}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _weight_notes(model: nn.Module, name: str, weights, seed: int, trust: bool) -> list[str]:
    """``weights`` loaded into ``model``; what the user is told of the weights."""
    if weights is not None:
        return _load_state_dict(model, weights, trust)
    return [f"{name}: random weights (seed {seed}); pass --weights FILE for real ones"]


def _factory(spec: str, weights, device, trust_weights: bool) -> ModelInfo:
    module_name, _, attr = spec.partition(":")
    if not all(part.isidentifier() for part in [*module_name.split("."), attr]):
        raise ModelSpecError(
            f"malformed model spec {spec!r}: a factory is 'package.module:factory' (a module "
            "Python can import, a colon, a name in it); or use 'demo', 'torchvision:NAME' or "
            "an exported file"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelSpecError(
            f"cannot import {module_name!r} for model spec {spec!r}: {e}"
        ) from None
    except Exception as e:  # the module itself fails as it runs
        raise ModelSpecError(
            f"importing {module_name!r} for model spec {spec!r} failed: "
            f"{type(e).__name__}: {first_line(e)}"
        ) from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ModelSpecError(f"{module_name!r} has no attribute {attr!r}")
    try:
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    except Exception as e:
        raise ModelSpecError(
            f"{spec}: calling {attr}() failed: {type(e).__name__}: {first_line(e)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{spec!r} gave a {type(model).__name__}, not a torch.nn.Module")
    model, notes = _unwrapped(model, spec)
    if weights is not None:
        notes += _load_state_dict(model, weights, trust_weights)
    return ModelInfo(model.eval().to(device), spec, notes=notes, assumed_preprocessing=True)


def _unwrapped(model: nn.Module, spec: str) -> tuple[nn.Module, list[str]]:
    """A ``torch.compile``d model's original module (with a note); a TorchScript module is
    refused: its layers can't be hooked."""
    from xcam.core.layers import unwrap_model

    if isinstance(model, torch.jit.ScriptModule):
        raise ModelSpecError(
            f"{spec} gave a TorchScript module ({type(model).__name__}, from torch.jit.script "
            "or trace), whose layers can't be hooked: give the Python module it was made from "
            "(`xcam export MODEL --format torchscript` then writes a TorchScript file xcam can "
            "explain)"
        )
    plain = unwrap_model(model)
    if plain is model:
        return model, []
    return plain, [
        f"{spec} is a torch.compile'd module: explaining its original module (the same "
        "weights, run eagerly: hooks need the Python modules)"
    ]


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
