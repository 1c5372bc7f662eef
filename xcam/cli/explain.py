"""``xcam explain``: overlays, maps and predictions for a folder of images."""

from __future__ import annotations

from pathlib import Path

import click

from xcam.cli.loading import load
from xcam.cli.messages import echo_err, fail, os_reason
from xcam.cli.options import (
    PRE_ACTIVATION_HELP,
    MethodOption,
    engine_options,
    parse_output,
    parse_target,
    stats_options,
    tokens_option,
    trust_options,
)
from xcam.cli.probe import check_class, probe
from xcam.core.artifact import BACKEND_FORMAT
from xcam.core.decision import BOXES, PRESENT


@click.command()
@trust_options
@click.argument("model")
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--method",
    "-m",
    cls=MethodOption,
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
@click.option("--pre-activation", is_flag=True, help=PRE_ACTIVATION_HELP)
@tokens_option
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True, help="Output dir.")
@click.option(
    "--class",
    "target",
    help="Class index to explain (default: top-1), positive/negative for a single-logit head, "
    "present: every label a multi-label head says is present, a map each, or boxes: every "
    "box a detector finds (score 0.5 or more), a map each, drawn with its box.",
)
@click.option(
    "--mask",
    type=click.Path(dir_okay=False),
    help="For a segmentation model: the region (an image, nonzero = inside) over which "
    "--class is explained; default: where the model predicts that class.",
)
@click.option("--weights", type=click.Path(dir_okay=False), help="State dict for the model.")
@click.option("--input-size", help="Resize images to H or H,W (default: the model's).")
@stats_options
@click.option(
    "--backend",
    type=click.Choice(["eager", *BACKEND_FORMAT]),
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
    "--overlays/--no-overlays",
    default=True,
    show_default=True,
    help="Write the overlay PNGs; --no-overlays writes maps and records only (fastest).",
)
@click.option(
    "--report",
    is_flag=True,
    help="Also write report.html: the overlays as a gallery, sortable by score, filterable "
    "by class and right/wrong; it reads offline (open it in a browser).",
)
@click.option(
    "--target-column",
    help="A manifest's label column: explain each image's label instead of its prediction "
    "(the records then say whether the prediction was right).",
)
@click.option(
    "--path-column", default="path", show_default=True, help="A manifest's image path column."
)
@engine_options("threads in this process", "a Ray Data pipeline", "data")
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="local: threads decoding images ahead of the model (one more writes).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="ray: workers, each holding one model (with --device cuda, one GPU each).",
)
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
    tokens,
    out,
    target,
    mask,
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
    overlays,
    report,
    target_column,
    path_column,
    engine,
    workers,
    concurrency,
    ray_address,
    overwrite,
    wait,
) -> None:
    """Explain IMAGES with MODEL: .npy maps, overlay PNGs, predictions.json, records.parquet.

    \b
    MODEL is 'demo', 'torchvision:NAME' or 'timm:NAME' (random weights unless --weights FILE),
    'package.module:factory', or a file made by `xcam export` (.onnx, .ts, .pt2); a file
    exported with --gradients runs without torch.
    IMAGES are image files, folders (searched recursively), globs ('data/**/*.jpg') and
    manifests (.csv or .parquet with a path column, optionally a label column).
    Unreadable images are reported and skipped; the exit code is then 1. The same command
    run again resumes where an interrupted one stopped.
    """
    from xcam.core.errors import XCamError
    from xcam.pipeline.job import JobOptions

    targets = parse_target(target)
    _check_out(out, colormap if overlays else None)
    from xcam.pipeline.dataset import lite_method

    if lite_method(method) is None:  # not one an in-graph file serves: known at all?
        _method(method)  # (a name lite knows is registered: no torch imported for it)
    items = _find_items(images, path_column, target_column)
    options = JobOptions(batch_size, overlays, alpha, colormap, workers, report=report)
    run = (items, Path(out), options, engine, concurrency, ray_address, device, overwrite, wait)
    lite_ok = not (
        layer
        or aug_smooth
        or eigen_smooth
        or pre_activation
        or tokens
        or mask
        or weights
        or input_size
        or mean
        or std
        or output
        or backend not in ("eager", "onnx")
    )
    if lite_ok and _lite(model, method, targets, target_column, device, run):
        return
    method_cls = _method(method)
    if targets in (PRESENT, BOXES) and not overlays:
        raise click.BadParameter(
            "--class present and --class boxes write overlays (a box is drawn on its "
            "overlay); leave out --no-overlays",
            param_hint="--no-overlays",
        )
    info = load(model, weights, device, input_size, mean=mean, std=std, stats=True, images=True)
    if layer and not method_cls.uses_layers:
        fail(f"{method_cls.name} has no target layer; leave out --layer")
    probed = probe(
        info, model, input_size, list(layer) if method_cls.uses_layers else [], tokens=tokens
    )
    targets = _segmentation_target(targets, mask, probed, parse_output(output))
    _check_boxes(targets, probed)
    check_class(targets, info, probed, parse_output(output))
    smooth = {"aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth, "reshape": tokens}
    recipe = (method_cls.name, tuple(layer), backend, output, pre_activation, smooth, targets)
    try:
        explainer = _method_batch(info, *recipe, device, target_column)
    except XCamError as e:
        fail(str(e))
    _run(explainer, _rebuilt(model, weights, info, recipe, device, target_column), *run)


def _method_batch(
    info, method, layer, backend, output, pre_activation, smooth, targets, device, target_column
):
    """The torch explainer of the job: the method on MODEL, as the options say."""
    from xcam.methods import get_method
    from xcam.pipeline.torch_batch import MethodBatch

    method_obj = _explainer(
        get_method(method), info, layer, backend, output, pre_activation, smooth
    )
    return MethodBatch(info, method_obj, targets, device, target_column)


def _rebuilt(model: str, weights, info, recipe, device: str, target_column):
    """How a Ray worker makes the same explainer: MODEL loaded there, as here."""
    import functools

    meta = click.get_current_context().meta
    trust = (meta.get("xcam.trust_weights", False), meta.get("xcam.trust_code", False))
    stats = (tuple(info.input_size), tuple(info.mean), tuple(info.std))
    return functools.partial(
        _worker_explainer, model, weights, trust, stats, recipe, device, target_column
    )


def _worker_explainer(model, weights, trust, stats, recipe, device, target_column):
    from xcam.models import load_model

    info = load_model(
        model, weights=weights, device=device, trust_weights=trust[0], trust_code=trust[1]
    )
    info.input_size, info.mean, info.std = stats
    return _method_batch(info, *recipe, device, target_column)


def _lite(model: str, method: str, targets, target_column, device: str, run) -> bool:
    """Run the job on an in-graph ONNX file without torch (:mod:`xcam.pipeline.lite_batch`)
    where it can (:func:`xcam.pipeline.dataset.lite_explainer`); False where it can't (the
    main library runs the job)."""
    import functools

    from xcam.core.errors import XCamError
    from xcam.pipeline.dataset import default_threads, lite_explainer

    if not (targets is None or isinstance(targets, int | str)):
        return False
    engine, concurrency = run[3], run[4]
    factory = functools.partial(
        lite_explainer,
        model,
        method,
        device=device,
        # Ray gives each worker one CPU: the workers share the cores
        threads=default_threads(concurrency) if engine == "ray" else None,
        target=targets,
        target_column=target_column,
    )
    try:
        explainer = factory()
    except (XCamError, ValueError) as e:
        fail(str(e))
    if explainer is None:
        return False
    if targets is not None:
        from xcam.core.decision import class_targets

        try:
            class_targets(targets, 1, int(explainer.num_classes or 0))
        except XCamError as e:
            raise click.BadParameter(str(e), param_hint="--class") from None
    _run(explainer, factory, *run)
    return True


def _run(
    explainer,
    factory,
    items,
    out: Path,
    options,
    engine,
    concurrency,
    address,
    device,
    overwrite,
    wait,
) -> None:
    """Run the job with a progress line on stderr, then say what was written."""
    from xcam.cli.progress import Progress
    from xcam.core.errors import XCamError
    from xcam.pipeline.job import run_job

    runner = None
    if engine == "ray":
        try:
            from xcam.pipeline.ray_engine import ray_engine
        except ImportError as e:
            fail(f"--engine ray needs Ray: pip install 'xcam-deploy[data]' ({e})")
        gpus = 1.0 if device == "cuda" else 0.0
        runner = ray_engine(factory, concurrency=concurrency, address=address, num_gpus=gpus)
    bar = Progress(len(items))
    try:
        report = run_job(
            explainer,
            items,
            out,
            options,
            engine=runner,
            on_progress=bar.update,
            overwrite=overwrite,
            wait=wait,
            echo=echo_err,
        )
    except XCamError as e:
        fail(str(e))
    except OSError as e:  # a full disk, a folder made read-only meanwhile, …
        fail(f"can't write to {out}: {os_reason(e)}")
    finally:
        bar.close()
    _summarise(report)


def _segmentation_target(targets, mask: str | None, probed, output):
    """``--class K`` on a segmentation model (an output ``[B, K, H, W]``): class K over its
    region, ``--mask`` or where the model predicts K (:class:`xcam.RegionTarget`)."""
    from xcam.core.cammodel import select_output
    from xcam.core.errors import XCamError
    from xcam.core.targets import RegionTarget, is_class_maps

    try:
        out = select_output(probed, output) if probed is not None else None
    except XCamError:
        out = None
    if not is_class_maps(out):
        if mask is not None:
            raise click.BadParameter(
                "is for segmentation models (an output of class maps [B, K, H, W]); "
                "this model's output is not one",
                param_hint="--mask",
            )
        return targets
    classes = out.shape[1]
    if not isinstance(targets, int) or not 0 <= targets < classes:
        raise click.BadParameter(
            f"a segmentation model's output has {classes} class maps: choose one with "
            f"--class K (0..{classes - 1})",
            param_hint="--class",
        )
    return RegionTarget(targets, None if mask is None else _read_mask(mask, out.shape[-2:]))


def _check_boxes(targets, probed) -> None:
    """``--class boxes`` is for a detector (one dict of boxes, labels and scores per image),
    and a detector is explained box by box: either way round is bad usage, found first."""
    from xcam.core.targets import per_image

    if probed is None:
        return
    detector = per_image(probed)
    if detector and targets != BOXES:
        raise click.BadParameter(
            "this model is a detector (a dict of boxes, labels and scores per image): explain "
            "every box it finds with --class boxes",
            param_hint="--class",
        )
    if targets == BOXES and not detector:
        raise click.BadParameter(
            "boxes is for detectors (torchvision's detection models: a dict of boxes, labels "
            "and scores per image); this model's output is not one",
            param_hint="--class",
        )


def _read_mask(path: str, size) -> object:
    """``--mask``: an image whose nonzero pixels are the region, at the output's size."""
    import numpy as np
    import torch
    from PIL import Image

    from xcam.core.errors import InputError
    from xcam.images import load_image

    try:
        image = load_image(path).convert("L").resize((size[1], size[0]), Image.NEAREST)
    except (InputError, OSError) as e:
        raise click.BadParameter(str(e), param_hint="--mask") from None
    region = torch.from_numpy(np.asarray(image) > 0).float()
    if not bool(region.any()):
        raise click.BadParameter(f"{path} marks no pixel (all zero)", param_hint="--mask")
    return region


def _check_out(out: str, colormap: str | None) -> None:
    """--out and --colormap (None: no overlays to colour), checked before anything loads."""
    from xcam.core.errors import XCamError
    from xcam.viz import check_colormap

    if not out.strip():
        raise click.BadParameter("is empty; name a folder", param_hint="--out")
    if colormap is None:
        return
    try:
        check_colormap(colormap)
    except XCamError as e:
        raise click.BadParameter(str(e), param_hint="--colormap") from None


def _method(method: str):
    """--method's class (this imports the methods, and torch)."""
    from xcam.core.errors import XCamError
    from xcam.methods import get_method

    try:
        return get_method(method)
    except XCamError as e:
        raise click.BadParameter(str(e), param_hint="--method") from None


def _find_items(images: tuple[str, ...], path_column: str, target_column: str | None):
    """The items IMAGES name (folders searched, globs matched, manifests read); none at
    all is an error."""
    from xcam.core.errors import InputError
    from xcam.pipeline.plan import Plan
    from xcam.pipeline.sources import iter_items

    try:
        plan = Plan.of(iter_items(images, path_column, target_column, echo_err), echo_err)
    except InputError as e:
        fail(str(e))
    if not len(plan):
        fail("no images found in " + ", ".join(images))
    return plan


def _explainer(method_cls, info, layer, backend: str, output, pre_activation: bool, smooth):
    """The method, on MODEL's target layers (--layer, else its default) and --backend."""
    options = {**smooth, "pre_activation": pre_activation}
    if method_cls.uses_layers:
        options["layers"] = list(layer) or info.default_layer
    if backend != "eager":
        options["export_options"] = {"aoti": False} if backend == "pt2" else None
    return method_cls(info.model, backend=backend, output=parse_output(output), **options)


def _summarise(report) -> None:
    """What was written where; the images that failed, each on a line, then exit code 1."""
    done = len(report.items) - report.skipped
    skipped = f" ({report.skipped} already there from an earlier run)" if report.skipped else ""
    what = "overlay(s) and map(s)" if report.overlays else "map(s)"
    click.echo(f"wrote {done} {what} to {report.out}{skipped}")
    click.echo(f"predictions: {report.predictions}")
    if report.records is not None:
        click.echo(f"records: {report.records}")
    if report.report is not None:
        click.echo(f"report: {report.report}")
    for err in report.errors:
        click.echo(f"error: {err['error']}", err=True)
    if report.errors:
        fail(f"{len(report.errors)} image(s) could not be explained (listed above)")
