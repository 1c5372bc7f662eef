"""One line, not a traceback (issue 12): every way a command can fail ends in a single
``Error: …`` line that names the problem and the fix, with exit code 1 for a failed job
and 2 for bad usage, and warnings print as one ``Warning: …`` line."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import Result
from conftest import importable
from onnx import TensorProto, helper

import xcam
from xcam.cli import main
from xcam.core.errors import ModelSpecError, NumericalError, XCamError

MODULE = "xcam_test_error_models"
SOURCE = '''
import torch
from torch import nn


class _Base(nn.Module):
    def __init__(self, classes=2):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, classes)

    def head(self, a):
        return self.fc(a.mean(dim=(2, 3)))


class Boom(_Base):
    def forward(self, x):
        raise RuntimeError("boom: the forward is broken\\nsecond line of the message")


class Overflow(_Base):
    """Any input becomes 1e38 * 10 = inf before the first layer."""

    def forward(self, x):
        return self.head(self.body(torch.full_like(x, 1e38) * 10))


class Branchy(_Base):
    def forward(self, x):
        a = self.body(x)
        if a.sum() > 0:  # data-dependent: no export can record it
            a = a * 2
        return self.head(a)


class SoftNet(_Base):
    def __init__(self):
        super().__init__(3)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        return self.softmax(self.head(self.body(x)))


class Ten(_Base):
    def __init__(self):
        super().__init__(10)

    def forward(self, x):
        return self.head(self.body(x))


def boom():
    return Boom().eval()


def overflow():
    return Overflow().eval()


def branchy():
    return Branchy().eval()


def softnet():
    return SoftNet().eval()


def ten():
    return Ten().eval()
'''


@pytest.fixture(scope="module")
def mods(tmp_path_factory) -> str:
    """A module of model factories, importable as ``MODULE``."""
    with importable(tmp_path_factory.mktemp("error_models"), MODULE, SOURCE):
        yield MODULE


@pytest.fixture()
def img(images: Path) -> Path:
    return images / "circle_1.png"


def one_error(res: Result, code: int, *needles: str) -> str:
    """The run failed with ``code``, printed exactly one ``Error:`` line holding every
    needle, and no traceback; returns that line."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, res.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def explain(runner, *args: str) -> Result:
    return runner.invoke(main, ["explain", *args])


# 1. a layer without a spatial output ----------------------------------------------------------


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam", "eigencam"])
def test_a_non_spatial_layer_is_a_usage_error(runner, img, tmp_path, method) -> None:
    out = tmp_path / "o"
    res = explain(runner, "demo", str(img), "--out", str(out), "--layer", "fc", "-m", method)
    line = one_error(res, 2, "--layer", "'fc'", "block3")
    assert "xcam layers demo" in line
    assert not out.exists()


# 2. an unknown colormap, before any work ------------------------------------------------------


def test_an_unknown_colormap_is_refused_before_any_work(runner, img, tmp_path, monkeypatch):
    import xcam.models

    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(xcam.models, "load_model", no_model)
    out = tmp_path / "o"
    res = explain(runner, "demo", str(img), "--out", str(out), "--colormap", "nosuch")
    one_error(res, 2, "--colormap", "nosuch", "matplotlib")
    assert not out.exists()


def test_a_known_colormap_still_works(runner, img, tmp_path) -> None:
    res = explain(runner, "demo", str(img), "--out", str(tmp_path / "o"), "--colormap", "viridis")
    assert res.exit_code == 0, res.output


# 3. a class index no tensor can hold ----------------------------------------------------------


@pytest.mark.parametrize("value", ["99999999999999999999999", "-99999999999999999999999"])
def test_a_huge_class_index_is_a_usage_error(runner, img, tmp_path, value) -> None:
    res = explain(runner, "demo", str(img), "--out", str(tmp_path / "o"), "--class", value)
    one_error(res, 2, "--class")


# 4. an input size too small for the model -----------------------------------------------------


def _command(cmd: str, img: Path, tmp_path: Path) -> list[str]:
    out = tmp_path / "o"
    return {
        "explain": ["explain", "demo", str(img), "--out", str(out)],
        "export": ["export", "demo", "--out", str(tmp_path / "m.onnx")],
        "filters": ["filters", "demo", "--layer", "block1.0", "--out", str(out), "-i", str(img)],
    }[cmd]


