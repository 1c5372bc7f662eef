"""``xcam filters``: what a layer has learnt (kernels, feature maps, maximising inputs)."""

from __future__ import annotations

from pathlib import Path

import click

from xcam.cli.loading import load
from xcam.cli.messages import channels as n_channels
from xcam.cli.messages import fail, os_reason
from xcam.cli.options import stats_options, trust_options
from xcam.cli.probe import probe


@click.command()
@trust_options
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
@stats_options
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
    from xcam.core.errors import XCamError
    from xcam.files import unique_stems

    chans = _parse_channels(channels)
    info = load(
        model, weights, device, input_size, mean=mean, std=std, stats=True, images=bool(image)
    )
    name = _check_model(info, model, layer, chans)
    out_dir = Path(out)
    stem = _file_part(name)
    paths = _image_paths(image)
    names = unique_stems(paths)  # two images named a.png in two folders: a and a_2
    if paths or chans is not None:  # feature maps and maximisation run the model
        probe(info, model, input_size)
    else:  # the kernels alone: still not pictures of NaN
        probe(info, model, None, run=False)
    errors: list[str] = []
    try:
        _write_kernels(info, name, out_dir / f"kernels_{stem}.png", max_filters, paths, chans)
        for path in paths:
            target = out_dir / f"features_{stem}_{names[path]}.png"
            if not _write_features(info, name, path, target, max_filters, device):
                errors.append(path)
        if chans is not None:
            _write_maximisation(info, name, chans, steps, out_dir / f"maximise_{stem}.png")
    except XCamError as e:
        fail(str(e))
    except OSError as e:
        fail(f"can't write to {out_dir}: {os_reason(e)}")
    if errors:
        fail(f"{len(errors)} image(s) could not be read")


def _parse_channels(value: str | None) -> list[int] | None:
    """``--channels``: comma-separated channel indices, at least one."""
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
    """A layer name as part of a file name: anything but letters, digits and ``._-`` is ``_``."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _check_model(info, spec: str, layer: str, chans: list[int] | None) -> str:
    """MODEL is a PyTorch model (maximisation: an RGB one) with --layer; its resolved name."""
    from torch import nn

    from xcam.core.errors import XCamError
    from xcam.core.layers import resolve_layer

    if not isinstance(info.model, nn.Module):
        fail(f"{spec} is an exported file; filters need the PyTorch model it came from")
    if chans is not None and info.channels != 3:
        fail(
            f"activation maximisation (--channels) makes RGB images; {spec} takes "
            f"{n_channels(info.channels)}: leave out --channels (--image shows its feature maps)"
        )
    try:
        name, _ = resolve_layer(info.model, layer)
    except XCamError as e:
        fail(str(e))
    return name


def _image_paths(image: tuple[str, ...]) -> list[Path]:
    """The distinct image files --image names (folders searched); none, when given, is an error."""
    from xcam.images import find_images

    paths = list(dict.fromkeys(p.resolve() for p in find_images(image))) if image else []
    if image and not paths:
        fail("no images found in " + ", ".join(image))
    return paths


def _write_kernels(info, name: str, target: Path, max_filters: int, paths, chans) -> None:
    """The layer's kernels as a grid; a layer without kernels is only a note when there
    is something else to show (feature maps, maximisation), else an error."""
    from xcam import filters as xf
    from xcam.core.errors import LayerTypeError
    from xcam.viz import save_png

    try:
        picture = xf.kernel_grid(info.model, name, max_filters=max_filters)
    except LayerTypeError as e:
        if not paths and chans is None:
            fail(f"{e}; give --image or --channels to see this layer")
        click.echo(f"note: no kernels: {e}", err=True)
    else:
        click.echo(f"wrote {save_png(picture, target)}")


def _write_features(info, name: str, path: Path, target: Path, max_filters: int, device) -> bool:
    """The layer's feature maps for the image at ``path``; False (reported) if unreadable."""
    from xcam import filters as xf
    from xcam.core.errors import XCamError
    from xcam.images import load_image, preprocess
    from xcam.viz import save_png

    try:
        pil = load_image(path)
    except XCamError as e:
        click.echo(f"error: {e}", err=True)
        return False
    x = preprocess([pil], info.input_size, info.mean, info.std)
    x = x.to(device=device, dtype=info.input_dtype)
    shown = pil.resize((info.input_size[1], info.input_size[0]))
    picture = xf.feature_map_grid(info.model, name, x, max_channels=max_filters, image=shown)
    click.echo(f"wrote {save_png(picture, target)}")
    return True


def _write_maximisation(info, name: str, chans: list[int], steps: int, target: Path) -> None:
    """Inputs that maximise each of ``chans`` of the layer, as a grid."""
    from xcam import filters as xf
    from xcam.viz import save_png

    click.echo(f"maximising {len(chans)} channel(s) of {name} ({steps} steps) ...", err=True)
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
    click.echo(f"wrote {save_png(picture, target)}")
