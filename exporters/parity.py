"""Parity: the exported artifact, loaded back, against eager PyTorch on fresh inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from exporters.errors import ParityError

# max |exported - eager| / max(|eager|, 1) per output; fp32 kernels differ (fused BN, conv
# algorithms) by ~1e-6 relative, so 1e-4 leaves room without hiding a real mismatch
DEFAULT_TOLERANCE = 1e-4
# gradients and maps: ||exported - eager|| / ||eager||. A ReLU whose input is within
# rounding of zero may flip between runtimes and move the gradient locally: on a seeded
# resnet50 at layer3, a 1e-5 perturbation of the input already moves eager's own gradient
# by up to 5e-3 in norm. So gradients get a bound above that, and the report shows the
# figure reached
GRADIENT_TOLERANCE = 1e-2


def is_gradient(name: str) -> bool:
    return name.endswith(".grad") or name == "gradcam"


def compare(
    names: Sequence[str], got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]
) -> dict[str, dict[str, float]]:
    """Per output: ``max_abs`` and ``max_rel`` (abs error over the eager output's max, ≥ 1;
    for gradients and maps, the relative error in norm)."""
    errors = {}
    for name, g, w in zip(names, got, want, strict=True):
        g, w = g.detach().float().cpu(), w.detach().float().cpu()
        if g.shape != w.shape:
            raise ParityError(
                f"output {name!r} has shape {tuple(g.shape)} in the export, {tuple(w.shape)} in "
                "eager",
                {},
            )
        diff = float((g - w).abs().max()) if g.numel() else 0.0
        if is_gradient(name):
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
) -> dict[str, dict[str, float]]:
    """Run ``backend`` and ``eager`` on fresh inputs at each batch size (and each extra
    spatial size): statistics like ``example``'s, and at the first size also a bright,
    high-contrast and a dark, low-contrast input, so that a file which recorded one
    data-dependent branch of the model is caught. The worst error per output, or
    ParityError."""
    gen = torch.Generator().manual_seed(seed)
    mean, std = float(example.mean()), float(example.std()) or 1.0
    worst: dict[str, dict[str, float]] = {}
    shapes = [(b, *example.shape[1:]) for b in batches]
    shapes += [(batches[-1], example.shape[1], h, w) for h, w in sizes]
    # (scale of the spread, shift of the mean in stds) per input
    looks = [(1.0, 0.0)] * len(shapes) + [(2.0, 2.0), (0.5, -2.0)]
    shapes += [shapes[0]] * 2
    names = list(backend.output_names)
    for shape, (spread, shift) in zip(shapes, looks, strict=True):
        x = torch.randn(*shape, generator=gen) * std * spread + mean + shift * std
        with torch.no_grad():
            want = eager(x.to(example.device))
        got = backend(x.to(example.device))
        for name, err in compare(names, got, want).items():
            cur = worst.setdefault(name, {"max_abs": 0.0, "max_rel": 0.0})
            cur["max_abs"] = max(cur["max_abs"], err["max_abs"])
            cur["max_rel"] = max(cur["max_rel"], err["max_rel"])
    bad = {
        n: e
        for n, e in worst.items()
        if e["max_rel"] > (max(tolerance, GRADIENT_TOLERANCE) if is_gradient(n) else tolerance)
    }
    if bad:
        lines = ", ".join(
            f"{n}: max abs {e['max_abs']:.3g} (rel {e['max_rel']:.3g})" for n, e in bad.items()
        )
        raise ParityError(
            f"{backend.path.name} does not match eager PyTorch within {tolerance:g}: {lines}",
            worst,
        )
    return worst
