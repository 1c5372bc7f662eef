"""ONNX Runtime on the CPU or CUDA execution provider."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from xcam.backends.base import Backend
from xcam.core.artifact import TARGET_INPUT
from xcam.core.errors import ModelSpecError, XCamError
from xcam.core.runtime import (
    ProviderError,
    open_session,
    session_device,
    session_metadata,
    session_signature,
)

__all__ = ["OnnxRuntimeBackend", "ProviderError", "check_external_data", "check_tensor_sizes"]

_NP_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


def _tensors(graph) -> Iterator:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def check_external_data(path: str | Path):
    """Refuse an ONNX file whose external tensor data lies outside the file's folder.

    An ONNX file names the files its weights are read from; an untrusted one could point at
    ``../../etc/passwd`` or an absolute path and have the runtime read it. Every location
    must be a relative path that resolves inside the model's folder. Returns the model
    (its graph and metadata; external tensor data not loaded)."""
    import onnx

    path = Path(path)
    folder = path.resolve().parent
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelSpecError(f"{path.name}: not a readable ONNX model ({e})") from None
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ModelSpecError(
                f"{path.name}: tensor {tensor.name!r} reads its data from {location!r}, outside "
                f"the model's folder {str(folder)!r}; refused (an ONNX file may only use "
                "external data stored beside it)"
            )
    return model


def _memory_bytes() -> int:
    """This machine's physical memory (1 TiB where the system doesn't say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 40


def _gib(n: int) -> str:
    return f"{n / (1 << 30):,.1f} GiB"


def check_tensor_sizes(path: str | Path, model, limit: int | None = None) -> None:
    """Refuse an ONNX graph with a tensor larger than ``limit`` bytes (default: this
    machine's memory), as ONNX shape inference sees the shapes (constant shape inputs
    folded, dynamic dimensions counted as 1): a damaged or hostile file could otherwise
    have ONNX Runtime allocate terabytes. Sizes only running reveals are caught when it
    runs (see :meth:`OnnxRuntimeBackend._run`)."""
    import onnx

    name = Path(path).name
    limit = _memory_bytes() if limit is None else limit

    def itemsize(elem_type: int) -> int:
        try:
            return max(1, onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
        except Exception:  # strings and types numpy lacks
            return 1

    def refuse(what: str, tensor: str, dims: list[int], size: int) -> None:
        shape = "x".join(map(str, dims)) or "scalar"
        raise ModelSpecError(
            f"{name}: {what} makes tensor {tensor!r} of shape {shape} ({_gib(size)}), more than "
            f"this machine's memory ({_gib(limit)}); refused (a damaged or hostile file?)"
        )

    for tensor in model.graph.initializer:
        size = itemsize(tensor.data_type) * int(np.prod(list(tensor.dims), dtype=object))
        if size > limit:
            refuse("an initializer", tensor.name, list(tensor.dims), size)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # shapes it can't infer (custom ops) are left to the runtime
        return
    producers = {out: node for node in inferred.graph.node for out in node.output}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        kind = info.type.tensor_type
        if not kind.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in kind.shape.dim]
        size = itemsize(kind.elem_type) * int(np.prod([max(d, 1) for d in dims], dtype=object))
        if size > limit:
            node = producers.get(info.name)
            what = "the graph" if node is None else f"its {node.op_type} node {node.name!r}"
            refuse(what.replace(" ''", ""), info.name, dims, size)


_ALLOCATION = re.compile(r"running (\w+) node.*?requested buffer of size (\d+)", re.S)
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def _run_failure(name: str, shape: tuple[int, ...], error: Exception) -> XCamError:
    """ONNX Runtime's error from running a file, as one line naming the file."""
    from xcam.core.errors import first_line

    text = str(error)
    found = _ALLOCATION.search(text)
    if found:
        op, size = found.group(1), int(found.group(2))
        return XCamError(
            f"{name}: its {op} node asked for {_gib(size)} and ONNX Runtime could not allocate "
            f"it (more memory than there is) on a {'x'.join(map(str, shape))} input; a damaged "
            "or hostile file?"
        )
    line = _ORT_PREFIX.sub("", first_line(error))
    return XCamError(f"{name}: ONNX Runtime failed on a {'x'.join(map(str, shape))} input: {line}")


class OnnxRuntimeBackend(Backend):
    """One ``InferenceSession``, shared safely across threads (``run`` is thread-safe and
    every call makes its own IO binding). On CUDA, inputs and outputs are bound to device
    memory so activations stay on the GPU. ``strict``: fail (True) or warn and use the CPU
    when CUDA was asked for and not given; ``threads``: intra-op threads; ``spin``: let
    idle worker threads spin (faster for back-to-back ORT calls, slower beside torch)."""

    format = "onnx"

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        strict: bool = True,
        threads: int | None = None,
        spin: bool = False,
    ):
        path = Path(path)
        check_tensor_sizes(path, check_external_data(path))
        dev = str(torch.device(device))
        self.session = open_session(path, dev, threads=threads, spin=spin, strict=strict)
        self.providers = self.session.get_providers()
        meta = session_metadata(self.session, path.name)
        super().__init__(
            path, meta, session_device(self.session, dev), **session_signature(self.session)
        )
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = _NP_DTYPES.get(inp.type, np.float32)

    def _run(self, x: torch.Tensor, target: torch.Tensor | None) -> list[torch.Tensor]:
        names = self.output_names
        if self.device.type == "cuda":
            return self._run_cuda(x, target, names)
        arr = x.detach().cpu().numpy().astype(self.input_dtype, copy=False)
        feed = {self.input_name: np.ascontiguousarray(arr)}
        if target is not None:
            feed[TARGET_INPUT] = target.cpu().numpy().astype(np.int64)
        try:
            outs = self.session.run(names, feed)
        except Exception as e:  # onnxruntime's own error types, with pages of context
            raise _run_failure(self.path.name, tuple(arr.shape), e) from e
        return [torch.from_numpy(o) for o in outs]

    def _run_cuda(
        self, x: torch.Tensor, target: torch.Tensor | None, names: list[str]
    ) -> list[torch.Tensor]:
        torch_dtype = torch.from_numpy(np.zeros(0, self.input_dtype)).dtype
        xin = x.detach().to(self.device, torch_dtype).contiguous()
        binding = self.session.io_binding()
        binding.bind_input(
            self.input_name,
            "cuda",
            self.device.index or 0,
            self.input_dtype,
            list(xin.shape),
            xin.data_ptr(),
        )
        if target is not None:  # a file with a target input: the class per sample, from the CPU
            binding.bind_cpu_input(TARGET_INPUT, target.cpu().numpy().astype(np.int64))
        for name in names:
            binding.bind_output(name, "cuda", self.device.index or 0)
        torch.cuda.current_stream(self.device).synchronize()
        try:
            self.session.run_with_iobinding(binding)
        except Exception as e:
            raise _run_failure(self.path.name, tuple(xin.shape), e) from e
        outs = []
        for value in binding.get_outputs():
            if hasattr(value, "to_dlpack"):
                outs.append(torch.from_dlpack(value.to_dlpack()))
            else:  # older onnxruntime: one copy through the host
                outs.append(torch.from_numpy(value.numpy()).to(self.device))
        return outs
