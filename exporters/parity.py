"""Parity: the exported artifact, loaded back, against eager PyTorch on fresh inputs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from exporters.errors import ParityError
from xcam.core.artifact import GRAD_SUFFIX, GRADCAM, is_gradient_output

# max |exported - eager| / max(|eager|, 1) per output; fp32 kernels differ (fused BN, conv
# algorithms) by ~1e-6 relative, so 1e-4 leaves room without hiding a real mismatch
DEFAULT_TOLERANCE = 1e-4
# gradients and maps: ||exported - eager|| / ||eager||. A ReLU whose input is within
# rounding of zero may flip between runtimes and move the gradient locally: on a seeded
# resnet50 at layer3, a 1e-5 perturbation of the input already moves eager's own gradient
# by up to 5e-3 in norm. So gradients get a bound above that, and the report shows the
# figure reached
GRADIENT_TOLERANCE = 1e-2
# a probability's gradient is saturated where it is below this fraction of the gradient of
# the score before the activation (sigmoid'(z) < 1e-4: |z| > 9.2). Runtimes round such
# probabilities differently (ONNX Runtime's sigmoid(-21) is exactly 0, eager's 7.6e-10), so
# there the gradient is compared in absolute terms, on that scale, and the map (a
# normalised vanishing gradient) is not compared
SATURATED = 1e-4


def _sample_norms(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().cpu().flatten(1).norm(dim=1)


def saturated_samples(
    names: Sequence[str], want: Sequence[torch.Tensor], unsaturated: Sequence[torch.Tensor]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per gradient output, each sample's norm floor (``SATURATED`` times the gradient of the
    score before the activation), and which samples are saturated in every layer."""
    floors, saturated = {}, None
    for name, w, u in zip(names, want, unsaturated, strict=True):
        if name.endswith(GRAD_SUFFIX):
            floors[name] = SATURATED * _sample_norms(u)
            low = _sample_norms(w) < floors[name]
            saturated = low if saturated is None else saturated & low
    assert saturated is not None
    return floors, saturated


