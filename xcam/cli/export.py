"""``xcam export``: a model with its target-layer activations as named outputs, in a file."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from xcam.cli.loading import load
from xcam.cli.messages import fail, os_reason
from xcam.cli.options import PRE_ACTIVATION_HELP, parse_output, stats_options, trust_options
from xcam.cli.probe import probe
from xcam.core.artifact import FORMATS


@click.command()
@trust_options
@click.argument("model")
@click.option(
    "--layer",
    "-l",
    "layer",
    multiple=True,
    help="Layer to output (repeatable); default: the last spatial one.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(FORMATS)),
    default="onnx",
    show_default=True,
)
@click.option("--out", "-o", type=click.Path(dir_okay=False), required=True, help="File to write.")
@click.option("--input-size", help="Input H or H,W (default: the model's).")
@stats_options
@click.option("--opset", type=click.IntRange(7), help="ONNX opset (default: the exporter's).")
@click.option("--weights", type=click.Path(dir_okay=False), help="State dict for the model.")
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Load the file back and compare with eager PyTorch at batch 1, 2, 3.",
)
@click.option("--dynamic-batch/--static-batch", default=True, show_default=True)
@click.option("--dynamic-spatial", is_flag=True, help="Also make H and W dynamic.")
@click.option("--output", "output", help="Index or key of the logits in a tuple/dict output.")
@click.option(
    "--aoti/--no-aoti",
    default=None,
    help="pt2: compile with AOTInductor (default: when a C++ compiler is present).",
)
@click.option(
    "--gradients",
    is_flag=True,
    help="Also output each layer's gradient and the Grad-CAM map, computed in the graph.",
)
@click.option(
    "--target-input",
    is_flag=True,
    help="With --gradients: a second input 'target' (class per sample, -1 = top-1).",
)
@click.option("--pre-activation", is_flag=True, help=PRE_ACTIVATION_HELP)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--triton-repo",
    type=click.Path(file_okay=False),
    help="Also write a Triton model repository there: <name>/config.pbtxt, <name>/1/model.onnx.",
)
@click.option("--triton-name", help="The model's name in --triton-repo (default: --out's stem).")
def export(
    model,
    layer,
    fmt,
    out,
    input_size,
    mean,
    std,
    opset,
    weights,
    check,
    dynamic_batch,
    dynamic_spatial,
    output,
    aoti,
    gradients,
    target_input,
    pre_activation,
    device,
    triton_repo,
    triton_name,
) -> None:
    """Export MODEL with its target-layer activations as named outputs.

    \b
    The file's outputs are 'logits' and one per --layer; its metadata records the
    layers, input size, normalisation and classes, so `xcam explain FILE` and
    xcam.load(FILE) need nothing else. A mismatch with eager PyTorch is an error.
    With --gradients the file also outputs '<layer>.grad' and 'gradcam', so that
    Grad-CAM runs from the file alone (xcam.lite needs no torch at all).
    """
    if target_input and not gradients:
        raise click.BadParameter(
            "needs --gradients: the target input chooses the class of the in-graph gradients",
            param_hint="--target-input",
        )
    _check_paths(model, out, fmt, check)
    triton = _triton_target(fmt, out, triton_repo, triton_name)
    info = load(model, weights, device, input_size, mean=mean, std=std, stats=True)
    given = list(layer) or ([info.default_layer] if info.default_layer else [])
    probe(info, model, input_size, given)
    example = _example(info, device)
    click.echo(f"exporting {model} to {fmt} ...", err=True)
    report = _write(
        info,
        model,
        list(layer) or info.default_layer,
        example,
        out,
        format=fmt,
        gradients=gradients,
        dynamic_batch=dynamic_batch,
        opset=opset,
        check=check,
        output=parse_output(output),
        dynamic_spatial=dynamic_spatial,
        aoti=aoti,
        target_input=target_input,
        pre_activation=pre_activation,
    )
    click.echo(str(report))
    if triton is not None:
        from exporters.triton import write_repository
        from xcam.core.errors import XCamError

        try:
            folder = write_repository(out, triton.parent, triton.name)
        except XCamError as e:
            fail(str(e))
        except OSError as e:
            fail(f"can't write the Triton repository {triton.parent}: {os_reason(e)}")
        click.echo(f"Triton model repository: {folder} (config.pbtxt, 1/model.onnx)")


def _triton_target(fmt: str, out: str, repo: str | None, name: str | None) -> Path | None:
    """``--triton-repo``'s model folder, refused before anything is exported: Triton serves
    the ONNX file, and an existing model folder is not replaced."""
    if repo is None:
        if name is not None:
            raise click.BadParameter("needs --triton-repo", param_hint="--triton-name")
        return None
    if fmt != "onnx":
        raise click.BadParameter(
            f"a Triton repository holds the ONNX file; leave out --format {fmt}",
            param_hint="--triton-repo",
        )
    from exporters.errors import ExportError
    from exporters.triton import model_name

    try:
        chosen = model_name(name or Path(out).stem)
    except ExportError as e:
        raise click.BadParameter(str(e), param_hint="--triton-name") from None
    if name is not None and chosen != name:  # clients name the model: not changed quietly
        raise click.BadParameter(
            f"{name!r} is not a Triton model name: letters, digits, '_', '-' and '.' "
            f"(such as {chosen!r})",
            param_hint="--triton-name",
        )
    folder = Path(repo) / chosen
    if folder.exists():
        fail(f"{folder} already exists: remove it, or pass another --triton-name")
    return folder


def _check_paths(model: str, out: str, fmt: str, check: bool) -> None:
    """Before anything loads: --out has --format's suffix (the check loads it back by it),
    MODEL is not already an exported file, and --out's folder can be made."""
    from xcam.core.artifact import FORMATS, format_of

    named, wanted = format_of(out), FORMATS[fmt]
    if (named is not None and named.name != fmt) or (named is None and check):
        fix = f"name it {Path(out).stem}{wanted.suffix}"
        if named is not None:
            fix += f" or pass --format {named.name}"
        elif check:
            fix += " (the check loads it back by its suffix), or pass --no-check"
        raise click.BadParameter(
            f"{Path(out).name} lacks the {fmt} format's suffix ({', '.join(wanted.suffixes)}): "
            + fix,
            param_hint="--out",
        )
    if format_of(model) is not None:  # refused before anything reads it
        fail(f"{model} is already an exported file; export from the original model")
    parent = Path(out).absolute().parent
    blocked = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        fail(f"can't write {out}: {blocked} is a file, not a folder")