@pytest.mark.parametrize("size", ["1", "2", "3", "3,64"])
@pytest.mark.parametrize("cmd", ["explain", "export", "filters"])
def test_an_input_size_too_small_is_a_usage_error(runner, img, tmp_path, cmd, size) -> None:
    res = runner.invoke(main, [*_command(cmd, img, tmp_path), "--input-size", size])
    one_error(res, 2, "--input-size", "too small", "64")  # 64: the size demo takes
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.onnx").exists()


def test_filters_kernels_need_no_forward_at_any_size(runner, tmp_path) -> None:
    out = tmp_path / "o"
    res = runner.invoke(
        main, ["filters", "demo", "--layer", "block1.0", "--out", str(out), "--input-size", "1"]
    )
    assert res.exit_code == 0, res.output  # kernels only: the size is never used


# 5. overflow: NaN weights, an input scaled to infinity ----------------------------------------


@pytest.fixture(scope="module")
def nan_weights(tmp_path_factory) -> Path:
    from xcam.demo import load_demo_model

    state = load_demo_model().state_dict()
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    torch.save(
        {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}, path
    )
    return path


@pytest.mark.parametrize(
    "cmd",
    [
        ["explain", "demo", "{img}", "--out", "{out}"],
        ["explain", "demo", "{img}", "--out", "{out}", "-m", "eigencam"],
        ["export", "demo", "--out", "{out}.onnx"],
        ["filters", "demo", "--layer", "block1.0", "--out", "{out}"],  # kernels: no forward
        ["filters", "demo", "--layer", "block1.0", "--out", "{out}", "-i", "{img}"],
    ],
    ids=["explain", "explain-eigencam", "export", "filters-kernels", "filters-features"],
)
def test_nan_weights_are_one_error_line(runner, img, tmp_path, nan_weights, cmd) -> None:
    out = tmp_path / "o"
    args = [a.format(img=img, out=out) for a in cmd] + ["--weights", str(nan_weights)]
    one_error(runner.invoke(main, args), 1, "not finite", "NaN")
    assert not list(tmp_path.glob("o*"))


@pytest.mark.parametrize(
    "method", ["gradcam", "eigencam", "eigengradcam", "reciprocam", "layercam"]
)
def test_an_overflowing_input_is_one_error_line(runner, mods, img, tmp_path, method) -> None:
    out = tmp_path / "o"
    args = [f"{mods}:overflow", str(img), "--out", str(out), "--input-size", "8", "-m", method]
    one_error(explain(runner, *args), 1, "not finite")


@pytest.mark.parametrize(
    "method", ["gradcam", "eigencam", "eigengradcam", "reciprocam", "guidedbackprop", "fullgrad"]
)
def test_methods_on_nan_weights_raise_numerical_errors(nan_weights, method) -> None:
    from xcam.demo import load_demo_model

    model = load_demo_model()
    model.load_state_dict(torch.load(nan_weights, weights_only=True))
    with pytest.raises(NumericalError, match="not finite"):
        xcam.get_method(method)(model)(torch.rand(1, 3, 32, 32))


def test_pictures_of_non_finite_maps_are_numerical_errors() -> None:
    from xcam import viz

    with pytest.raises(NumericalError, match="NaN or infinite"):
        viz.colorize(np.full((2, 2), np.nan, np.float32))
    with pytest.raises(NumericalError, match="NaN or infinite"):
        viz.attribution_image(np.full((3, 2, 2), np.inf, np.float32))
    with pytest.raises(XCamError, match="unknown colormap 'nosuch'"):
        viz.check_colormap("nosuch")
    viz.check_colormap("jet")


# 6. malformed model specs ---------------------------------------------------------------------


@pytest.mark.parametrize("spec", [":", "a:", ":b", "::", "a::b", " : ", "a.:f", ".a:f", "a:b:c"])
@pytest.mark.parametrize("cmd", ["layers", "explain"])
def test_malformed_model_specs(runner, img, tmp_path, spec, cmd) -> None:
    args = [cmd, spec] + ([str(img), "--out", str(tmp_path / "o")] if cmd == "explain" else [])
    line = one_error(runner.invoke(main, args), 1)
    assert repr(spec) in line or spec in line
    assert "package.module:factory" in line


