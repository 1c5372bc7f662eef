"""The documentation's examples run (issue 16, item 5): README.md and every page of docs/.

Through Sybil's Markdown parser, every ```python block of a page runs, in order, in the
page's own namespace, together with its invisible set-up blocks (``<!-- invisible-code-block:
python … -->``, HTML comments that a code host does not show), in a scratch folder holding the
files the examples name. Every line of a ```bash block that starts with ``xcam `` is parsed
by the real command line — the command exists, each option exists and its value converts —
and, unless ``PARSE_ONLY`` names it, runs through click's ``CliRunner``; the test checks its
exit code and the files it promises. So the pages can't drift from the library or the CLI.

The models the examples name are small seeded stand-ins (``tests/doc_stand_ins.py``):
``r50_cam.onnx`` is a 10-class CNN exported with in-graph gradients and a target input, as
the command-line page exports resnet50; ``resnet18.pth`` a seeded state dict;
``mypkg.nets:NAME`` imports the stand-ins. Each command line runs as it would alone: its
``--out`` is cleared first (the examples share ``out/``, and a different run into a folder
is refused).
"""

from __future__ import annotations

import ast
import builtins
import inspect
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sybil import Document
from sybil.parsers.markdown import CodeBlockParser

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# command lines that are parsed but not run here, each with the reason (a substring of the
# line: every entry must still match a line of the docs)
PARSE_ONLY = {
    "xcam export torchvision:resnet50": "resnet50 at full size, checked at three batches "
    "(and compiled by AOTInductor for .pt2): minutes; tests/test_cli_errors.py runs the "
    "in-graph export on a small model, tests/test_export.py the formats",
    "xcam explain torchvision:swin_t": "a full-size Swin-T and 110 MB of weights to write "
    "first (~10 s); tests/test_tokens.py explains small Swins",
    "--engine ray": "starts a Ray cluster (~20 s) or needs one; tests/test_dataset_ray.py",
    "xcam serve": "a server that runs until stopped; tests/test_serve.py serves",
    "xcam bench": "a minute (--quick) to an hour (the full preset), and --devices cuda needs "
    "a GPU; tests/test_bench.py runs small ones",
}
# Python lines that are checked but not run: the names they use exist and their calls' arguments
# bind to the signatures (a substring of the line, as above)
NOT_RUN = {
    'engine="ray"': "starts a Ray cluster (~20 s); tests/test_dataset_ray.py runs it",
    '"aoti": True': "AOTInductor compiles C++ for about half a minute; "
    "tests/test_export.py::test_pt2_aoti_package runs it",
}


def _exempt(line: str, table: dict[str, str]) -> str | None:
    return next((reason for key, reason in table.items() if key in line), None)


# Python ----------------------------------------------------------------------------------------


def _resolve(node: ast.expr, namespace: dict):
    """The object a dotted name (``xcam.GradCAM``) names in ``namespace``, or None."""
    if isinstance(node, ast.Name):
        return namespace.get(node.id, getattr(builtins, node.id, None))
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, namespace)
        return None if base is None else getattr(base, node.attr)
    return None


def _check_not_run(line: str, namespace: dict) -> None:
    """The line's names are defined and each call to a named callable binds its arguments."""
    tree = ast.parse(line.strip())
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            assert node.id in namespace or hasattr(builtins, node.id), (line, node.id)
        if isinstance(node, ast.Call):
            target = _resolve(node.func, namespace)
            if target is not None:
                kwargs = {k.arg: None for k in node.keywords if k.arg}
                inspect.signature(target).bind(*[None] * len(node.args), **kwargs)


def run_python(example) -> None:
    """Sybil's evaluator for Python blocks, but the lines of ``NOT_RUN`` are checked, not run."""
    __tracebackhide__ = True
    lines = str(example.parsed).splitlines()
    for i, line in enumerate(lines):
        if _exempt(line, NOT_RUN):
            _check_not_run(line, example.namespace)
            lines[i] = line[: len(line) - len(line.lstrip())] + "pass"
    source = "\n" * (example.line + example.parsed.line_offset) + "\n".join(lines)
    exec(compile(source, example.path, "exec", dont_inherit=True), example.namespace)
    example.namespace.pop("__builtins__", None)


# the command line --------------------------------------------------------------------------------


def command_lines(text: str) -> list[str]:
    """A bash block's ``xcam`` lines, continuation lines joined, comments dropped."""
    joined = text.replace("\\\n", " ").splitlines()
    return [ln.split(" #")[0].strip() for ln in joined if ln.startswith("xcam ")]


def parse(argv: list[str]):
    """``argv`` (after ``xcam``) parsed by the real command line, without running it: the
    sub-command's name and its parameters."""
    from xcam.cli import main

    group = main.make_context("xcam", list(argv))
    name, command, rest = main.resolve_command(
        group, [*getattr(group, "_protected_args", []), *group.args]
    )
    return name, command.make_context(name, rest, parent=group).params


def _written(row) -> list[str]:
    """The files a ``predictions.json`` row names (maps, overlays, per label, per box)."""
    if isinstance(row, dict):
        names = [v for k, v in row.items() if k in ("map", "overlay") and isinstance(v, str)]
        return names + [n for v in row.values() if isinstance(v, list) for n in _written(v)]
    if isinstance(row, list):
        return [n for item in row for n in _written(item)]
    return []


