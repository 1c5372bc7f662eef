"""``xcam layers``: the candidate target layers of a model (or an exported file's outputs)."""

from __future__ import annotations

import click

from xcam.cli.loading import load
from xcam.cli.messages import fail
from xcam.cli.options import trust_options


@click.command()
@trust_options
@click.argument("model")
@click.option("--weights", type=click.Path(dir_okay=False), help="State dict for the model.")
@click.option("--input-size", help="Probe input size H or H,W (default: the model's).")
def layers(model: str, weights: str | None, input_size: str | None) -> None:
    """List candidate target layers of MODEL with their output shapes.

    Token layers (vision transformers) are listed with the grid their map has: cls+grid
    (a class token first, dropped), grid, nhwc. The layer marked * is the default (the
    last one with a spatial output; for a ViT, the norm before its last attention).
    """
    import torch

    from xcam.backends import Backend
    from xcam.core.layers import candidate_layers, family_default, last_spatial

    info = load(model, weights, "cpu", input_size)
    h, w = info.input_size
    c = info.channels
    if isinstance(info.model, Backend):
        _list_outputs(model, info.model.metadata)
        return
    try:
        infos = candidate_layers(info.model, torch.zeros(1, c, h, w, dtype=info.input_dtype))
    except Exception as e:
        reason = next(iter(str(e).strip().splitlines()), type(e).__name__)
        which = "another size" if input_size else "the size it takes"
        fail(
            f"{model} failed on a probe input of 1x{c}x{h}x{w}: {reason}. "
            f"Pass --input-size H,W with {which}"
        )
    if not infos:
        fail(f"{model} has no layer with a 4-D output or tokens on a grid")
    chosen = info.default_layer or family_default(info.model) or last_spatial(infos)
    name_w = max(len(i.name) for i in infos)
    kind_w = max(len(i.kind) for i in infos)
    shape_w = max(len("x".join(map(str, i.shape))) for i in infos)
    click.echo(f"layers of {model} for a 1x{c}x{h}x{w} input (* = default):")
    for i in infos:
        mark = "*" if i.name == chosen else " "
        shape = "x".join(map(str, i.shape))
        layout = "" if i.is_map else f"  {i.layout} {i.grid[0]}x{i.grid[1]}"
        if i.replicated and i.positions > 1:
            layout += "  (one position repeated: a flat map)"
        line = f"{mark} {i.name:<{name_w}}  {i.kind:<{kind_w}}  {shape:<{shape_w}}{layout}"
        click.echo(line.rstrip())


def _list_outputs(model: str, meta) -> None:
    """An exported file has no layers to choose from: its inputs (with the preprocessing
    they expect) and its named outputs instead."""
    shape = "x".join("B" if d is None else str(d) for d in meta.input_shape)
    click.echo(f"inputs of {model} ({meta.format}, exported by {meta.exporter}):")
    click.echo(f"  {meta.input_name:<20} [{shape}] {meta.dtype}, mean {meta.mean}, std {meta.std}")
    if "target" in (meta.input_names or []):
        click.echo(f"  {'target':<20} [B] int64: the class to explain per sample, -1 the top-1")
    click.echo("outputs:")
    for name in meta.output_names:
        click.echo(f"  {name:<20} {meta.outputs.get(name, '')}")
    if meta.classes:
        click.echo(f"classes: {', '.join(meta.classes)}")
