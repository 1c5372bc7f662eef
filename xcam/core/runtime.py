"""ONNX Runtime sessions, set up one way (torch-free): the ONNX backend, :mod:`xcam.lite`
and the benchmarks open theirs here, so threads, spinning, providers and the CUDA check
are written once.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xcam.core.artifact import METADATA_KEY, ExportMetadata, read_metadata
from xcam.core.errors import ModelSpecError, XCamError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class ProviderError(XCamError):
    """The execution provider asked for is not the one ONNX Runtime gave."""


def device_providers(device: str = "cpu") -> list:
    """The execution providers for a device: ``"cuda"`` / ``"cuda:N"`` CUDA (on device N)
    then the CPU; any other device the CPU alone."""
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return [CPU]
    return [(CUDA, {"device_id": int(index or 0)}), CPU]


def session_options(threads: int | None = None, spin: bool = False) -> Any:
    """``SessionOptions`` with ``threads`` intra-op threads (None: ONNX Runtime's choice).

    ``spin``: let idle worker threads spin (ONNX Runtime's default). Fastest for
    back-to-back ONNX Runtime calls with the cores to itself; beside torch (an eager tail,
    the map) the spinning workers take the cores torch's next op needs.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def open_session(
    path: str | Path,
    device: str = "cpu",
    *,
    providers: Sequence | None = None,
    threads: int | None = None,
    spin: bool = False,
    strict: bool = True,
) -> Any:
    """An ``InferenceSession`` for ``path`` on ``device`` (``"cpu"``, ``"cuda[:N]"``), or on
    the ``providers`` given, taken as they are.

    Where ``device`` asks for CUDA and ONNX Runtime does not give it: a
    :class:`ProviderError` with ``strict``, else a RuntimeWarning and the session runs on
    the CPU (:func:`session_device` says which).
    """
    import onnxruntime as ort

    path = Path(path)
    chosen = device_providers(device) if providers is None else list(providers)
    session = ort.InferenceSession(str(path), session_options(threads, spin), providers=chosen)
    if providers is None and session_device(session, device) != device:
        msg = (
            f"CUDA was asked for {path.name} but ONNX Runtime runs it with "
            f"{session.get_providers()} (available here: {ort.get_available_providers()})"
        )
        if strict:
            raise ProviderError(msg)
        warnings.warn(msg + "; falling back to the CPU", RuntimeWarning, stacklevel=3)
    return session


def session_device(session: Any, device: str) -> str:
    """The device a session opened for ``device`` runs on: the CPU where CUDA was asked for
    and not given."""
    if device.partition(":")[0] == "cuda" and CUDA not in session.get_providers():
        return "cpu"
    return device


def session_metadata(session: Any, name: str) -> ExportMetadata:
    """The metadata of the xcam export ``session`` runs (``name``: the file's), parsed but
    not yet checked: check it with :func:`xcam.core.artifact.check_file_metadata` and
    :func:`session_signature`."""
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise XCamError(f"{name} was not exported by xcam (no '{METADATA_KEY}' metadata)")
    if not session.get_inputs():
        raise ModelSpecError(f"{name}: its graph has no input")
    return read_metadata(name, props[METADATA_KEY])


def session_signature(session: Any) -> dict[str, Any]:
    """What the graph itself says, for checking its metadata against: the first input's
    shape (None or a name where dynamic), the input names and the output names."""
    inputs = session.get_inputs()
    return {
        "graph_input_shape": list(inputs[0].shape) if inputs else None,
        "graph_inputs": [i.name for i in inputs],
        "graph_outputs": [o.name for o in session.get_outputs()],
    }
