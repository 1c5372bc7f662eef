"""The command line, fuzzed (issue 12): random commands among ``layers``, ``explain``,
``export`` and ``filters`` with random options, values and files. Whatever they are, a run
exits 0, or exits 1 or 2 with an ``Error:`` line — never a traceback."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xcam.cli import main

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

METHODS = ["gradcam", "gradcam++", "eigencam", "scorecam", "reciprocam", "guidedbackprop", "cam"]
GARBAGE = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=6,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """The files a fuzzed command may be given: real, broken, missing."""
    import exporters
    from xcam.demo import load_demo_model, sample_images

    folder = tmp_path_factory.mktemp("fuzz_files")
    onnx_path = folder / "demo16.onnx"
    exporters.export(
        load_demo_model(), ["block3"], torch.rand(1, 3, 16, 16), onnx_path, gradients=True
    )
    png = folder / "circle.png"
    shutil.copy(sample_images()[0], png)
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(png.read_bytes()[:200])
    garbage = folder / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage, not a protobuf" * 8)
    weights = folder / "cut.pt"
    torch.save(load_demo_model().state_dict(), weights)
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    images = folder / "imgs"
    images.mkdir()
    shutil.copy(png, images / "a.png")
    shutil.copy(corrupt, images / "b.png")
    return {
        "onnx": str(onnx_path),
        "png": str(png),
        "corrupt": str(corrupt),
        "garbage": str(garbage),
        "cut_weights": str(weights),
        "missing": str(folder / "missing.onnx"),
        "missing_png": str(folder / "missing.png"),
        "folder": str(images),
    }


def values(good: list[str], bad: list[str]) -> st.SearchStrategy[str]:
    """Mostly a value that works, sometimes one that doesn't, or garbage."""
    return st.integers(0, 9).flatmap(
        lambda roll: (
            st.sampled_from(good) if roll < 7 else st.sampled_from(bad) if roll < 9 else GARBAGE
        )
    )


SIZES = values(["8", "16", "16,24", "24x16"], ["1", "2", "3", "0", "-4", "9999999", "abc", "16,"])
LAYERS = values(["block3", "block2", "block1.0", "block3.5"], ["fc", "pool", "nosuch", ""])
CLASSES = values(["0", "3", "-1"], ["4", "positive", "99999999999999999999999", "x"])


@st.composite
def commands(draw, files: dict[str, str]) -> list[str]:
    cmd = draw(st.sampled_from(["layers", "explain", "export", "filters"]))
    bad = [files["garbage"], files["missing"], ":", "a:", "torchvision:nosuch", "os:getcwd"]
    model = draw(values(["demo", "demo", "demo", files["onnx"]], bad).filter(bool))
    args = [cmd, model]
    options: dict[str, st.SearchStrategy] = {"--input-size": SIZES}
    if draw(st.integers(0, 9)) == 0:  # rarely: every weights file here is broken
        bad_weights = [files["cut_weights"], files["garbage"], files["missing"]]
        args += ["--weights", draw(st.sampled_from(bad_weights))]
    if cmd == "explain":
        image = draw(st.sampled_from(["png", "png", "corrupt", "folder", "missing_png", "garbage"]))
        args.append(files[image])
        options.update(
            {
                "--method": values(METHODS, ["nosuch"]),
                "--layer": LAYERS,
                "--class": CLASSES,
                "--colormap": values(["jet", "viridis"], ["nosuch", ""]),
                "--backend": st.sampled_from(["eager", "eager", "onnxruntime", "nosuch"]),
                "--batch-size": values(["1", "2"], ["0", "-1"]),
                "--alpha": values(["0.5", "1"], ["2", "nan"]),
                "--output": values(["0"], ["1", "logits"]),
            }
        )
    elif cmd == "export":
        options.update(
            {
                "--layer": LAYERS,
                "--format": st.sampled_from(["onnx", "onnx", "torchscript", "tflite"]),
                "--opset": values(["17", "18"], ["3", "x"]),
            }
        )
    elif cmd == "filters":
        options.update(
            {
                "--layer": LAYERS,
                "--image": st.sampled_from([files["png"], files["corrupt"], files["missing_png"]]),
                "--channels": values(["0", "0,1"], ["999", "-1", "a"]),
                "--steps": values(["0", "1", "2"], ["-1"]),
                "--max-filters": values(["1", "4"], ["0"]),
            }
        )
    for name, strategy in options.items():
        if draw(st.integers(0, 3)) == 0:
            args += [name, draw(strategy)]
    if cmd == "filters" and "--layer" not in args:  # required: without it, only usage errors
        args += ["--layer", draw(LAYERS)]
    if cmd == "export":
        for flag in ("--gradients", "--target-input", "--no-check", "--dynamic-spatial"):
            if draw(st.integers(0, 3)) == 0:
                args.append(flag)
    if cmd == "explain" and draw(st.integers(0, 5)) == 0:
        args.append("--aug-smooth")
    if cmd == "filters" and "--channels" in args and draw(st.booleans()):
        args += ["--steps", "1"]  # keep the activation maximisation short
    return args


def check(args: list[str], out: Path) -> None:
    if args[0] in ("explain", "filters"):
        args = [*args, "--out", str(out / "o")]
    elif args[0] == "export":
        fmt = args[args.index("--format") + 1] if "--format" in args else "onnx"
        args = [*args, "--out", str(out / f"m.{'ts' if fmt == 'torchscript' else 'onnx'}")]
    res = CliRunner().invoke(main, args)
    shown = f"xcam {' '.join(args)}\n{res.output}"
    assert "Traceback" not in res.output, shown
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        shown + f"\n{res.exception!r}"
    )
    assert res.exit_code in (0, 1, 2), shown
    if res.exit_code != 0:
        assert "Error:" in res.output, shown


def test_the_fuzzed_command_line_fails_only_in_one_line(files) -> None:
    @SETTINGS
    @given(args=commands(files))
    def run(args: list[str]) -> None:
        out = Path(tempfile.mkdtemp(prefix="xcam-fuzz-"))
        try:
            check(args, out)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    run()


@pytest.mark.parametrize(
    "args",
    [
        ["explain", "demo", "{png}", "--layer", "fc"],
        ["explain", "{onnx}", "{png}", "--input-size", "1"],
        ["explain", "{onnx}", "{corrupt}", "--class", "3"],
        ["explain", "{garbage}", "{png}"],
        ["layers", "{garbage}"],
        ["export", "demo", "--input-size", "2"],
        ["filters", "demo", "--layer", "fc", "--image", "{png}"],
        ["filters", "demo", "--layer", "block1.0", "--channels", "999", "--steps", "1"],
    ],
)
def test_known_hard_cases(files, tmp_path, args) -> None:
    check([a.format(**files) for a in args], tmp_path)