def check_promised(name: str, params: dict, output: str) -> None:
    """What the command promises is there."""
    if name == "explain":
        out = Path(params["out"])
        record = json.loads((out / "predictions.json").read_text())
        assert record["images"] and not record["errors"], record["errors"]
        files = _written(record["images"])
        assert files and all((out / f).is_file() for f in files), files
        assert any(f.endswith(".npy") for f in files)
        assert any(f.endswith(".png") for f in files) == params["overlays"]
        assert (out / "report.html").is_file() == params["report"]
    elif name == "export":
        assert Path(params["out"]).is_file()
    elif name == "filters":
        from xcam.models import load_model

        layer, out = params["layer"], Path(params["out"])
        module = dict(load_model(params["model"]).model.named_modules())[layer]
        expected = [f"kernels_{layer}.png"] if isinstance(module, torch.nn.Conv2d) else []
        expected += [f"features_{layer}_{Path(i).stem}.png" for i in params["image"]]
        expected += [f"maximise_{layer}.png"] if params["channels"] else []
        assert expected and all((out / f).is_file() for f in expected), sorted(os.listdir(out))
    elif name == "demo":
        out = Path(params["out"])
        assert (out / "predictions.json").is_file() and (out / "grid_methods_layers.png").is_file()
    elif name == "layers":  # an exported file's outputs, or a model's layers, its default marked
        exported = Path(params["model"]).suffix in (".onnx", ".pt2", ".ts")
        assert ("logits" if exported else "*") in output, output
    else:
        raise AssertionError(f"no check for `xcam {name}`: add one")


# what a few lines' comments promise, checked in their output
SAYS = {"xcam layers torchvision:vit_b_16": "cls+grid 14x14"}


def run_bash(example) -> None:
    """Sybil's evaluator for bash blocks: each ``xcam`` line parsed, then run unless exempt."""
    from click.testing import CliRunner

    from xcam.cli import main

    for line in command_lines(str(example.parsed)):
        argv = shlex.split(line)[1:]
        name, params = parse(argv)
        if _exempt(line, PARSE_ONLY):
            continue
        out = Path(params.get("out") or "")
        if params.get("out") and out.is_dir():
            shutil.rmtree(out)
        elif params.get("out") and out.exists():
            out.unlink()
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 0, f"{line}\n{result.output}"
        check_promised(name, params, result.output)
        if line in SAYS:
            assert SAYS[line] in result.output, result.output


PARSERS = [CodeBlockParser("python", run_python), CodeBlockParser("bash", run_bash)]


# the files the examples name ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Made once: images and folders of images, a manifest with labels, a region mask,
    ``resnet18.pth``, ``r50_cam.onnx`` and the ``mypkg.nets`` of the command-line page."""
    import torchvision
    from doc_stand_ins import ten

    import exporters
    from xcam.demo import sample_images

    root = tmp_path_factory.mktemp("doc_files")
    samples = sample_images()
    for folder in ("imgs", "path/to/images"):
        (root / folder).mkdir(parents=True)
        for p in samples[:3]:
            shutil.copy(p, root / folder / p.name)
    shutil.copy(samples[0], root / "img.png")
    shutil.copy(samples[1], root / "cat.png")
    Image.open(samples[2]).convert("RGB").save(root / "cat.jpg")
    (root / "xrays").mkdir()
    for p in samples[:2]:
        Image.open(p).convert("L").save(root / "xrays" / p.name)
    rows = ["path,label"]
    for i, p in enumerate(samples[:4]):  # val/<shape>/<name>.jpg, labelled with class indices
        (root / "val" / p.stem.split("_")[0]).mkdir(parents=True, exist_ok=True)
        Image.open(p).convert("RGB").save(root / "val" / p.stem.split("_")[0] / f"{p.stem}.jpg")
        rows.append(f"val/{p.stem.split('_')[0]}/{p.stem}.jpg,{i}")
    (root / "val.csv").write_text("\n".join(rows) + "\n")
    region = np.zeros((128, 128), np.uint8)
    region[32:96, 32:96] = 255
    Image.fromarray(region).save(root / "roi.png")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), root / "resnet18.pth")
    exporters.export(
        ten(),
        ["layer4"],
        torch.rand(2, 3, 64, 64),
        root / "r50_cam.onnx",
        gradients=True,
        target_input=True,
    )
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "nets.py").write_text(
        "from doc_stand_ins import chestxray, deeplab, detector, vit, xray  # noqa: F401\n"
    )
    return root


@pytest.fixture()
def workdir(files, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the files (hard links where the file system allows), as the cwd."""
    work = tmp_path / "work"

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(files, work, copy_function=link)
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    yield work
    for name in ("mypkg.nets", "mypkg"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_examples_of_a_page_run(page: Path, workdir: Path, monkeypatch) -> None:
    document = Document.parse(str(page), *PARSERS)
    document.namespace["monkeypatch"] = monkeypatch
    for example in document.examples():
        example.evaluate()


# the pages themselves ---------------------------------------------------------------------------


def _code_lines(language: str) -> list[str]:
    found = []
    for page in PAGES:
        blocks = re.findall(rf"```{language}\n(.*?)```", page.read_text(), re.S)
        for block in blocks:
            found += command_lines(block) if language == "bash" else block.splitlines()
    return found


def test_every_exemption_still_names_a_line() -> None:
    """An exemption whose line left the docs goes too, so the lists stay short and true."""
    bash, python = _code_lines("bash"), _code_lines("python")
    for key in PARSE_ONLY:
        assert any(key in line for line in bash), key
    for key in NOT_RUN:
        assert any(key in line for line in python), key


def test_the_readme_opens_with_the_two_set_up_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)```", text, re.S)
    assert text.startswith("# xcam\n") and first is not None
    commands = [ln.split("#")[0].strip() for ln in first.group(1).splitlines()]
    assert commands == ["python3 scripts/dev.py demo", "python3 scripts/dev.py test"]


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_and_pictures_point_at_what_exists(page: Path) -> None:
    text = page.read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page.name}: {target}"
    if page.parent.name == "docs":  # each page opens with the way to the others
        nav = text.splitlines()[2]
        assert nav.startswith("[README](../README.md) · "), nav
