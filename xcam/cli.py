"""The ``xcam`` command line (click). Every command has ``--help``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from xcam import __version__

MODEL_HELP = (
    "MODEL is 'demo' (the bundled trained model), 'torchvision:NAME' (random weights unless "
    "--weights FILE), or 'package.module:factory'."
)


def _fail(message: str) -> None:
    raise click.ClickException(message)


def _parse_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.replace("x", ",").split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not H or H,W", param_hint="--input-size") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise click.BadParameter(f"{value!r} is not H or H,W", param_hint="--input-size")
    return parts[0], parts[1]


def _parse_target(value: str | None):
    if value is None:
        return None
    if value.lower() in ("positive", "negative", "pos", "neg"):
        return value.lower()
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a class index or positive/negative", param_hint="--class"
        ) from None


def _load(spec: str, weights: str | None, device: str, input_size: str | None):
    from xcam.errors import XCamError
    from xcam.models import load_model

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            _fail("--device cuda was asked for but no CUDA device is available")
    try:
        info = load_model(spec, weights=weights, device=device)
    except XCamError as e:
        _fail(str(e))
    size = _parse_size(input_size)
    if size is not None:
        info.input_size = size
    for note in info.notes:
        click.echo(f"note: {note}", err=True)
    return info


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xcam")
def main() -> None:
    """Explain PyTorch CNN decisions: Grad-CAM and family, from eager or exported models."""


@main.command()
@click.argument("model")
@click.option("--weights", type=click.Path(dir_okay=False), help="State dict for the model.")
@click.option("--input-size", help="Probe input size H or H,W (default: the model's).")
def layers(model: str, weights: str | None, input_size: str | None) -> None:
    """List candidate target layers of MODEL with their output shapes.

    The layer marked * is the default (the last one with a spatial output).
    """
    import torch

    from xcam.layers import candidate_layers

    info = _load(model, weights, "cpu", input_size)
    h, w = info.input_size
    try:
        infos = candidate_layers(info.model, torch.zeros(1, 3, h, w))
    except Exception as e:
        _fail(f"{model} failed on a probe input of size {h}x{w}: {e}")
    if not infos:
        _fail(f"{model} has no layer with a 4-D output")
    default = [i for i in infos if i.spatial] or infos
    name_w = max(len(i.name) for i in infos)
    kind_w = max(len(i.kind) for i in infos)
    click.echo(f"layers of {model} for a 1x3x{h}x{w} input (* = default):")
    for i in infos:
        mark = "*" if i is default[-1] else " "
        shape = "x".join(map(str, i.shape))
        click.echo(f"{mark} {i.name:<{name_w}}  {i.kind:<{kind_w}}  {shape}")


@main.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True)
@click.option("--method", "-m", default="gradcam", show_default=True, help="Method name.")
@click.option("--layer", "-l", "layer", multiple=True, help="Target layer (repeat to fuse).")
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True, help="Output dir.")
@click.option(
    "--class",
    "target",
    help="Class index to explain (default: top-1), or positive/negative for a single-logit head.",
)
@click.option("--weights", type=click.Path(dir_okay=False), help="State dict for the model.")
@click.option("--input-size", help="Resize images to H or H,W (default: the model's).")
@click.option(
    "--backend",
    type=click.Choice(["eager", "torchscript", "onnxruntime", "pt2"]),
    default="eager",
    show_default=True,
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Heatmap weight in the overlay.",
)
@click.option("--colormap", default="jet", show_default=True, help="A matplotlib colormap.")
def explain(
    model,
    images,
    method,
    layer,
    out,
    target,
    weights,
    input_size,
    backend,
    device,
    batch_size,
    alpha,
    colormap,
) -> None:
    """Explain IMAGES (files or folders) with MODEL: overlay PNGs, .npy maps, predictions.json.

    \b
    MODEL is 'demo', 'torchvision:NAME' (random weights unless --weights FILE)
    or 'package.module:factory'.
    Unreadable images are reported and skipped; the exit code is then 1.
    """
    from xcam.errors import XCamError
    from xcam.images import find_images
    from xcam.methods import get_method
    from xcam.pipeline import explain_files

    if backend != "eager":
        _fail(f"backend {backend!r} is not available in this version; use --backend eager")
    targets = _parse_target(target)
    try:
        method_cls = get_method(method)
    except XCamError as e:
        raise click.BadParameter(str(e), param_hint="--method") from None
    info = _load(model, weights, device, input_size)
    paths = find_images(images)
    if not paths:
        _fail("no images found in " + ", ".join(images))
    try:
        explainer = method_cls(info.model, list(layer) or info.default_layer)
        with click.progressbar(length=len(paths), label="explaining", file=sys.stderr) as bar:
            report = explain_files(
                info,
                paths,
                explainer,
                Path(out),
                targets,
                batch_size,
                alpha,
                colormap,
                device,
                on_progress=bar.update,
            )
    except XCamError as e:
        _fail(str(e))
    _summarise(report)


def _summarise(report) -> None:
    click.echo(f"wrote {len(report.items)} overlay(s) and map(s) to {report.out}")
    click.echo(f"predictions: {report.predictions}")
    for err in report.errors:
        click.echo(f"error: {err['error']}", err=True)
    if report.errors:
        click.echo(f"{len(report.errors)} image(s) could not be explained", err=True)
        sys.exit(1)


@main.command()
@click.option(
    "--out", "-o", type=click.Path(file_okay=False), default="demo-out", show_default=True
)
def demo(out: str) -> None:
    """Run the whole job on the bundled demo model and its sample images."""
    from xcam.demo.run import run_demo

    paths = run_demo(Path(out), echo=click.echo)
    click.echo("wrote:")
    for p in paths:
        click.echo(f"  {p}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def export() -> None:
    """Export MODEL with target-layer activations as outputs (ONNX, TorchScript, pt2).

    Not implemented in this version.
    """
    _fail("`xcam export` is not implemented yet in this version")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def bench() -> None:
    """Latency of methods x backends x devices x batch sizes.

    Not implemented in this version.
    """
    _fail("`xcam bench` is not implemented yet in this version")


if __name__ == "__main__":  # pragma: no cover
    main()
