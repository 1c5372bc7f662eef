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


def _os_reason(error: OSError) -> str:
    """What an ``OSError`` says, never empty: ``OSError(errno.ENOSPC)`` (a bare number,
    as some writers raise it) is "No space left on device"; one with no detail says so."""
    import os

    code = error.errno
    if code is None and len(error.args) == 1 and isinstance(error.args[0], int):
        code = error.args[0]
    reason = error.strerror or (os.strerror(code) if isinstance(code, int) else "")
    if not reason and not (len(error.args) == 1 and isinstance(error.args[0], int)):
        reason = str(error)
    if not reason:
        reason = (
            f"{type(error).__name__} with no detail (a full disk, or a folder that went away "
            "or became read-only?)"
        )
    return reason + (f" ({error.filename})" if error.filename else "")


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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextlib.contextmanager
def _warnings_on_one_line(debug: bool):
    """While a command runs, a Python warning prints as one ``Warning: …`` line on stderr,
    not as ``file.py:64: UserWarning: …`` and the source line (``--debug`` keeps Python's
    form). Only the command line's display changes: filters, and the library's warnings
    outside a command, are as they were."""
    import warnings

    if debug:
        yield
        return

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        click.echo(f"Warning: {_one_line(message)}", err=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


class _Group(click.Group):
    """The ``xcam`` group: an error no command foresaw still ends in one ``Error:`` line
    (``xcam --debug …`` prints its traceback), never in a traceback alone."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            from xcam.core.errors import XCamError, first_line

            if isinstance(e, XCamError):
                _fail(_one_line(str(e)))
            if isinstance(e, OSError):
                _fail(_os_reason(e))
            if isinstance(e, MemoryError):
                _fail("out of memory: try a smaller --input-size or --batch-size")
            _fail(
                f"unexpected {type(e).__name__}: {first_line(e)} (a bug in xcam or in the "
                "model's code; `xcam --debug …` prints the traceback)"
            )


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
        index = int(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a class index or positive/negative", param_hint="--class"
        ) from None
    if not -(2**63) <= index < 2**63:  # no tensor of class indices holds it
        raise click.BadParameter(
            f"{value} is not a class index: far beyond any model's classes", param_hint="--class"
        )
    return index


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


def _parse_stats(ctx: click.Context, param: click.Parameter, value: str | None):
    """``--mean`` / ``--std``: comma-separated finite numbers (std > 0), one per channel."""
    import math

    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not comma-separated numbers, one per input channel (e.g. "
            "0.485,0.456,0.406, or 0.5 for a grey model)"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise click.BadParameter(f"{value!r}: every value must be finite")
    if param.name == "std" and min(values) <= 0:
        raise click.BadParameter(f"{value!r}: every value must be > 0 (inputs are divided by it)")
    return values


def _stats_options(command):
    """``--mean`` and ``--std``: the normalisation the model was trained with."""
    for name, default in (("--std", "0.229,0.224,0.225"), ("--mean", "0.485,0.456,0.406")):
        command = click.option(
            name,
            callback=_parse_stats,
            help=f"Per-channel normalisation {name[2:]}, comma-separated (default: the model's "
            f"or exported file's; else ImageNet's {default}).",
        )(command)
    return command


def _channels(n: int) -> str:
    return f"{n} channel" + ("" if n == 1 else "s")


def _load(
    spec: str,
    weights: str | None,
    device: str,
    input_size: str | None,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    stats: bool = False,
    images: bool = False,
):
    """Load MODEL; ``stats``: the command normalises inputs (--mean/--std, and a note of
    the ones assumed); ``images``: it reads images (a note on how they are converted)."""
    from xcam.core.errors import XCamError
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
    meta["xcam.model_size"] = info.input_size  # before --input-size: see _probe
    size = _parse_size(input_size)
    if size is not None:
        info.input_size = size
    for hint, given in (("--mean", mean), ("--std", std)):
        if given is not None and len(given) != info.channels:
            raise click.BadParameter(
                f"{len(given)} values given; {spec} takes {_channels(info.channels)}, "
                "one value each",
                param_hint=hint,
            )
    assumed = {
        "input size": info.assumed_preprocessing and size is None,
        "mean": info.assumed_preprocessing and mean is None,
        "std": info.assumed_preprocessing and std is None,
    }
    info.mean = info.mean if mean is None else mean
    info.std = info.std if std is None else std
    notes = list(info.notes)
    if images and info.channels != 3:
        if info.channels not in (1, 4):
            _fail(
                f"{spec} takes {_channels(info.channels)}; images make inputs of 1 (grey), "
                "3 (RGB) or 4 (RGBA): explain it from Python with tensors of your own"
            )
        notes.append(
            f"{spec} takes {_channels(info.channels)}: images are read as "
            + ("grey (Pillow's L)" if info.channels == 1 else "RGBA (alpha 255: opaque)")
        )
    if stats and any(assumed.values()):
        notes.append(_assumed_note(spec, info, assumed))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    return info


def _probe(info, spec: str, input_size: str | None, layers=(), run: bool = True) -> object:
    """Run the eager model once, on a batch of one zero image of its input size, before
    any work: a size it can't take is a usage error naming --input-size (when the model's
    own size runs), a forward that raises is one line naming the model and the exception,
    and each of ``layers`` must output a ``[B, C, h, w]`` map. Weights that are not finite
    are an error even without a forward (``run=False``). An exported file is left to its
    runtime's checks."""
    import torch
    from torch import nn

    from xcam.core.capture import Capture, preserved_state
    from xcam.core.errors import XCamError, first_line
    from xcam.core.layers import resolve_layer

    model = info.model
    if not isinstance(model, nn.Module):
        return
    try:
        named = [resolve_layer(model, name) for name in layers]
    except XCamError as e:
        _fail(str(e))
    for pname, value in model.named_parameters():  # nothing explains a diverged model
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            _fail(
                f"the weights of {spec} are not finite: {pname} holds NaN or infinite values "
                "(a diverged training run, or a damaged --weights file?)"
            )
    if not run:
        return
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    outputs: dict[str, torch.Tensor] = {}  # what each of ``layers`` gave
    produced: list[object] = []  # what the model returned

    def forward(size: tuple[int, int]) -> None:
        x = torch.zeros(1, info.channels, *size, dtype=info.input_dtype, device=device)
        with preserved_state(model), torch.no_grad(), Capture(named) as capture:
            produced[:] = [model(x)]
        outputs.update(capture.activations)

    h, w = info.input_size
    try:
        forward((h, w))
    except XCamError as e:  # a layer that returns a tuple, or runs twice
        raise click.BadParameter(str(e), param_hint="--layer") from None
    except Exception as e:
        reason = f"{type(e).__name__}: {first_line(e)}"
        own = click.get_current_context().meta.get("xcam.model_size")
        if input_size is not None and own is not None and tuple(own) != (h, w):
            try:
                forward(tuple(own))
            except Exception:
                pass
            else:
                small = min(h, w) < min(own)
                raise click.BadParameter(
                    f"{input_size} is {'too small' if small else 'a size it cannot take'} for "
                    f"{spec} ({reason}); it runs at {own[0]},{own[1]}, its own size"
                    + (": pass a larger one, or leave --input-size out" if small else ""),
                    param_hint="--input-size",
                ) from None
        hint = "" if input_size else "; if it takes another input size, pass --input-size H,W"
        _fail(
            f"{spec} failed in its forward pass on a 1x{info.channels}x{h}x{w} input: "
            f"{reason}{hint}"
        )
    for name, module in named:
        act = outputs.get(name)
        if act is not None and act.dim() == 4:
            continue
        if act is None:
            got = "does not run in the forward pass"
        else:
            got = f"outputs a {'x'.join(map(str, act.shape))} tensor ({act.dim()}-D), not a "
            got += "[B, C, h, w] feature map"
        default = f" (default: {info.default_layer})" if info.default_layer else ""
        raise click.BadParameter(
            f"{name!r} ({type(module).__name__}) {got}: choose a layer with a spatial "
            f"output{default}; `xcam layers {spec}` lists them",
            param_hint="--layer",
        )
    return produced[0] if produced else None