# 7. a model whose forward raises --------------------------------------------------------------


@pytest.mark.parametrize("cmd", ["layers", "explain", "export", "filters"])
def test_a_model_that_raises_in_forward(runner, mods, img, tmp_path, cmd) -> None:
    spec = f"{mods}:boom"
    args = {
        "layers": ["layers", spec],
        "explain": ["explain", spec, str(img), "--out", str(tmp_path / "o")],
        "export": ["export", spec, "--out", str(tmp_path / "m.onnx")],
        "filters": [
            "filters",
            spec,
            "--layer",
            "body.0",
            "-i",
            str(img),
            "--out",
            str(tmp_path / "o"),
        ],
    }[cmd]
    line = one_error(runner.invoke(main, [*args, "--input-size", "8"]), 1, spec)
    assert "boom: the forward is broken" in line
    if cmd != "layers":  # (layers words its probe its own way)
        assert "RuntimeError: boom: the forward is broken" in line
    assert "second line" not in line


# 8. output folders that can't be written ------------------------------------------------------


@pytest.mark.parametrize("cmd", ["explain", "filters", "export"])
def test_an_output_under_a_regular_file(runner, img, tmp_path, cmd) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("I am a file")
    target = blocker / "sub"
    args = {
        "explain": ["explain", "demo", str(img), "--out", str(target)],
        "filters": ["filters", "demo", "--layer", "block1.0", "--out", str(target)],
        "export": ["export", "demo", "--out", str(target / "m.onnx"), "--input-size", "16"],
    }[cmd]
    line = one_error(runner.invoke(main, args), 1, str(blocker))
    assert "not a folder" in line or "Not a directory" in line, line
    assert blocker.read_text() == "I am a file"


def test_an_export_into_a_folder_that_cannot_be_made(runner, tmp_path, monkeypatch) -> None:
    import tempfile

    def refuse(*_a, **_k):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/.m.onnx.tmp")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    res = runner.invoke(
        main, ["export", "demo", "--out", str(tmp_path / "m.onnx"), "--input-size", "16"]
    )
    one_error(res, 1, "m.onnx", "No such file or directory")


