"""``xcam export … --triton-repo``: a Triton model repository whose ``config.pbtxt`` parses
with Triton's own model-config schema (``tritonclient``'s protobuf definitions) and
declares every tensor of the file as ONNX Runtime runs it. No Triton server runs here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from exporters.errors import ExportError
from exporters.triton import write_repository

TYPES = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64}


def _config(folder: Path):
    text = (folder / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_the_config_declares_every_tensor_as_onnx_runtime_runs_it(grad_file, tmp_path) -> None:
    folder = write_repository(grad_file, tmp_path / "repo", "demo-cam")
    config = _config(folder)
    assert config.name == "demo-cam" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32 and config.dynamic_batching.max_queue_delay_microseconds
    assert (folder / "1" / "model.onnx").read_bytes() == grad_file.read_bytes()
    inputs = {i.name: i for i in config.input}
    assert list(inputs) == ["input", "target"]
    assert list(inputs["input"].dims) == [3, 64, 64]
    # the target is one number per sample: declared [1], reshaped to the model's []
    assert list(inputs["target"].dims) == [1] and list(inputs["target"].reshape.shape) == []
    names = [o.name for o in config.output]
    assert names == ["logits", "block3", "block3.grad", "gradcam"]
    # what ONNX Runtime returns at batch 3 is what the config says, batch dimension aside
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"))
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    outs = session.run(names, {"input": x, "target": np.array([-1, 0, 2], dtype=np.int64)})
    for declared, got in zip(config.output, outs, strict=True):
        assert list(got.shape[1:]) == list(declared.dims), declared.name
        dtype = model_config_pb2.DataType.Name(declared.data_type)
        assert got.dtype == TYPES[dtype], declared.name
    for declared in config.input:
        dtype = model_config_pb2.DataType.Name(declared.data_type)
        assert TYPES[dtype] == (np.float32 if declared.name == "input" else np.int64)


def test_an_existing_model_folder_is_never_replaced(grad_file, tmp_path) -> None:
    repo = tmp_path / "repo"
    (repo / "demo_grad").mkdir(parents=True)
    (repo / "demo_grad" / "mine.txt").write_text("keep")
    with pytest.raises(ExportError, match="already exists"):
        write_repository(grad_file, repo)
    assert (repo / "demo_grad" / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in repo.iterdir()) == ["demo_grad"]  # no staging left


def test_the_command_writes_the_repository(runner, tmp_path) -> None:
    from xcam.cli import main

    out, repo = tmp_path / "demo.onnx", tmp_path / "repo"
    args = ["export", "demo", "--gradients", "--out", str(out), "--triton-repo", str(repo)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Triton model repository" in result.output
    config = _config(repo / "demo")
    assert [o.name for o in config.output][-1] == "gradcam" and config.max_batch_size == 32
    again = runner.invoke(main, args)  # the folder is there now: refused before exporting
    assert again.exit_code != 0 and "already exists" in again.output
    ts = ["export", "demo", "--out", str(tmp_path / "d.ts"), "--format", "torchscript"]
    wrong = runner.invoke(main, [*ts, "--triton-repo", str(tmp_path / "r")])
    assert wrong.exit_code != 0 and "holds the ONNX file" in wrong.output


def test_a_triton_name_it_would_change_is_refused_before_exporting(runner, tmp_path) -> None:
    """``--triton-name`` is the model's name in every client's request: one that isn't a
    Triton name is refused, naming the characters allowed, not silently changed."""
    from xcam.cli import main

    args = ["export", "demo", "--out", str(tmp_path / "d.onnx"), "--triton-repo", str(tmp_path)]
    res = runner.invoke(main, [*args, "--triton-name", "bad name/../x"])
    assert res.exit_code == 2 and "--triton-name" in res.output and "letters" in res.output
    assert not (tmp_path / "d.onnx").exists() and list(tmp_path.iterdir()) == []
