"""Options and parsers several commands share (--input-size, --class, --output, --mean/--std,
--trust-*, --method, --engine / --ray-address)."""

from __future__ import annotations

import functools

import click

from xcam.core.artifact import MAX_SIDE, TOKEN_LAYOUTS

PRE_ACTIVATION_HELP = (
    "For a model whose output ends in Sigmoid/Softmax/LogSoftmax: explain the score before it "
    "(a saturated probability's gradient vanishes)."
)


def parse_size(value: str | None) -> tuple[int, int] | None:
    """``--input-size``: ``H`` or ``H,W`` (also ``HxW``), each side in 1..MAX_SIDE."""
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


def parse_target(value: str | None) -> int | str | None:
    """``--class``: a class index, positive/negative (pos/neg) for a single-logit head,
    present for every label a multi-label head says is present, or boxes for every box a
    detector finds."""
    if value is None:
        return None
    if value.lower() in ("positive", "negative", "pos", "neg", "present", "boxes"):
        return value.lower()
    try:
        index = int(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a class index, positive/negative, present or boxes",
            param_hint="--class",
        ) from None
    if not -(2**63) <= index < 2**63:  # no tensor of class indices holds it
        raise click.BadParameter(
            f"{value} is not a class index: far beyond any model's classes", param_hint="--class"
        )
    return index


def parse_output(value: str | None) -> int | str | None:
    """``--output``: an index into a tuple output, else a key of a dict output."""
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def engine_options(local: str, ray: str, extra: str):
    """``--engine local|ray`` and ``--ray-address``: ``local`` and ``ray`` say what each
    engine runs; ``extra`` is the pip extra that brings Ray's part."""

    def add(command):
        command = click.option(
            "--ray-address", help="ray: join this cluster (e.g. ray://head:10001, auto)."
        )(command)
        return click.option(
            "--engine",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help=f"local: {local}; ray: {ray} (pip install 'xcam-deploy[{extra}]'), on a local "
            "Ray unless --ray-address.",
        )(command)

    return add


def trust_options(command):
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


def parse_stats(ctx: click.Context, param: click.Parameter, value: str | None):
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


def stats_options(command):
    """``--mean`` and ``--std``: the normalisation the model was trained with."""
    for name, default in (("--std", "0.229,0.224,0.225"), ("--mean", "0.485,0.456,0.406")):
        command = click.option(
            name,
            callback=parse_stats,
            help=f"Per-channel normalisation {name[2:]}, comma-separated (default: the model's "
            f"or exported file's; else ImageNet's {default}).",
        )(command)
    return command


class MethodOption(click.Option):
    """``--method``: its help lists the registered methods (imported only for --help)."""

    def get_help_record(self, ctx: click.Context):
        from xcam.methods import list_methods

        self.help = "Method: " + ", ".join(list_methods()) + "."
        return super().get_help_record(ctx)


def tokens_option(fn):
    """``--tokens``: how a layer that outputs tokens becomes a map (default: found)."""

    return click.option(
        "--tokens",
        type=click.Choice(TOKEN_LAYOUTS),
        help="How the layer's tokens make a map: grid ([B, N, C]), cls+grid (a class token "
        "first), nhwc ([B, H, W, C]); default: found for ViT / Swin and square grids.",
    )(fn)
