"""Untrusted files: pickled checkpoints that need code, TorchScript archives, ONNX files
whose external data points outside their folder."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

import xcam
from xcam.backends.onnxruntime import check_external_data
from xcam.cli import main
from xcam.core.errors import ModelSpecError, UntrustedFileError
from xcam.models import load_model


class _Evil:
    """Unpickling this opens (creates) a marker file: a stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_a_malicious_checkpoint_never_runs(tmp_path: Path) -> None:
    path, marker = _evil_checkpoint(tmp_path)
    with pytest.raises(ModelSpecError, match="needs code to load") as info:
        load_model("demo", weights=path)
    assert "trust_weights=True" in str(info.value)
    assert not marker.exists()
    res = CliRunner().invoke(main, ["layers", "demo", "--weights", str(path)])
    assert res.exit_code == 1 and "--trust-weights" in res.output
    assert not marker.exists()
    # the explicit opt-in does run it (which is why it is opt-in); then the content is judged
    with pytest.raises(ModelSpecError, match="does not fit"):
        load_model("demo", weights=path, trust_weights=True)
    assert marker.exists()


def test_a_plain_state_dict_needs_no_trust(tmp_path: Path, demo_model) -> None:
    path = tmp_path / "w.pt"
    torch.save(demo_model.state_dict(), path)
    assert load_model("demo", weights=path).model is not None


def test_torchscript_on_the_command_line_needs_trust(tmp_path: Path, demo_model) -> None:
    import exporters

    path = tmp_path / "demo.ts"
    exporters.export(demo_model, ["block3"], torch.rand(1, 3, 64, 64), path, format="torchscript")
    res = CliRunner().invoke(main, ["layers", str(path)])
    assert res.exit_code == 1 and "--trust-code" in res.output and "program" in res.output
    res = CliRunner().invoke(main, ["layers", str(path), "--trust-torchscript"])  # the old name
    assert res.exit_code == 0 and "block3" in res.output
    # the library is safe by default too (issue 11): the caller opts in explicitly
    with pytest.raises(UntrustedFileError, match="trust_code=True"):
        xcam.load(path)
    assert xcam.load(path, trust_code=True).format == "torchscript"


def _onnx_with_external(tmp_path: Path, location: str) -> Path:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [weight],
    )
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    path = folder / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname", "sub/../../secret.bin"])
def test_onnx_external_data_outside_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0\0\0\0")
    path = _onnx_with_external(tmp_path, location)
    with pytest.raises(ModelSpecError, match="outside the model's folder"):
        check_external_data(path)
    with pytest.raises(ModelSpecError, match="outside the model's folder"):
        xcam.load(path)  # refused before ONNX Runtime reads anything


def test_onnx_external_data_beside_the_model_is_fine(tmp_path: Path) -> None:
    path = _onnx_with_external(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(b"\0\0\0\0")
    check_external_data(path)  # no error


def test_every_torchscript_suffix_is_one_format(tmp_path: Path, demo_model) -> None:
    """The CLI and the loader read one table: no suffix passes the gate, and each loads with
    the opt-in (``.pt`` used to be 'unknown model spec')."""
    import exporters

    src = tmp_path / "demo.ts"
    exporters.export(demo_model, ["block3"], torch.rand(1, 3, 64, 64), src, format="torchscript")
    for suffix in (".ts", ".torchscript", ".jit", ".pt"):
        path = tmp_path / f"copy{suffix}"
        path.write_bytes(src.read_bytes())
        res = CliRunner().invoke(main, ["layers", str(path)])
        assert res.exit_code == 1 and "--trust-code" in res.output, suffix
        res = CliRunner().invoke(main, ["layers", str(path), "--trust-torchscript"])
        assert res.exit_code == 0 and "block3" in res.output, (suffix, res.output)
