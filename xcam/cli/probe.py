"""Checks run on MODEL before any work: one forward pass on a zero image (its input size,
its --layer outputs) and the --class index against its classes."""

from __future__ import annotations

import click

from xcam.cli.messages import fail


def probe(
    info, spec: str, input_size: str | None, layers=(), run: bool = True, tokens: str | None = None
) -> object:
    """Run the eager model once, on a batch of one zero image of its input size, before
    any work: a size it can't take is a usage error naming --input-size (when the model's
    own size runs), a forward that raises is one line naming the model and the exception,
    and each of ``layers`` must output a ``[B, C, h, w]`` map (or tokens that make one, laid
    out as ``tokens`` says or as found). Weights that are not finite
    are an error even without a forward (``run=False``). An exported file is left to its
    runtime's checks. Returns what the model returned."""
    from torch import nn

    from xcam.core.errors import XCamError
    from xcam.core.layers import resolve_layer

    model = info.model
    if not isinstance(model, nn.Module):
        return None
    try:
        named = [resolve_layer(model, name) for name in layers]
    except XCamError as e:
        fail(str(e))
    _check_finite(model, spec)
    if not run:
        return None
    try:
        produced, outputs = _forward(info, named, info.input_size)
    except XCamError as e:  # a layer that returns a tuple, or runs twice
        raise click.BadParameter(str(e), param_hint="--layer") from None
    except Exception as e:
        _forward_failed(info, spec, input_size, named, e)
    _check_layer_outputs(info, spec, named, outputs, tokens)
    return produced


def _check_finite(model, spec: str) -> None:
    """Nothing explains a diverged model: its floating-point weights must be finite."""
    import torch

    for pname, value in model.named_parameters():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            fail(
                f"the weights of {spec} are not finite: {pname} holds NaN or infinite values "
                "(a diverged training run, or a damaged --weights file?)"
            )


def _forward(info, named: list, size: tuple[int, int]) -> tuple[object, dict]:
    """The model's output on one zero image of ``size``, and what each of ``named`` gave."""
    import torch

    from xcam.core.capture import Capture, preserved_state

    model = info.model
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, info.channels, *size, dtype=info.input_dtype, device=device)
    with preserved_state(model), torch.no_grad(), Capture(named) as capture:
        produced = model(x)
    return produced, dict(capture.activations)


def _forward_failed(info, spec: str, input_size: str | None, named: list, error: Exception):
    """Report a forward pass that raised (called while handling it): a usage error naming
    --input-size when the model runs at its own size, else one line naming the exception."""
    from xcam.core.errors import first_line

    h, w = info.input_size
    reason = f"{type(error).__name__}: {first_line(error)}"
    own = click.get_current_context().meta.get("xcam.model_size")
    if input_size is not None and own is not None and tuple(own) != (h, w):
        try:
            _forward(info, named, tuple(own))
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
    fail(f"{spec} failed in its forward pass on a 1x{info.channels}x{h}x{w} input: {reason}{hint}")


def _check_layer_outputs(info, spec: str, named: list, outputs: dict, tokens=None) -> None:
    """Each target layer ran and output a ``[B, C, h, w]`` feature map, or tokens that make
    one (see :mod:`xcam.core.tokens`)."""
    from xcam.core.errors import XCamError
    from xcam.core.tokens import layout_of

    for name, module in named:
        act = outputs.get(name)
        if act is None:
            got = "does not run in the forward pass"
        else:
            try:
                layout_of(tokens, info.model, name, act).to_map(act, info.input_size, name)
                continue
            except XCamError:
                got = f"outputs a {'x'.join(map(str, act.shape))} tensor ({act.dim()}-D), not a "
                got += "[B, C, h, w] feature map"
                got += f" or tokens laid out as --tokens {tokens}" if tokens else " or tokens"
        default = f" (default: {info.default_layer})" if info.default_layer else ""
        raise click.BadParameter(
            f"{name!r} ({type(module).__name__}) {got}: choose a layer with a spatial "
            f"output{default}; `xcam layers {spec}` lists them",
            param_hint="--layer",
        )


def check_class(target: object, info, probed: object, output: object) -> None:
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