def _example(info, device: str):
    """The example batch the export traces: 2 fixed random images of MODEL's input size."""
    import torch

    h, w = info.input_size
    example = torch.randn(2, info.channels, h, w, generator=torch.Generator().manual_seed(0))
    return example.to(device=device, dtype=info.input_dtype)  # a model.half(): float16


def _write(info, spec: str, layers, example, out: str, **options):
    """``exporters.export`` with ``options``, MODEL's normalisation and classes in the
    file's metadata; its report. Torch's own output is held back (``--debug`` shows it)."""
    import exporters
    from xcam.core.errors import XCamError

    try:
        with _exporter_output(debug=click.get_current_context().meta.get("xcam.debug", False)):
            return exporters.export(
                info.model,
                layers,
                example,
                out,
                mean=info.mean,
                std=info.std,
                classes=info.classes,
                model_spec=spec,
                **options,
            )
    except XCamError as e:
        fail(str(e))
    except OSError as e:
        fail(f"can't write {out}: {os_reason(e)}")


@contextlib.contextmanager
def _exporter_output(debug: bool):
    """While torch's exporters run, their own terminal output (a failing trace prints its
    partial graph; symbolic-shape log lines) is held back: the root cause is in xcam's one
    ``Error:`` line. ``--debug`` shows it all."""
    import io
    import logging

    if debug:
        yield
        return
    held = io.StringIO()
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(held), contextlib.redirect_stderr(held):
            yield
    finally:
        logger.setLevel(level)