def _check_class(target: object, info, probed: object, output: object) -> None:
    """A class index the model's output has no room for is bad usage, found before any
    work (the class count: the probe's output, or the exported file's metadata)."""
    if not isinstance(target, int):
        return
    from xcam.backends import Backend
    from xcam.core.cammodel import select_output
    from xcam.core.errors import XCamError
    from xcam.core.targets import flatten_logits

    if isinstance(info.model, Backend):
        k = info.model.metadata.num_classes
    else:
        try:
            k = flatten_logits(select_output(probed, output)).shape[1]
        except XCamError:  # a tuple without --output, a regression output: the job says
            return
    if not isinstance(k, int) or k < 1:
        return
    if k == 1 and target not in (0, 1):
        raise click.BadParameter(
            f"{target}: {info.spec} has a single output: use 1 / positive or 0 / negative",
            param_hint="--class",
        )
    if k > 1 and not 0 <= target < k:
        raise click.BadParameter(
            f"{target} is out of range for {k} classes (0..{k - 1}) of {info.spec}",
            param_hint="--class",
        )


def _assumed_note(spec: str, info, assumed: dict[str, bool]) -> str:
    """What a model spec that knows no preprocessing of its own is fed, and how to change it."""
    h, w = info.input_size
    parts = {
        "input size": f"{h}x{w} inputs",
        "mean": "mean " + ",".join(f"{v:g}" for v in info.mean),
        "std": "std " + ",".join(f"{v:g}" for v in info.std),
    }
    said = [parts[k] for k, v in assumed.items() if v]
    options = [
        {"input size": "--input-size", "mean": "--mean", "std": "--std"}[k]
        for k, v in assumed.items()
        if v
    ]
    origin = "ImageNet's"
    if (assumed["mean"] or assumed["std"]) and info.channels == 1:
        origin += ", averaged over RGB for a grey model"
    elif (assumed["mean"] or assumed["std"]) and info.channels > 3:
        origin += "; the average of its three from channel 4 on"
    both = ", ".join(said[:-1]) + (" and " if len(said) > 1 else "") + said[-1]
    flags = ", ".join(options[:-1]) + (" and " if len(options) > 1 else "") + options[-1]
    return f"{spec}: assuming {both} ({origin}); pass {flags} if it was trained otherwise"


