"""A Triton Inference Server model repository from an exported ONNX file.

::

    REPO/<name>/config.pbtxt
    REPO/<name>/1/model.onnx       (+ the .data file of weights over 1.8 GB)

The config declares the file's inputs (the image batch; ``target`` where the file takes
one) and every output (``logits``, each layer's activations, with ``--gradients`` each
``<layer>.grad`` and ``gradcam``) with its data type and dims, for ONNX Runtime
(``platform: "onnxruntime_onnx"``), with dynamic batching. Triton's own schema is
``model_config.proto`` (the tests parse the config with it, from ``tritonclient``).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from exporters.errors import ExportError

PLATFORM = "onnxruntime_onnx"
# ONNX element types → Triton's data types
_TYPES = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
}


def model_name(text: str) -> str:
    """A Triton model name (a folder's name): letters, digits, ``_``, ``-`` and ``.``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text).strip(".")
    if not name:
        raise ExportError(f"{text!r} makes no Triton model name")
    return name


def triton_config(path: str | Path, name: str, max_batch_size: int = 32, delay_us: int = 2000):
    """``config.pbtxt``'s text for the ONNX file ``path``: every input and output with its
    data type and dims. With a dynamic batch dimension (``xcam export``'s default) Triton
    batches requests (``max_batch_size``, waiting up to ``delay_us`` for more); a tensor
    that is only a batch (``target``) is declared ``[1]``, reshaped to ``[]``."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in weights]
    tensors = [*inputs, *graph.output]
    batched = all(_dims(v) and _dims(v)[0] == -1 for v in tensors)
    lines = [f"name: {_quote(name)}", f"platform: {_quote(PLATFORM)}"]
    lines.append(f"max_batch_size: {max_batch_size if batched else 0}")
    for kind, values in (("input", inputs), ("output", graph.output)):
        entries = [_entry(v, batched) for v in values]
        lines.append(f"{kind} [\n" + ",\n".join(entries) + "\n]")
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}")
    lines.append("instance_group [\n  {\n    kind: KIND_AUTO\n    count: 1\n  }\n]")
    return "\n".join(lines) + "\n"


def write_repository(
    path: str | Path,
    repo: str | Path,
    name: str | None = None,
    max_batch_size: int = 32,
    delay_us: int = 2000,
) -> Path:
    """Write ``repo/<name>/`` (the config and version 1) for the ONNX file ``path``; returns
    the model's folder. An existing ``repo/<name>`` is refused, never replaced; the folder
    appears whole or not at all."""
    path, repo = Path(path), Path(repo)
    name = model_name(name or path.stem)
    target = repo / name
    if target.exists():
        raise ExportError(f"{target} already exists: remove it, or choose another name")
    config = triton_config(path, name, max_batch_size, delay_us)
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=repo))
    try:
        (staging / "1").mkdir()
        shutil.copyfile(path, staging / "1" / "model.onnx")
        for sidecar in _external_files(path):  # kept under the name the file refers to
            shutil.copyfile(path.parent / sidecar, staging / "1" / sidecar)
        (staging / "config.pbtxt").write_text(config, encoding="utf-8")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _external_files(path: Path) -> list[str]:
    """The files that hold an ONNX file's external weights, by the names it uses."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    found = {
        entry.value
        for t in graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for entry in t.external_data
        if entry.key == "location"
    }
    return sorted(found)


def _dims(value) -> list[int]:
    """A tensor's shape, a dynamic dimension as -1."""
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else -1 for d in shape.dim]


def _entry(value, batched: bool) -> str:
    kind = value.type.tensor_type.elem_type
    if kind not in _TYPES:
        raise ExportError(f"{value.name}: ONNX element type {kind} has no Triton data type")
    dims = _dims(value)[1:] if batched else _dims(value)
    lines = [f"    name: {_quote(value.name)}", f"    data_type: {_TYPES[kind]}"]
    if dims:
        lines.append(f"    dims: [ {', '.join(map(str, dims))} ]")
    else:  # only a batch: Triton wants a dimension, the model none
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return "  {\n" + "\n".join(lines) + "\n  }"


def _quote(text: str) -> str:
    return json.dumps(text)  # protobuf text format reads JSON's escapes of ASCII text