@pytest.mark.parametrize(
    "error, words",
    [
        (OSError(errno.ENOSPC), "No space left on device"),
        (OSError(errno.ENOSPC, ""), "No space left on device"),
        (OSError(), "OSError"),
        (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
    ],
    ids=["enospc-bare", "enospc-empty", "no-detail", "read-only"],
)
@pytest.mark.parametrize("cmd", ["explain", "filters"])
def test_a_full_or_read_only_disk(runner, img, tmp_path, monkeypatch, error, words, cmd) -> None:
    from xcam import viz

    def fail(*_a, **_k):
        raise error

    monkeypatch.setattr(viz, "save_png", fail)
    out = tmp_path / "o"
    args = {
        "explain": ["explain", "demo", str(img), "--out", str(out)],
        "filters": ["filters", "demo", "--layer", "block1.0", "--out", str(out)],
    }[cmd]
    line = one_error(runner.invoke(main, args), 1, str(out), words)
    assert not line.rstrip().endswith(":"), line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_output_folder(runner, img, tmp_path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        res = explain(runner, "demo", str(img), "--out", str(folder / "sub"))
        one_error(res, 1, "Permission denied")
    finally:
        folder.chmod(0o755)


# 9. ONNX metadata with fields of the wrong type -----------------------------------------------


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    import exporters
    from xcam.demo import load_demo_model

    path = tmp_path_factory.mktemp("onnx") / "demo16.onnx"
    exporters.export(load_demo_model(), ["block3"], torch.rand(1, 3, 16, 16), path, format="onnx")
    return path


def _with_metadata(src: Path, dst: Path, edit) -> Path:
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    text = edit(json.loads(props["xcam"]))
    del model.metadata_props[:]
    for key, value in {
        **props,
        "xcam": text if isinstance(text, str) else json.dumps(text),
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(dst))
    return dst


def _set(**fields):
    return lambda meta: {**meta, **fields}


HOSTILE_METADATA = {
    "layers-empty": (_set(layers=[]), "layers"),
    "layers-string": (_set(layers="block3"), "layers"),
    "layers-int": (_set(layers=5), "layers"),
    "layers-unknown": (_set(layers=["nosuch"]), "nosuch"),
    "classes-int": (_set(classes=5), "classes"),
    "classes-ints": (_set(classes=[1, 2, 3, 4]), "classes"),
    "num-classes-string": (_set(num_classes="4"), "num_classes"),
    "output-names-unknown": (_set(output_names=["logits", "block3", "ghost"]), "ghost"),
    "output-names-string": (_set(output_names="logits"), "output_names"),
    "outputs-list": (_set(outputs=[]), "outputs"),
    "mean-string": (_set(mean="0.5"), "mean"),
    "std-zero": (_set(std=[0.0, 0.0, 0.0]), "std"),
    "gradients-no-outputs": (_set(gradients=True), "grad"),
    "gradients-string": (_set(gradients="yes"), "gradients"),
    "input-names-target": (_set(input_names=["input", "target"]), "target"),
    "output-list": (_set(output=[0, 1]), "output"),
    "pre-activation-string": (_set(pre_activation="yes"), "pre_activation"),
    "not-an-object": (lambda meta: [1, 2], "metadata"),
    "not-json": (lambda meta: "{nope", "metadata"),
    "missing-fields": (lambda meta: {"format": "onnx"}, "metadata"),
}


@pytest.mark.parametrize("case", list(HOSTILE_METADATA))
def test_hostile_onnx_metadata_is_one_error_line(runner, small_onnx, img, tmp_path, case) -> None:
    edit, word = HOSTILE_METADATA[case]
    path = _with_metadata(small_onnx, tmp_path / "hostile.onnx", edit)
    with pytest.raises(ModelSpecError, match=r"hostile\.onnx"):
        xcam.load(path)
    one_error(runner.invoke(main, ["layers", str(path)]), 1, "hostile.onnx", word)
    res = explain(runner, str(path), str(img), "--out", str(tmp_path / "o"), "-m", "eigencam")
    one_error(res, 1, "hostile.onnx", word)


def test_the_untouched_small_export_is_fine(runner, small_onnx, img, tmp_path) -> None:
    path = _with_metadata(small_onnx, tmp_path / "same.onnx", lambda meta: meta)
    assert runner.invoke(main, ["layers", str(path)]).exit_code == 0
    res = explain(runner, str(path), str(img), "--out", str(tmp_path / "o"), "-m", "eigencam")
    assert res.exit_code == 0, res.output


# 10. a graph node that asks for 2^43 floats ---------------------------------------------------


def _with_huge_node(src: Path, dst: Path, from_input: bool) -> Path:
    """``logits + sum(T)`` where ``T`` has 2^43 floats (32 TiB): from a constant shape, which
    shape inference sees, or from the input's values, which only running it reveals."""
    model = onnx.load(str(src))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["logits0" if o == "logits" else o for o in node.output]
    if from_input:  # shape = [int(max(x) * 0 + 2^43)]: known only at run time
        graph.initializer.extend(
            [
                helper.make_tensor("huge_zero", TensorProto.FLOAT, [], [0.0]),
                helper.make_tensor("huge_n", TensorProto.FLOAT, [], [float(2**43)]),
                helper.make_tensor("huge_one", TensorProto.INT64, [1], [1]),
            ]
        )
        graph.node.extend(
            [
                helper.make_node("ReduceMax", ["input"], ["huge_m"], keepdims=0),
                helper.make_node("Mul", ["huge_m", "huge_zero"], ["huge_m0"]),
                helper.make_node("Add", ["huge_m0", "huge_n"], ["huge_nf"]),
                helper.make_node("Cast", ["huge_nf"], ["huge_ni"], to=TensorProto.INT64),
                helper.make_node("Reshape", ["huge_ni", "huge_one"], ["huge_shape"]),
            ]
        )
    else:
        graph.initializer.append(helper.make_tensor("huge_shape", TensorProto.INT64, [1], [2**43]))
    graph.node.extend(
        [
            helper.make_node(
                "ConstantOfShape",
                ["huge_shape"],
                ["huge_t"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]),
            ),
            helper.make_node("ReduceSum", ["huge_t"], ["huge_total"], keepdims=0),
            helper.make_node("Add", ["logits0", "huge_total"], ["logits"]),
        ]
    )
    onnx.save(model, str(dst))
    return dst


def test_a_node_asking_for_2_to_the_43_floats_is_refused(runner, small_onnx, img, tmp_path):
    path = _with_huge_node(small_onnx, tmp_path / "huge.onnx", from_input=False)
    with pytest.raises(ModelSpecError, match=r"huge\.onnx"):
        xcam.load(path)
    for args in (
        ["layers", str(path)],
        ["explain", str(path), str(img), "--out", str(tmp_path / "o")],
    ):
        one_error(runner.invoke(main, args), 1, "huge.onnx", "ConstantOfShape", "memory")


@pytest.mark.skipif(
    not Path("/proc/sys/vm/overcommit_memory").is_file()
    or Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1",
    reason="where every allocation succeeds, 32 TiB would be touched instead of refused",
)
def test_a_node_whose_size_only_running_reveals(runner, small_onnx, img, tmp_path) -> None:
    path = _with_huge_node(small_onnx, tmp_path / "sneaky.onnx", from_input=True)
    backend = xcam.load(path)  # nothing to see before it runs
    with pytest.raises(XCamError, match=r"sneaky\.onnx"):
        backend.run(torch.rand(1, 3, 16, 16))
    res = explain(runner, str(path), str(img), "--out", str(tmp_path / "o"))
    one_error(res, 1, "sneaky.onnx", "memory")


# 11. a truncated checkpoint -------------------------------------------------------------------


def _legacy_cut_in_a_name(path: Path) -> Path:
    """An old-format (pickle) checkpoint cut inside the name of a global it pickles: the
    unpickler sees a class it doesn't know ('collec.'), not the end of the file."""
    import io

    from xcam.demo import load_demo_model

    buf = io.BytesIO()
    torch.save(load_demo_model().state_dict(), buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    cut = data.index(b"collections") + len("collec")
    path.write_bytes(data[:cut])
    return path


@pytest.mark.parametrize(
    "how", ["zip-half", "zip-tenth", "legacy-half", "legacy-in-a-name", "empty"]
)
def test_a_truncated_checkpoint_says_so(runner, img, tmp_path, how) -> None:
    from xcam.demo import load_demo_model

    path = tmp_path / "w.pt"
    if how == "legacy-in-a-name":
        _legacy_cut_in_a_name(path)
    elif how == "empty":
        path.write_bytes(b"")
    else:
        torch.save(
            load_demo_model().state_dict(),
            path,
            _use_new_zipfile_serialization=how.startswith("zip"),
        )
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // (10 if how.endswith("tenth") else 2)])
    res = explain(runner, "demo", str(img), "--out", str(tmp_path / "o"), "--weights", str(path))
    line = one_error(res, 1, "w.pt", "truncated or corrupt")
    assert "needs code" not in line and "--trust-weights" not in line


def test_a_garbage_checkpoint_is_not_called_truncated(runner, img, tmp_path) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(b"garbage, not a checkpoint")
    res = explain(runner, "demo", str(img), "--out", str(tmp_path / "o"), "--weights", str(path))
    line = one_error(res, 1, "w.pt", "state dict")
    assert "needs code" not in line


# 12. an export failure shows its root cause ---------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_an_export_failure_shows_the_root_cause(runner, mods, tmp_path, fmt) -> None:
    out = tmp_path / f"m.{fmt}"
    args = ["export", f"{mods}:branchy", "--out", str(out), "--format", fmt, "--input-size", "8"]
    res = runner.invoke(main, [*args, "--no-aoti"] if fmt == "pt2" else args)
    line = one_error(res, 1)
    assert "data-dependent" in line and "torch.where" in line
    # torch's own partial graph and log lines stay out of the terminal (kept for --debug)
    assert "def forward(self" not in res.output and "symbolic_shapes.py" not in res.output
    assert "Next steps" not in line and "step 1/3" not in line.lower()
    assert not out.exists()


# 13. --target-input needs --gradients ---------------------------------------------------------


def test_target_input_without_gradients_is_a_usage_error(runner, tmp_path) -> None:
    out = tmp_path / "m.onnx"
    res = runner.invoke(main, ["export", "demo", "--out", str(out), "--target-input"])
    one_error(res, 2, "--target-input", "--gradients")
    assert not out.exists()


def test_a_format_that_does_not_match_the_suffix_is_a_usage_error(runner, tmp_path) -> None:
    out = tmp_path / "m.onnx"
    res = runner.invoke(main, ["export", "demo", "--out", str(out), "--format", "torchscript"])
    one_error(res, 2, "--out", "m.onnx", "torchscript")
    assert not out.exists()


# 14. warnings on one line ---------------------------------------------------------------------


def test_warnings_print_as_one_line(runner, mods, img, tmp_path) -> None:
    before = warnings.showwarning
    res = explain(
        runner, f"{mods}:softnet", str(img), "--out", str(tmp_path / "o"), "--input-size", "8"
    )
    assert res.exit_code == 0, res.output
    found = [line for line in res.output.splitlines() if "Softmax" in line]
    assert found and all(line.startswith("Warning: ") for line in found), res.output
    assert "UserWarning" not in res.output and not re.search(r"\.py:\d+", res.output), res.output
    assert warnings.showwarning is before  # the library's own warnings are untouched


def test_the_library_still_warns_as_python_does(mods) -> None:
    import importlib

    model = importlib.import_module(mods).softnet()
    with pytest.warns(UserWarning, match="Softmax"):
        xcam.GradCAM(model, "body")


# 15. the README's in-graph example (now in docs/: the export in cli.md, the call in library.md) --


def test_the_readme_in_graph_example_runs(runner, mods, tmp_path, monkeypatch) -> None:
    docs = Path(__file__).parents[1] / "docs"
    cli, library = (docs / "cli.md").read_text(), (docs / "library.md").read_text()
    commands = cli.replace("\\\n", " ").splitlines()  # continued lines joined
    line = next(ln for ln in commands if ln.startswith("xcam export") and "r50_cam.onnx" in ln)
    example = next(ln for ln in library.splitlines() if 'xcam.load("r50_cam.onnx")' in ln)
    argv = shlex.split(line.split("#")[0])[1:]
    assert "--gradients" in argv and "--target-input" in argv
    # the same command on a small 10-class model instead of resnet50 with its weights
    argv = [a for a in argv if a not in ("--weights", "r50.pth")]
    argv[argv.index("torchvision:resnet50")] = f"{mods}:ten"
    argv[argv.index("layer4")] = "body"
    argv += ["--input-size", "16"]
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(main, argv)
    assert res.exit_code == 0, res.output
    x = torch.rand(2, 3, 16, 16)
    scope = {"xcam": xcam, "x": x}
    result = eval(example.split("#")[0].strip(), scope)
    assert result.targets.tolist() == [3, 7]
    assert tuple(result.maps.shape) == (2, 16, 16)


# found by a review as a new user ---------------------------------------------------------------


def test_a_class_out_of_range_is_bad_usage_before_any_work(runner, img, tmp_path) -> None:
    out = tmp_path / "o"
    res = explain(runner, "demo", str(img), "--class", "5", "--out", str(out))
    one_error(res, 2, "--class", "out of range", "4 classes")
    assert not out.exists()  # nothing written: the corrected run is not refused
    assert explain(runner, "demo", str(img), "--out", str(out)).exit_code == 0


def test_a_run_that_failed_before_its_first_image_does_not_block_the_next(img, tmp_path) -> None:
    """Its record holds nothing: the next run takes the folder without --overwrite."""
    import xcam
    from xcam.models import load_model
    from xcam.pipeline import explain_files

    info = load_model("demo")
    out = tmp_path / "o"
    with pytest.raises(xcam.TargetError, match="out of range"):
        explain_files(info, [img], xcam.GradCAM(info.model, "block3"), out, targets=5)
    report = explain_files(info, [img], xcam.GradCAM(info.model, "block3"), out)
    assert len(report.items) == 1