class _MethodOption(click.Option):
    """``--method``: its help lists the registered methods (imported only for --help)."""

    def get_help_record(self, ctx: click.Context):
        from xcam.methods import list_methods

        self.help = "Method: " + ", ".join(list_methods()) + "."
        return super().get_help_record(ctx)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xcam")
@click.option("--debug", is_flag=True, help="Print the traceback behind an error message.")
def main(debug: bool) -> None:
    """Explain PyTorch CNN decisions: Grad-CAM and family, from eager or exported models."""
    ctx = click.get_current_context()
    ctx.meta["xcam.debug"] = debug
    ctx.with_resource(_terminate_cleanly())
    ctx.with_resource(_warnings_on_one_line(debug))


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

    from xcam.core.layers import candidate_layers

    info = _load(model, weights, "cpu", input_size)
    h, w = info.input_size
    c = info.channels
    from xcam.backends import Backend

    if isinstance(info.model, Backend):
        meta = info.model.metadata
        click.echo(f"outputs of {model} ({meta.format}, exported by {meta.exporter}):")
        for name in meta.output_names:
            click.echo(f"  {name:<20} {meta.outputs.get(name, '')}")
        return
    try:
        infos = candidate_layers(info.model, torch.zeros(1, c, h, w, dtype=info.input_dtype))
    except Exception as e:
        reason = next(iter(str(e).strip().splitlines()), type(e).__name__)
        which = "another size" if input_size else "the size it takes"
        _fail(
            f"{model} failed on a probe input of 1x{c}x{h}x{w}: {reason}. "
            f"Pass --input-size H,W with {which}"
        )
    if not infos:
        _fail(f"{model} has no layer with a 4-D output")
    default = [i for i in infos if i.spatial] or infos
    name_w = max(len(i.name) for i in infos)
    kind_w = max(len(i.kind) for i in infos)
    click.echo(f"layers of {model} for a 1x{c}x{h}x{w} input (* = default):")
    for i in infos:
        mark = "*" if i is default[-1] else " "
        shape = "x".join(map(str, i.shape))
        click.echo(f"{mark} {i.name:<{name_w}}  {i.kind:<{kind_w}}  {shape}")


_PRE_ACTIVATION_HELP = (
    "For a model whose output ends in Sigmoid/Softmax/LogSoftmax: explain the score before it "
    "(a saturated probability's gradient vanishes)."
)


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
@click.option("--pre-activation", is_flag=True, help=_PRE_ACTIVATION_HELP)
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True, help="Output dir.")
@click.option(
    "--class",
    "target",
    help="Class index to explain (default: top-1), or positive/negative for a single-logit head.",
)
@click.option("--weights", type=click.Path(dir_okay=False), help="State dict for the model.")
@click.option("--input-size", help="Resize images to H or H,W (default: the model's).")
@_stats_options
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
    pre_activation,
    out,
    target,
    weights,
    input_size,
    mean,
    std,
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
    from xcam.core.errors import XCamError
    from xcam.images import find_images
    from xcam.methods import get_method
    from xcam.pipeline import explain_files
    from xcam.viz import check_colormap

    targets = _parse_target(target)
    if not out.strip():
        raise click.BadParameter("is empty; name a folder", param_hint="--out")
    try:
        method_cls = get_method(method)
    except XCamError as e:
        raise click.BadParameter(str(e), param_hint="--method") from None
    try:
        check_colormap(colormap)
    except XCamError as e:
        raise click.BadParameter(str(e), param_hint="--colormap") from None
    info = _load(model, weights, device, input_size, mean=mean, std=std, stats=True, images=True)
    paths = find_images(images)
    if not paths:
        _fail("no images found in " + ", ".join(images))
    if layer and not method_cls.uses_layers:
        _fail(f"{method_cls.name} has no target layer; leave out --layer")
    probed = _probe(info, model, input_size, list(layer) if method_cls.uses_layers else [])
    _check_class(targets, info, probed, _parse_output(output))
    try:
        options = {
            "aug_smooth": aug_smooth,
            "eigen_smooth": eigen_smooth,
            "pre_activation": pre_activation,
        }
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
        _fail(f"can't write to {out}: {_os_reason(e)}")
    _summarise(report)


