"""What an export declares about itself, as data: stored in the artifact as one JSON string
(ONNX ``metadata_props``, a TorchScript extra file, pt2 extra data or AOTI metadata).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

METADATA_KEY = "xcam"
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
    out = {"logits": "the model's output, [B, K]"}
    out.update({name: f"activation of layer {name!r}, [B, C, h, w]" for name in layers})
    if gradients:
        out.update({f"{name}.grad": f"d score / d {name}, [B, C, h, w]" for name in layers})
        out["gradcam"] = "Grad-CAM map fused over the layers, [B, H, W] in [0, 1]"
    return out


def versions() -> dict[str, str]:
    import torch

    import xcam

    found = {"xcam": xcam.__version__, "torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "?")
        except ImportError:
            pass
    return found
