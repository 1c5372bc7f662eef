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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


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
EXPORTED_SUFFIXES: tuple[str, ...] = tuple(s for f in FORMATS.values() for s in f.suffixes)


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
    input_name: str = "input"
    input_shape: list[int | None] = field(default_factory=list)  # None = dynamic
    layout: str = "NCHW"
    dtype: str = "float32"
    num_classes: int | None = None
    classes: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    opset: int | None = None
    gradients: bool = False
    input_names: list[str] = field(default_factory=lambda: ["input"])
    closed_form: list[str] = field(default_factory=list)  # layers whose gradient is W/(h·w)
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


def describe_outputs(layers: Sequence[str], gradients: bool = False) -> dict[str, str]:
    """What each output of an export is, by name (stored in its metadata)."""
    out = {LOGITS: "the model's output, [B, K]"}
    out.update({name: f"activation of layer {name!r}, [B, C, h, w]" for name in layers})
    if gradients:
        out.update({grad_name(name): f"d score / d {name}, [B, C, h, w]" for name in layers})
        out[GRADCAM] = "Grad-CAM map fused over the layers, [B, H, W] in [0, 1]"
    return out
