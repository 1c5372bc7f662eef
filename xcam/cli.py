"""The ``xcam`` command line (click). Every command has ``--help``."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
import traceback
from pathlib import Path

import click

from xcam import __version__
from xcam.core.artifact import MAX_SIDE


def _fail(message: str) -> None:
    """A user error: one line, no traceback (``xcam --debug`` prints the one behind it)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get("xcam.debug") and sys.exc_info()[0] is not None:
        traceback.print_exc()
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
    if max(parts) > MAX_SIDE:
        raise click.BadParameter(
            f"{value!r} is above the largest side xcam takes ({MAX_SIDE})",
            param_hint="--input-size",
        )
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


def _parse_output(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def _trust_options(command):
    """``--trust-weights`` and ``--trust-code``: explicit opt-ins for files that run code."""

    @functools.wraps(command)
    def wrapper(*args, trust_weights: bool, trust_code: bool, **kwargs):
        meta = click.get_current_context().meta
        meta["xcam.trust_weights"] = trust_weights
        meta["xcam.trust_code"] = trust_code
        return command(*args, **kwargs)

    wrapper = click.option(
        "--trust-weights",
        is_flag=True,
        help="Load a --weights checkpoint that needs code to unpickle (runs that code).",
    )(wrapper)
    return click.option(
        "--trust-code",
        "--trust-torchscript",
        "trust_code",
        is_flag=True,
        help="Allow a MODEL file that runs code when it loads (TorchScript, .pt2).",
    )(wrapper)


def _load(spec: str, weights: str | None, device: str, input_size: str | None):
    from xcam.errors import XCamError
    from xcam.models import load_model

    meta = click.get_current_context().meta
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            _fail("--device cuda was asked for but no CUDA device is available")
    try:
        info = load_model(
            spec,
            weights=weights,
            device=device,
            trust_weights=meta.get("xcam.trust_weights", False),
            trust_code=meta.get("xcam.trust_code", False),
        )
    except XCamError as e:
        _fail(str(e))
    size = _parse_size(input_size)
    if size is not None:
        info.input_size = size
    for note in info.notes:
        click.echo(f"note: {note}", err=True)
    return info


class _MethodOption(click.Option):
    """``--method``: its help lists the registered methods (imported only for --help)."""

    def get_help_record(self, ctx: click.Context):
        from xcam.methods import list_methods

        self.help = "Method: " + ", ".join(list_methods()) + "."
        return super().get_help_record(ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xcam")
@click.option("--debug", is_flag=True, help="Print the traceback behind an error message.")
def main(debug: bool) -> None:
    """Explain PyTorch CNN decisions: Grad-CAM and family, from eager or exported models."""
    ctx = click.get_current_context()
    ctx.meta["xcam.debug"] = debug
    ctx.with_resource(_terminate_cleanly())


@contextlib.contextmanager
def _terminate_cleanly():
    """SIGTERM ends a command as Ctrl-C does: ``finally`` blocks run, so temporary files
    go, the output folder's lock is released and the job's record is written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@main.command()
@_trust_options
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
    from xcam.backends import Backend

    if isinstance(info.model, Backend):
        meta = info.model.metadata
        click.echo(f"outputs of {model} ({meta.format}, exported by {meta.exporter}):")
        for name in meta.output_names:
            click.echo(f"  {name:<20} {meta.outputs.get(name, '')}")
        return
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
@_trust_options
@click.argument("model")
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--method",
    "-m",
    cls=_MethodOption,
    default="gradcam",
    show_default=True,
    help="Method: one of the registered names.",
)
@click.option("--layer", "-l", "layer", multiple=True, help="Target layer (repeat to fuse).")
@click.option(
    "--aug-smooth", is_flag=True, help="Average over flipped and rescaled copies of each image."
)
@click.option(
    "--eigen-smooth",
    is_flag=True,
    help="First principal component of the weighted activations instead of their sum.",
)
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
    help="Where activations come from; non-eager exports the model once, checked against eager.",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--output", "output", help="Index or key of the logits in a tuple/dict output.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Heatmap weight in the overlay.",
)
@click.option("--colormap", default="jet", show_default=True, help="A matplotlib colormap.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Discard a different run's outputs in --out (the same run resumes instead).",
)
@click.option(
    "--wait", is_flag=True, help="If another run is writing to --out, wait for it to finish."
)
def explain(
    model,
    images,
    method,
    layer,
    aug_smooth,
    eigen_smooth,
    out,
    target,
    weights,
    input_size,
    backend,
    device,
    output,
    batch_size,
    alpha,
    colormap,
    overwrite,
    wait,
) -> None:
    """Explain IMAGES (files or folders) with MODEL: overlay PNGs, .npy maps, predictions.json.

    \b
    MODEL is 'demo', 'torchvision:NAME' (random weights unless --weights FILE),
    'package.module:factory', or a file made by `xcam export` (.onnx, .ts, .pt2).
    Unreadable images are reported and skipped; the exit code is then 1.
    """
    from xcam.errors import XCamError
    from xcam.images import find_images
    from xcam.methods import get_method
    from xcam.pipeline import explain_files

    targets = _parse_target(target)
    if not out.strip():
        raise click.BadParameter("is empty; name a folder", param_hint="--out")
    try:
        method_cls = get_method(method)
    except XCamError as e:
        raise click.BadParameter(str(e), param_hint="--method") from None
    info = _load(model, weights, device, input_size)
    paths = find_images(images)
    if not paths:
        _fail("no images found in " + ", ".join(images))
    if layer and not method_cls.uses_layers:
        _fail(f"{method_cls.name} has no target layer; leave out --layer")
    try:
        options = {"aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth}
        if method_cls.uses_layers:
            options["layers"] = list(layer) or info.default_layer
        if backend != "eager":
            options["export_options"] = {"aoti": False} if backend == "pt2" else None
        explainer = method_cls(info.model, backend=backend, output=_parse_output(output), **options)
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
                overwrite=overwrite,
                wait=wait,
                echo=lambda line: click.echo(line, err=True),
            )
    except XCamError as e:
        _fail(str(e))
    except OSError as e:  # a full disk, a folder made read-only meanwhile, …
        where = f" ({e.filename})" if e.filename else ""
        _fail(f"can't write to {out}: {e.strerror or e}{where}")
    _summarise(report)


def _summarise(report) -> None:
    done = len(report.items) - report.skipped
    skipped = f" ({report.skipped} already there from an earlier run)" if report.skipped else ""
    click.echo(f"wrote {done} overlay(s) and map(s) to {report.out}{skipped}")
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
    from xcam.errors import XCamError

    try:
        paths = run_demo(Path(out), echo=click.echo)
    except XCamError as e:
        _fail(f"{e}".replace("pass --overwrite (overwrite=True) to replace them, or ", ""))
    except OSError as e:
        _fail(f"can't write to {out}: {e.strerror or e}")
    click.echo("wrote:")
    for p in paths:
        click.echo(f"  {p}")


@main.command()
@_trust_options
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
    type=click.Choice(["onnx", "torchscript", "pt2"]),
    default="onnx",
    show_default=True,
)
@click.option("--out", "-o", type=click.Path(dir_okay=False), required=True, help="File to write.")
@click.option("--input-size", help="Input H or H,W (default: the model's).")
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
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def export(
    model,
    layer,
    fmt,
    out,
    input_size,
    opset,
    weights,
    check,
    dynamic_batch,
    dynamic_spatial,
    output,
    aoti,
    gradients,
    target_input,
    device,
) -> None:
    """Export MODEL with its target-layer activations as named outputs.

    \b
    The file's outputs are 'logits' and one per --layer; its metadata records the
    layers, input size, normalisation and classes, so `xcam explain FILE` and
    xcam.load(FILE) need nothing else. A mismatch with eager PyTorch is an error.
    With --gradients the file also outputs '<layer>.grad' and 'gradcam', so that
    Grad-CAM runs from the file alone (xcam.lite needs no torch at all).
    """
    import torch

    import exporters
    from xcam.core.artifact import format_of
    from xcam.errors import XCamError

    if format_of(model) is not None:  # refused before anything reads it
        _fail(f"{model} is already an exported file; export from the original model")
    info = _load(model, weights, device, input_size)
    h, w = info.input_size
    example = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    click.echo(f"exporting {model} to {fmt} ...", err=True)
    try:
        report = exporters.export(
            info.model,
            list(layer) or info.default_layer,
            example,
            out,
            format=fmt,
            gradients=gradients,
            dynamic_batch=dynamic_batch,
            opset=opset,
            check=check,
            output=_parse_output(output),
            dynamic_spatial=dynamic_spatial,
            aoti=aoti,
            mean=info.mean,
            std=info.std,
            classes=info.classes,
            model_spec=model,
            target_input=target_input,
        )
    except XCamError as e:
        _fail(str(e))
    click.echo(str(report))


def _parse_channels(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        chans = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of channel indices", param_hint="--channels"
        ) from None
    if not chans:
        raise click.BadParameter("no channel index given", param_hint="--channels")
    return chans


def _file_part(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


@main.command()
@_trust_options
@click.argument("model")
@click.option("--layer", "-l", required=True, help="Layer to show (a dotted module name).")
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True, help="Output dir.")
@click.option(
    "--image",
    "-i",
    "image",
    multiple=True,
    help="Image (or folder) whose feature maps to show; repeatable.",
)
@click.option("--channels", help="Channels to maximise, e.g. 0,1,2 (activation maximisation).")
@click.option(
    "--steps",
    type=click.IntRange(0),
    default=100,
    show_default=True,
    help="Optimisation steps of the activation maximisation.",
)
@click.option(
    "--max-filters",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="At most this many kernels / feature maps.",
)
@click.option("--weights", type=click.Path(dir_okay=False), help="State dict for the model.")
@click.option("--input-size", help="Image / maximisation size H or H,W (default: the model's).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def filters(
    model, layer, out, image, channels, steps, max_filters, weights, input_size, device
) -> None:
    """Show what a layer of MODEL has learnt: kernels, feature maps, maximising inputs.

    \b
    Writes to OUT:
      kernels_<layer>.png            the layer's kernels (when it is a Conv2d)
      features_<layer>_<image>.png   its feature maps for each --image
      maximise_<layer>.png           inputs that maximise each of --channels
    """
    from torch import nn

    from xcam import filters as xf
    from xcam.errors import LayerTypeError, XCamError
    from xcam.files import unique_stems
    from xcam.images import find_images, load_image, preprocess
    from xcam.layers import resolve_layer
    from xcam.viz import save_png

    chans = _parse_channels(channels)
    info = _load(model, weights, device, input_size)
    if not isinstance(info.model, nn.Module):
        _fail(f"{model} is an exported file; filters need the PyTorch model it came from")
    try:
        name, _ = resolve_layer(info.model, layer)
    except XCamError as e:
        _fail(str(e))
    out_dir = Path(out)
    stem = _file_part(name)
    paths = list(dict.fromkeys(p.resolve() for p in find_images(image))) if image else []
    if image and not paths:
        _fail("no images found in " + ", ".join(image))
    names = unique_stems(paths)  # two images named a.png in two folders: a and a_2
    errors: list[str] = []
    try:
        try:
            picture = xf.kernel_grid(info.model, name, max_filters=max_filters)
        except LayerTypeError as e:
            if not paths and chans is None:
                _fail(f"{e}; give --image or --channels to see this layer")
            click.echo(f"note: no kernels: {e}", err=True)
        else:
            click.echo(f"wrote {save_png(picture, out_dir / f'kernels_{stem}.png')}")
        for path in paths:
            try:
                pil = load_image(path)
            except XCamError as e:
                errors.append(str(e))
                click.echo(f"error: {e}", err=True)
                continue
            x = preprocess([pil], info.input_size, info.mean, info.std).to(device)
            shown = pil.resize((info.input_size[1], info.input_size[0]))
            picture = xf.feature_map_grid(
                info.model, name, x, max_channels=max_filters, image=shown
            )
            target = out_dir / f"features_{stem}_{names[path]}.png"
            click.echo(f"wrote {save_png(picture, target)}")
        if chans is not None:
            click.echo(
                f"maximising {len(chans)} channel(s) of {name} ({steps} steps) ...", err=True
            )
            images = xf.activation_maximisation(
                info.model,
                name,
                chans,
                steps=steps,
                size=info.input_size,
                mean=info.mean,
                std=info.std,
            )
            picture = xf.maximisation_grid(images, chans)
            click.echo(f"wrote {save_png(picture, out_dir / f'maximise_{stem}.png')}")
    except XCamError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"can't write to {out_dir}: {e.strerror or e}")
    if errors:
        _fail(f"{len(errors)} image(s) could not be read")


def _csv(value: str | None, cast=str) -> list | None:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list") from None


@main.command()
@click.option("--quick", is_flag=True, help="Smoke preset: about a minute on 2 CPU cores.")
@click.option("--models", help="Comma-separated MODEL specs (full preset: torchvision:resnet50).")
@click.option("--methods", help="Comma-separated method names (full: gradcam,gradcam++,layercam).")
@click.option(
    "--backends",
    help="Comma-separated: eager,torchscript,onnxruntime,pt2,ingraph (full: all but pt2).",
)
@click.option("--devices", help="Comma-separated: cpu,cuda (default: cpu).")
@click.option("--batch", "batches", help="Comma-separated batch sizes (full: 1,32).")
@click.option(
    "--input-size", type=click.IntRange(8, MAX_SIDE), help="Square input size (full: 224)."
)
@click.option("--repeats", type=click.IntRange(1), help="Timed rounds per arm (default 5).")
@click.option("--layer", help="Target layer (default: the model's last spatial layer).")
@click.option("--threads", type=click.IntRange(1), help="torch and ONNX Runtime threads.")
@click.option(
    "--peers/--no-peers", default=None, help="Also time pytorch-grad-cam, torchcam, captum."
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the rows as JSON.")
@click.option("--markdown", type=click.Path(dir_okay=False), help="Write a Markdown table.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a PNG plot of the ratios.")
def bench(
    quick,
    models,
    methods,
    backends,
    devices,
    batches,
    input_size,
    repeats,
    layer,
    threads,
    peers,
    json_out,
    markdown,
    plot,
) -> None:
    """What an explanation costs: methods x backends x devices x batch sizes, next to plain
    inference on the same backend (and, with --peers, the peer libraries).

    \b
    Every arm is timed after a warm-up, interleaved in a rotating order with the others;
    rows give the median, p10-p90, the ratio to plain inference and images/s. Without
    --quick the full preset runs (resnet50, 224, batch 1 and 32: several minutes on CPU);
    any option overrides the preset.
    """
    import shlex

    from xcam.bench import PRESETS, BenchConfig, run_bench, to_markdown, to_terminal
    from xcam.bench import plot as make_plot
    from xcam.errors import XCamError

    preset = dict(PRESETS["quick" if quick else "full"])
    given = {
        "models": _csv(models),
        "methods": _csv(methods),
        "backends": _csv(backends),
        "devices": _csv(devices),
        "batches": _csv(batches, int),
        "input_size": input_size,
        "repeats": repeats,
        "peers": peers,
    }
    preset.update({k: v for k, v in given.items() if v is not None})
    cfg = BenchConfig(**preset, layer=layer, threads=threads)
    try:
        report = run_bench(cfg, echo=lambda line: click.echo(line, err=True))
    except XCamError as e:
        _fail(str(e))
    click.echo(to_terminal(report))
    command = "xcam bench " + shlex.join(sys.argv[2:]) if len(sys.argv) > 2 else "xcam bench"
    from xcam.files import atomic

    writers = ((json_out, report.to_json), (markdown, lambda: to_markdown(report, command)))
    for path, text in writers:
        if path:
            with atomic(path) as tmp:  # never through a planted link, never half a file
                tmp.write_text(text())
            click.echo(f"wrote {path}")
    if plot:
        click.echo(f"wrote {make_plot(report, plot)}")


if __name__ == "__main__":  # pragma: no cover
    main()
