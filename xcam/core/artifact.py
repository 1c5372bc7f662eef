"""What an exported file is, as data (torch-free): the one table of formats, the names of
its inputs and outputs, and the schema of the metadata it carries.

Every command, :func:`xcam.load`, the exporters and the benchmarks read this table, so a
suffix, a loader or the "carries code" flag is written once. A format *carries code* when
loading it runs something the file's author wrote: a TorchScript archive runs its program
(``__setstate__`` and friends) at load, an AOTInductor ``.pt2`` package loads the shared
library inside it, and an ExportedProgram ``.pt2`` unpickles its constants. Such files are
refused unless the caller says it trusts them (``trust_code=True``, ``--trust-code``), as
``torch.load`` itself refuses pickled code by default (``weights_only=True``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from xcam.core.errors import ModelSpecError


@dataclass(frozen=True)
class Format:
    """One kind of exported file."""

    name: str  # the exporter's name: ``exporters.export(format=name)``
    suffixes: tuple[str, ...]  # the first is the one xcam writes
    backend: str  # the ``backend=`` name of the runtime that reads it
    carries_code: bool
    risk: str  # what loading an untrusted file of this kind can do

    @property
    def suffix(self) -> str:
        return self.suffixes[0]


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("onnx", (".onnx",), "onnxruntime", False, ""),
        Format(
            "torchscript",
            (".ts", ".torchscript", ".jit", ".pt"),
            "torchscript",
            True,
            "a TorchScript archive is a program: loading it runs its code",
        ),
        Format(
            "pt2",
            (".pt2",),
            "pt2",
            True,
            "a .pt2 package runs code at load: an AOTInductor package loads the compiled "
            "library inside it, an ExportedProgram unpickles its contents",
        ),
    )
}
# the largest input side xcam exports for or accepts from a file's metadata: 8192² x 3
# floats are 0.8 GB of input alone, and a hostile file claiming 100000² would ask for 120 GB
MAX_SIDE = 8192
MAX_CHANNELS = 4096

BACKEND_FORMAT: dict[str, Format] = {f.backend: f for f in FORMATS.values()}


def format_of(path: str | Path) -> Format | None:
    """The format of a file name by its suffix, or None."""
    suffix = Path(path).suffix.lower()
    return next((f for f in FORMATS.values() if suffix in f.suffixes), None)


def untrusted_message(path: str | Path, fmt: Format) -> str:
    """Why a code-carrying file is refused, and how to opt in."""
    return (
        f"{Path(path).name} is a {fmt.name} file and {fmt.risk}, so a file from an untrusted "
        "source can do anything on this machine. Load it only if you trust where it came "
        "from: trust_code=True in Python, --trust-code on the command line. Or use an ONNX "
        "export, which carries no code"
    )


def check_input_shape(
    name: str, claimed: object, graph: list[int | None] | None = None
) -> list[int | None]:
    """The metadata's ``input_shape`` (``[B, C, H, W]``, None = dynamic), checked: four
    ints or None, within :data:`MAX_SIDE` / :data:`MAX_CHANNELS`, and equal to the graph's
    own input shape wherever both are fixed. Returns it; raises ValueError saying what's
    wrong (the caller names the file)."""
    if not isinstance(claimed, list) or len(claimed) != 4:
        raise ValueError(f"{name}: its metadata's input_shape {claimed!r} is not [B, C, H, W]")
    if not all(d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in claimed):
        raise ValueError(f"{name}: its metadata's input_shape {claimed!r} holds non-integers")
    if any(d is not None and d < 1 for d in claimed):
        raise ValueError(f"{name}: its metadata's input_shape {claimed!r} has a size below 1")
    if graph is not None:
        fixed = [g if isinstance(g, int) and not isinstance(g, bool) else None for g in graph]
        if len(fixed) != 4 or any(
            g is not None and d is not None and g != d for g, d in zip(fixed, claimed, strict=True)
        ):
            show = "x".join("?" if g is None else str(g) for g in fixed)
            raise ValueError(
                f"{name}: its metadata claims input_shape {claimed} but its graph takes "
                f"{show}; the file is inconsistent (damaged or tampered with)"
            )
    c, h, w = claimed[1:]
    if (c is not None and c > MAX_CHANNELS) or any(d is not None and d > MAX_SIDE for d in (h, w)):
        raise ValueError(
            f"{name}: its metadata claims an input of {claimed[1:]} (C, H, W), above the "
            f"limit of {MAX_CHANNELS} channels and {MAX_SIDE} pixels a side; refused"
        )
    return claimed


def static_mismatch(name: str, shape: Sequence, got: Sequence[int]) -> str | None:
    """Why an input of shape ``got`` does not fit a file exported for ``shape`` (None: a
    dynamic dimension), or None when it fits."""
    for i, (have, want) in enumerate(zip(got, shape, strict=False)):
        if want is not None and have != want:
            dims = "x".join("?" if s is None else str(s) for s in shape)
            return (
                f"{name} was exported for input {dims}; got {tuple(got)} (dimension {i} is "
                "static; export with dynamic shapes to change it)"
            )
    return None


# the names of an export's inputs and outputs: every writer, reader and check uses these
INPUT = "input"
TARGET_INPUT = "target"  # the class per sample an in-graph gradient explains (-1: top-1)
LOGITS = "logits"
GRADCAM = "gradcam"  # the in-graph Grad-CAM map, fused over the layers
GRAD_SUFFIX = ".grad"


def grad_name(layer: str) -> str:
    """The output holding ``d score / d A`` of ``layer`` in an export with gradients."""
    return f"{layer}{GRAD_SUFFIX}"


def is_gradient_output(name: str) -> bool:
    """True for the outputs an in-graph gradient computes (a layer's gradient, the map)."""
    return name.endswith(GRAD_SUFFIX) or name == GRADCAM


# how the metadata JSON is stored: ONNX metadata_props key, TorchScript / pt2 extra file
METADATA_KEY = "xcam"
METADATA_FILE = f"{METADATA_KEY}.json"
SCHEMA = 1


@dataclass
class ExportMetadata:
    """The contract between an exported file and the backend that runs it."""

    format: str
    exporter: str
    layers: list[str]
    output_names: list[str]
    outputs: dict[str, str]  # name -> what it is
    input_name: str = INPUT
    input_shape: list[int | None] = field(default_factory=list)  # None = dynamic
    layout: str = "NCHW"
    dtype: str = "float32"
    num_classes: int | None = None
    classes: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    opset: int | None = None
    gradients: bool = False
    input_names: list[str] = field(default_factory=lambda: [INPUT])
    closed_form: list[str] = field(default_factory=list)  # layers whose gradient is W/(h·w)
    # layers whose activations are not [B, C, h, w]: name -> [layout, prefix tokens], the
    # layout one of "nhwc", "grid", "cls+grid" (see xcam.core.tokens)
    token_layouts: dict[str, list] = field(default_factory=dict)
    # the model's final activation ("sigmoid", "softmax", "log_softmax"; None: none), and
    # whether the file's logits (and its in-graph score) are the scores before it
    activation: str | None = None
    pre_activation: bool = False
    output: int | str | None = None  # which part of a tuple / dict output is ``logits``
    dynamic_batch: bool = True
    dynamic_spatial: bool = False
    model: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ExportMetadata:
        data: dict[str, Any] = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


# what a file without ``mean`` / ``std`` in its metadata is fed: ImageNet's statistics
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# the layouts of token layers a file may name: every layout but "nchw" (xcam.core.tokens
# adds it; this module stays free of torch)
TOKEN_LAYOUTS = ("nhwc", "grid", "cls+grid")
_LAYOUT_SHAPES = {
    "nhwc": "[B, h, w, C]",
    "grid": "[B, N, C] tokens",
    "cls+grid": "[B, P + N, C] tokens",
}


def describe_outputs(
    layers: Sequence[str], gradients: bool = False, token_layouts: dict | None = None
) -> dict[str, str]:
    """What each output of an export is, by name (stored in its metadata)."""
    shapes = {n: _LAYOUT_SHAPES[v[0]] for n, v in (token_layouts or {}).items()}
    out = {LOGITS: "the model's output, [B, K]"}
    out.update(
        {
            name: f"activation of layer {name!r}, {shapes.get(name, '[B, C, h, w]')}"
            for name in layers
        }
    )
    if gradients:
        out.update(
            {
                grad_name(name): f"d score / d {name}, {shapes.get(name, '[B, C, h, w]')}"
                for name in layers
            }
        )
        out[GRADCAM] = "Grad-CAM map fused over the layers, [B, H, W] in [0, 1]"
    return out


# -- reading a file's metadata: a file is untrusted input, its metadata decides what is read
# and run, so every field is checked before it is used (the backends and xcam.lite alike)


def read_metadata(name: str, text: str) -> ExportMetadata:
    """The metadata JSON an exported file carries, parsed; anything else is a
    :class:`ModelSpecError` naming the file (its fields are checked by
    :func:`check_file_metadata`)."""
    try:
        return ExportMetadata.from_json(text)
    except (ValueError, TypeError) as e:
        msg = f"{name}: its '{METADATA_KEY}' metadata is unreadable ({e})"
        raise ModelSpecError(msg) from None


def check_file_metadata(
    name: str,
    meta: ExportMetadata,
    graph_input_shape: list[int | None] | None = None,
    graph_inputs: list[str] | None = None,
    graph_outputs: list[str] | None = None,
) -> None:
    """All a reader checks before using a file's metadata: its input size (never trusted: it
    decides how large images are made, see :func:`check_input_shape`), then every field
    (:func:`check_metadata`); a :class:`ModelSpecError` naming the file otherwise."""
    try:
        check_input_shape(name, meta.input_shape, graph_input_shape)
    except ValueError as e:
        raise ModelSpecError(str(e)) from None
    check_metadata(name, meta, graph_inputs, graph_outputs)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _refuse(name: str, meta: ExportMetadata, key: str, what: str) -> NoReturn:
    raise ModelSpecError(
        f"{name}: its metadata's {key} {_short(getattr(meta, key))} is not {what}; the "
        "file is damaged or was not written by `xcam export` (export it again)"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_names(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(n, str) and n for n in value)


def check_metadata(
    name: str,
    meta: ExportMetadata,
    graph_inputs: list[str] | None = None,
    graph_outputs: list[str] | None = None,
) -> None:
    """Every field of a file's metadata has the type xcam writes, and the names it lists
    are the graph's (where the runtime tells them); else a :class:`ModelSpecError` naming
    the field. The input size is :func:`check_input_shape`'s."""
    _check_scalars(name, meta)
    _check_name_lists(name, meta)
    _check_numbers(name, meta)
    _check_normalisation(name, meta)
    _check_token_layouts(name, meta)
    _check_graph_names(name, meta, graph_inputs, graph_outputs)


def _check_scalars(name: str, meta: ExportMetadata) -> None:
    """Strings, optional strings and flags."""
    for key in ("format", "exporter", "input_name", "layout", "dtype"):
        if not isinstance(getattr(meta, key), str):
            _refuse(name, meta, key, "a string")
    for key in ("activation", "model"):
        if getattr(meta, key) is not None and not isinstance(getattr(meta, key), str):
            _refuse(name, meta, key, "a string or null")
    for key in ("gradients", "pre_activation", "dynamic_batch", "dynamic_spatial"):
        if not isinstance(getattr(meta, key), bool):
            _refuse(name, meta, key, "true or false")


def _check_name_lists(name: str, meta: ExportMetadata) -> None:
    """The lists of names and the objects of names."""
    layers, outputs = meta.layers, meta.output_names
    if not _is_names(layers) or not layers or len(set(layers)) != len(layers):
        _refuse(name, meta, "layers", "a non-empty list of distinct layer names")
    if not _is_names(outputs) or len(set(outputs)) != len(outputs):
        _refuse(name, meta, "output_names", "a list of distinct output names")
    if not _is_names(meta.input_names) or not meta.input_names:
        _refuse(name, meta, "input_names", "a non-empty list of input names")
    if not _is_names(meta.closed_form):
        _refuse(name, meta, "closed_form", "a list of layer names")
    if not isinstance(meta.outputs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.outputs.items()
    ):
        _refuse(name, meta, "outputs", "an object of output names and descriptions")
    if not isinstance(meta.versions, dict):
        _refuse(name, meta, "versions", "an object")


def _check_token_layouts(name: str, meta: ExportMetadata) -> None:
    """Each entry names one of the file's layers and a token layout with its prefix count."""
    layouts = meta.token_layouts
    if not isinstance(layouts, dict) or not all(
        layer in meta.layers
        and isinstance(v, list)
        and len(v) == 2
        and v[0] in TOKEN_LAYOUTS
        and _is_int(v[1])
        and 0 <= v[1] <= 64
        for layer, v in layouts.items()
    ):
        _refuse(name, meta, "token_layouts", "an object of the file's layers and token layouts")


def _check_numbers(name: str, meta: ExportMetadata) -> None:
    """Which output is the logits, the class count and names, the opset."""
    if meta.output is not None and not (isinstance(meta.output, str) or _is_int(meta.output)):
        _refuse(name, meta, "output", "an output index, a key or null")
    for key in ("num_classes", "opset"):
        value = getattr(meta, key)
        if value is not None and not (_is_int(value) and value >= 1):
            _refuse(name, meta, key, "a positive integer or null")
    if meta.classes is not None and not (
        isinstance(meta.classes, list) and all(isinstance(c, str) for c in meta.classes)
    ):
        _refuse(name, meta, "classes", "a list of class names or null")


def _check_normalisation(name: str, meta: ExportMetadata) -> None:
    """``mean`` and ``std``: finite numbers, one per input channel, ``std`` positive."""
    channels = meta.input_shape[1] if len(meta.input_shape) == 4 else None
    for key in ("mean", "std"):
        value = getattr(meta, key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        ):
            _refuse(name, meta, key, "a list of finite numbers or null")
        if key == "std" and min(value, default=1.0) <= 0:
            _refuse(name, meta, key, "a list of positive numbers (inputs are divided by it)")
        if channels is not None and len(value) != channels:
            _refuse(name, meta, key, f"one number per input channel ({channels})")


def _check_graph_names(
    name: str,
    meta: ExportMetadata,
    graph_inputs: list[str] | None,
    graph_outputs: list[str] | None,
) -> None:
    """Every output a reader needs is listed, and every name listed is the graph's."""
    wanted = [LOGITS, *meta.layers]
    if meta.gradients:
        wanted += [grad_name(layer) for layer in meta.layers]
    missing = [n for n in wanted if n not in meta.output_names]
    if missing:
        _refuse(name, meta, "output_names", f"complete: it lacks {', '.join(map(repr, missing))}")
    for key, listed, real in (
        ("output_names", meta.output_names, graph_outputs),
        ("input_names", meta.input_names, graph_inputs),
    ):
        unknown = [n for n in listed if real is not None and n not in real]
        if unknown:
            _refuse(
                name,
                meta,
                key,
                f"the graph's: it has no {', '.join(map(repr, unknown))} (it has "
                f"{', '.join(map(repr, real or []))})",
            )