def compare(
    names: Sequence[str],
    got: Sequence[torch.Tensor],
    want: Sequence[torch.Tensor],
    floors: dict[str, torch.Tensor] | None = None,
    saturated: torch.Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """Per output: ``max_abs`` and ``max_rel`` (abs error over the eager output's max, ≥ 1;
    for gradients and maps, the relative error in norm). ``floors``: per gradient output,
    the smallest norm each sample's error is measured against; ``saturated``: samples whose
    map is left out."""
    errors = {}
    for name, g, w in zip(names, got, want, strict=True):
        g, w = g.detach().float().cpu(), w.detach().float().cpu()
        if g.shape != w.shape:
            raise ParityError(
                f"output {name!r} has shape {tuple(g.shape)} in the export, {tuple(w.shape)} in "
                "eager",
                {},
            )
        if name == GRADCAM and saturated is not None:
            g, w = g[~saturated], w[~saturated]
        if not (bool(torch.isfinite(w).all()) and bool(torch.isfinite(g).all())):
            which = "eager PyTorch's" if not bool(torch.isfinite(w).all()) else "the export's"
            raise ParityError(
                f"output {name!r}: {which} values are not finite (NaN or infinite weights, or "
                "an overflow), so the export can't be checked against eager",
                {},
            )
        diff = float((g - w).abs().max()) if g.numel() else 0.0
        if is_gradient_output(name):
            if floors is not None and name in floors:
                norm = float(torch.maximum(_sample_norms(w), floors[name]).norm())
            else:
                norm = float(w.norm())
            rel = float((g - w).norm()) / norm if norm > 0 else float((g - w).norm())
        else:
            rel = diff / max(float(w.abs().max()) if w.numel() else 0.0, 1.0)
        errors[name] = {"max_abs": diff, "max_rel": rel}
    return errors


def check_parity(
    backend,
    eager: torch.nn.Module,
    example: torch.Tensor,
    batches: Sequence[int] = (1, 2, 3),
    sizes: Sequence[tuple[int, int]] = (),
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    unsaturated: torch.nn.Module | None = None,
    notes: list[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Run ``backend`` and ``eager`` on fresh inputs at each batch size (and each extra
    spatial size): statistics like ``example``'s, and at the first size also a bright,
    high-contrast and a dark, low-contrast input, so that a file which recorded one
    data-dependent branch of the model is caught. The worst error per output, or
    ParityError.

    ``unsaturated`` (a gradients file of a model ending in a sigmoid / softmax): the eager
    reference for the scores before the activation. Where a sample's probability is
    saturated, its gradient is compared on that scale and its map is not compared (see
    ``SATURATED``); how many were is added to ``notes``."""
    names = list(backend.output_names)
    worst: dict[str, dict[str, float]] = {}
    counted = [0, 0]  # saturated samples, samples
    for x in parity_inputs(example, batches, sizes, seed):
        with torch.no_grad():
            want = eager(x)
        got = backend(x)
        floors = saturated = None
        if unsaturated is not None:
            with torch.no_grad():
                scale = unsaturated(x)
            floors, saturated = saturated_samples(names, want, scale)
            counted[0] += int(saturated.sum())
            counted[1] += saturated.numel()
        for name, err in compare(names, got, want, floors, saturated).items():
            cur = worst.setdefault(name, {"max_abs": 0.0, "max_rel": 0.0})
            cur["max_abs"] = max(cur["max_abs"], err["max_abs"])
            cur["max_rel"] = max(cur["max_rel"], err["max_rel"])
    if notes is not None and counted[0]:
        notes.append(
            f"{counted[0]} of {counted[1]} parity samples had a saturated probability (its "
            f"gradient below {SATURATED:g} of the logit's): their gradients were compared on "
            "the logit's scale, their maps not; export with --pre-activation to explain the "
            "logit"
        )
    _refuse_beyond(backend.path.name, worst, tolerance)
    return worst


def parity_inputs(
    example: torch.Tensor,
    batches: Sequence[int],
    sizes: Sequence[tuple[int, int]],
    seed: int = 0,
) -> Iterator[torch.Tensor]:
    """Fresh inputs with ``example``'s mean and spread, dtype and device: one per batch size,
    one per extra spatial size (at the last batch size), then a bright, high-contrast and a
    dark, low-contrast one at the first shape."""
    gen = torch.Generator().manual_seed(seed)
    mean, std = float(example.mean()), float(example.std()) or 1.0
    shapes = [(b, *example.shape[1:]) for b in batches]
    shapes += [(batches[-1], example.shape[1], h, w) for h, w in sizes]
    # (scale of the spread, shift of the mean in stds) per input
    looks = [(1.0, 0.0)] * len(shapes) + [(2.0, 2.0), (0.5, -2.0)]
    shapes += [shapes[0]] * 2
    for shape, (spread, shift) in zip(shapes, looks, strict=True):
        x = torch.randn(*shape, generator=gen) * std * spread + mean + shift * std
        x = x.to(example.dtype)  # a half-precision model gets half-precision inputs
        yield x.to(example.device)


def _refuse_beyond(name: str, worst: dict[str, dict[str, float]], tolerance: float) -> None:
    """A :class:`ParityError` listing the outputs whose worst error is beyond the tolerance
    (for gradients and maps, at least ``GRADIENT_TOLERANCE``)."""
    bad = {
        n: e
        for n, e in worst.items()
        if e["max_rel"]
        > (max(tolerance, GRADIENT_TOLERANCE) if is_gradient_output(n) else tolerance)
    }
    if bad:
        lines = ", ".join(
            f"{n}: max abs {e['max_abs']:.3g} (rel {e['max_rel']:.3g})" for n, e in bad.items()
        )
        raise ParityError(
            f"{name} does not match eager PyTorch within {tolerance:g}: {lines}",
            worst,
        )
