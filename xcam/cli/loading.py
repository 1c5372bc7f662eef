"""MODEL as the commands load it: the spec loaded with the trust flags, then --input-size,
--mean and --std applied, and a note of what was assumed or how images are read."""

from __future__ import annotations

import click

from xcam.cli.messages import channels, fail
from xcam.cli.options import parse_size


def load(
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
    info = _load_model(spec, weights, device)
    size = parse_size(input_size)
    if size is not None:
        info.input_size = size
    _check_stats_lengths(spec, info.channels, mean, std)
    assumed = {
        "input size": info.assumed_preprocessing and size is None,
        "mean": info.assumed_preprocessing and mean is None,
        "std": info.assumed_preprocessing and std is None,
    }
    info.mean = info.mean if mean is None else mean
    info.std = info.std if std is None else std
    notes = list(info.notes)
    if images and info.channels != 3:
        notes.append(_image_note(spec, info.channels))
    if stats and any(assumed.values()):
        notes.append(_assumed_note(spec, info, assumed))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    return info


def _load_model(spec: str, weights: str | None, device: str):
    """``load_model`` with the command's --trust-* flags; its own input size is kept in the
    context (the probe compares --input-size with it)."""
    from xcam.core.errors import XCamError
    from xcam.models import load_model

    meta = click.get_current_context().meta
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            fail("--device cuda was asked for but no CUDA device is available")
    try:
        info = load_model(
            spec,
            weights=weights,
            device=device,
            trust_weights=meta.get("xcam.trust_weights", False),
            trust_code=meta.get("xcam.trust_code", False),
        )
    except XCamError as e:
        fail(str(e))
    meta["xcam.model_size"] = info.input_size  # before --input-size: see probe
    return info


def _check_stats_lengths(
    spec: str, n: int, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> None:
    """--mean and --std give one value per input channel of MODEL."""
    for hint, given in (("--mean", mean), ("--std", std)):
        if given is not None and len(given) != n:
            raise click.BadParameter(
                f"{len(given)} values given; {spec} takes {channels(n)}, one value each",
                param_hint=hint,
            )


def _image_note(spec: str, n: int) -> str:
    """How images become the input of a model that does not take 3 channels (RGB)."""
    if n not in (1, 4):
        fail(
            f"{spec} takes {channels(n)}; images make inputs of 1 (grey), "
            "3 (RGB) or 4 (RGBA): explain it from Python with tensors of your own"
        )
    return f"{spec} takes {channels(n)}: images are read as " + (
        "grey (Pillow's L)" if n == 1 else "RGBA (alpha 255: opaque)"
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