def _summarise(report) -> None:
    done = len(report.items) - report.skipped
    skipped = f" ({report.skipped} already there from an earlier run)" if report.skipped else ""
    click.echo(f"wrote {done} overlay(s) and map(s) to {report.out}{skipped}")
    click.echo(f"predictions: {report.predictions}")
    for err in report.errors:
        click.echo(f"error: {err['error']}", err=True)
    if report.errors:
        _fail(f"{len(report.errors)} image(s) could not be explained (listed above)")


@main.command()
@click.option(
    "--out", "-o", type=click.Path(file_okay=False), default="demo-out", show_default=True
)
def demo(out: str) -> None:
    """Run the whole job on the bundled demo model and its sample images."""
    from xcam.core.errors import XCamError
    from xcam.demo.run import run_demo

    try:
        paths = run_demo(Path(out), echo=click.echo)
    except XCamError as e:
        _fail(f"{e}".replace("pass --overwrite (overwrite=True) to replace them, or ", ""))
    except OSError as e:
        _fail(f"can't write to {out}: {_os_reason(e)}")
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
@_stats_options
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
@click.option("--pre-activation", is_flag=True, help=_PRE_ACTIVATION_HELP)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
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
    from xcam.core.artifact import FORMATS, format_of
    from xcam.core.errors import XCamError

    if target_input and not gradients:
        raise click.BadParameter(
            "needs --gradients: the target input chooses the class of the in-graph gradients",
            param_hint="--target-input",
        )
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
        _fail(f"{model} is already an exported file; export from the original model")
    parent = Path(out).absolute().parent
    blocked = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        _fail(f"can't write {out}: {blocked} is a file, not a folder")
    info = _load(model, weights, device, input_size, mean=mean, std=std, stats=True)
    given = list(layer) or ([info.default_layer] if info.default_layer else [])
    _probe(info, model, input_size, given)
    h, w = info.input_size
    example = torch.randn(2, info.channels, h, w, generator=torch.Generator().manual_seed(0))
    example = example.to(device=device, dtype=info.input_dtype)  # a model.half(): float16
    click.echo(f"exporting {model} to {fmt} ...", err=True)
    try:
        with _exporter_output(debug=click.get_current_context().meta.get("xcam.debug", False)):
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
                pre_activation=pre_activation,
            )
    except XCamError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"can't write {out}: {_os_reason(e)}")
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
@_stats_options
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def filters(
    model, layer, out, image, channels, steps, max_filters, weights, input_size, mean, std, device
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
    from xcam.core.errors import LayerTypeError, XCamError
    from xcam.core.layers import resolve_layer
    from xcam.files import unique_stems
    from xcam.images import find_images, load_image, preprocess
    from xcam.viz import save_png

    chans = _parse_channels(channels)
    info = _load(
        model, weights, device, input_size, mean=mean, std=std, stats=True, images=bool(image)
    )
    if not isinstance(info.model, nn.Module):
        _fail(f"{model} is an exported file; filters need the PyTorch model it came from")
    if chans is not None and info.channels != 3:
        _fail(
            f"activation maximisation (--channels) makes RGB images; {model} takes "
            f"{_channels(info.channels)}: leave out --channels (--image shows its feature maps)"
        )
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
    if paths or chans is not None:  # feature maps and maximisation run the model
        _probe(info, model, input_size)
    else:  # the kernels alone: still not pictures of NaN
        _probe(info, model, None, run=False)
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
            x = preprocess([pil], info.input_size, info.mean, info.std)
            x = x.to(device=device, dtype=info.input_dtype)
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
        _fail(f"can't write to {out_dir}: {_os_reason(e)}")
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
    from xcam.core.errors import XCamError

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
