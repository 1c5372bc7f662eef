"""``xcam.lite`` checks a file's metadata as the torch backends do: the same refusals, the
same messages, from the one set of checks in :mod:`xcam.core.artifact`."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

import exporters
import xcam
from xcam.core.errors import ModelSpecError
from xcam.lite import OnnxExplainer


@pytest.fixture(scope="module")
def grad_onnx(tmp_path_factory) -> Path:
    """A real export with gradients (what xcam.lite runs), 16x16, target input."""
    from xcam.demo import load_demo_model

    path = tmp_path_factory.mktemp("lite") / "demo16.onnx"
    example = torch.rand(1, 3, 16, 16)
    exporters.export(
        load_demo_model(), ["block3"], example, path, gradients=True, target_input=True
    )
    return path


def _with_metadata(src: Path, dst: Path, edit) -> Path:
    """``src`` with its xcam metadata_props entry rewritten by ``edit`` (a dict -> a dict,
    or the raw text to store)."""
    model = onnx.load(str(src))
    entry = next(p for p in model.metadata_props if p.key == "xcam")
    text = edit(json.loads(entry.value))
    entry.value = text if isinstance(text, str) else json.dumps(text)
    onnx.save(model, str(dst))
    return dst


def _set(**fields):
    return lambda meta: {**meta, **fields}


WRONG_METADATA = {
    "huge-input": _set(input_shape=[None, 3, 100000, 100000]),
    "input-not-the-graph's": _set(input_shape=[None, 3, 32, 32]),
    "input-not-nchw": _set(input_shape=[None, 3, 16]),
    "layers-string": _set(layers="block3"),
    "layers-unknown": _set(layers=["nosuch"]),
    "output-names-unknown": _set(output_names=["logits", "block3", "ghost"]),
    "gradients-string": _set(gradients="yes"),
    "num-classes-string": _set(num_classes="4"),
    "classes-ints": _set(classes=[1, 2, 3, 4]),
    "std-zero": _set(std=[0.0, 0.0, 0.0]),
    "input-names-unknown": _set(input_names=["input", "ghost"]),
    "not-json": lambda meta: "{nope",
    "missing-fields": lambda meta: {"format": "onnx"},
}


@pytest.mark.parametrize("case", list(WRONG_METADATA))
def test_lite_refuses_wrong_metadata_as_the_backend_does(grad_onnx, tmp_path, case) -> None:
    path = _with_metadata(grad_onnx, tmp_path / "wrong.onnx", WRONG_METADATA[case])
    with pytest.raises(ModelSpecError, match=r"wrong\.onnx") as backend:
        xcam.load(path)
    with pytest.raises(ModelSpecError, match=r"wrong\.onnx") as lite:
        OnnxExplainer(path)
    assert str(lite.value) == str(backend.value)


def test_lite_takes_the_untouched_file(grad_onnx, tmp_path) -> None:
    path = _with_metadata(grad_onnx, tmp_path / "same.onnx", lambda meta: meta)
    result = OnnxExplainer(path)(torch.rand(2, 3, 16, 16).numpy(), targets=[0, 1])
    assert result.maps.shape == (2, 16, 16) and result.targets.tolist() == [0, 1]
