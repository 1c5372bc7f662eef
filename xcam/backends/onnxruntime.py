"""ONNX Runtime on the CPU or CUDA execution provider."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from exporters.metadata import METADATA_KEY, ExportMetadata
from xcam.backends.base import Backend
from xcam.errors import ModelSpecError, XCamError

_NP_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


class ProviderError(XCamError):
    """The execution provider asked for is not the one ONNX Runtime gave."""


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


def check_external_data(path: str | Path) -> None:
    """Refuse an ONNX file whose external tensor data lies outside the file's folder.

    An ONNX file names the files its weights are read from; an untrusted one could point at
    ``../../etc/passwd`` or an absolute path and have the runtime read it. Every location
    must be a relative path that resolves inside the model's folder."""
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


def _metadata(path: Path, text: str) -> ExportMetadata:
    try:
        return ExportMetadata.from_json(text)
    except (ValueError, TypeError) as e:
        msg = f"{path.name}: its '{METADATA_KEY}' metadata is unreadable ({e})"
        raise ModelSpecError(msg) from None


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
        import onnxruntime as ort

        path = Path(path)
        check_external_data(path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        # ORT's idle workers spin by default; beside torch (the eager tail, the map) they
        # would take the cores torch's next op needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        dev = torch.device(device)
        if dev.type == "cuda":
            providers = [
                ("CUDAExecutionProvider", {"device_id": dev.index or 0}),
                "CPUExecutionProvider",
            ]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        used = self.session.get_providers()
        if dev.type == "cuda" and "CUDAExecutionProvider" not in used:
            msg = (
                f"CUDA was asked for {path.name} but ONNX Runtime runs it with {used} "
                f"(available here: {ort.get_available_providers()})"
            )
            if strict:
                raise ProviderError(msg)
            warnings.warn(msg + "; falling back to the CPU", RuntimeWarning, stacklevel=2)
            dev = torch.device("cpu")
        self.providers = used
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise XCamError(f"{path.name} was not exported by xcam (no '{METADATA_KEY}' metadata)")
        inp = self.session.get_inputs()[0]
        meta = _metadata(path, props[METADATA_KEY])
        super().__init__(path, meta, str(dev), graph_input_shape=list(inp.shape))
        self.input_name = inp.name
        self.input_dtype = _NP_DTYPES.get(inp.type, np.float32)

    def _run(self, x: torch.Tensor, target: torch.Tensor | None) -> list[torch.Tensor]:
        names = self.output_names
        if self.device.type == "cuda":
            return self._run_cuda(x, target, names)
        arr = x.detach().cpu().numpy().astype(self.input_dtype, copy=False)
        feed = {self.input_name: np.ascontiguousarray(arr)}
        if target is not None:
            feed["target"] = target.cpu().numpy().astype(np.int64)
        outs = self.session.run(names, feed)
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
        for name in names:
            binding.bind_output(name, "cuda", self.device.index or 0)
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        outs = []
        for value in binding.get_outputs():
            if hasattr(value, "to_dlpack"):
                outs.append(torch.from_dlpack(value.to_dlpack()))
            else:  # older onnxruntime: one copy through the host
                outs.append(torch.from_numpy(value.numpy()).to(self.device))
        return outs
