"""How faithful is a saliency map? The pointing game and the deletion / insertion metrics.

Pointing game — Zhang, Bargal, Lin, Brandt, Shen, Sclaroff, "Top-down Neural Attention by
Excitation Backprop", ECCV 2016 (IJCV 2018). A map *hits* when its maximum lies inside the
object's mask::

    hit_b = [ argmax_{ij} S_b,ij ∈ mask_b ]

Deletion and insertion — Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for
Explanation of Black-box Models", BMVC 2018. Pixels are ranked by saliency, most salient
first. *Deletion* replaces them, in ``steps`` equal increments, by a baseline image (a
strongly blurred copy of the input, the per-channel mean, or a constant) and records the
explained class's softmax probability after each step; *insertion* starts from the baseline
and puts the input's pixels back in the same order. With ``n_k = floor(k · HW / steps)``
pixels changed at step ``k`` (``k = 0 … steps``) and ``x_k = n_k / HW``::

    deletion:  D_k = p_c( where(rank < n_k, baseline, x) )      D_0 = p_c(x)
    insertion: I_k = p_c( where(rank < n_k, x, baseline) )      I_0 = p_c(baseline)
    AUC = sum_k (x_{k+1} - x_k) · (P_k + P_{k+1}) / 2           (trapezoidal rule on [0, 1])

A faithful map makes the probability fall fast when its pixels are deleted (low deletion
AUC) and rise fast when they are inserted (high insertion AUC). The paper deletes towards
a black (zero) image and inserts into a blurred one; here one ``baseline`` serves both, so
that the two curves share their endpoints (``D_0 = I_steps``, ``D_steps = I_0``).

Saliency: a ``[B, H, W]`` map is ranked as it is; a ``[B, C, H, W]`` attribution (Guided
Backprop, Guided Grad-CAM) by ``sum_c |G_c,ij|``. Ties are broken by a stable sort: among
equal values the pixel with the lower row-major index ranks first, so results never depend
on the sort's implementation.

Example::

    >>> import torch, xcam
    >>> from xcam.demo import load_demo_model
    >>> from xcam.quality import deletion_insertion, pointing_game
    >>> model = load_demo_model()
    >>> x = torch.randn(2, 3, 64, 64)
    >>> maps = xcam.GradCAM(model, "block3")(x, targets=[0, 1]).maps
    >>> deletion, insertion = deletion_insertion(model, x, maps, [0, 1], steps=8)
    >>> tuple(deletion.shape), tuple(insertion.shape)
    ((2,), (2,))
    >>> mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    >>> pointing_game(maps, mask).tolist()
    [False, False]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xcam.core.capture import preserved_state
from xcam.core.errors import InputError, TargetError
from xcam.core.final import final_activations
from xcam.core.targets import class_probability, flatten_logits, resolve_targets, score_functions

Baseline = str | float | torch.Tensor


@dataclass
class Curves:
    """Deletion and insertion curves of a batch.

    Attributes:
        fractions: ``[steps + 1]`` float64, the fraction of pixels changed at each step, 0 to 1.
        deletion: ``[B, steps + 1]``, the explained class's probability as the most salient
            pixels are replaced by the baseline (step 0: the unmodified input).
        insertion: ``[B, steps + 1]``, the same as they are put back into the baseline
            (step 0: the baseline itself).
        targets: ``[B]``, the class explained per sample (1 / 0 = positive / negative
            decision of a single-logit head).
    """

    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor
    targets: torch.Tensor

    def auc(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(deletion_auc [B], insertion_auc [B])`` by the trapezoidal rule."""
        return auc(self.fractions, self.deletion), auc(self.fractions, self.insertion)


def saliency(maps: torch.Tensor, name: str = "maps") -> torch.Tensor:
    """``[B, H, W]`` float saliency: a ``[B, H, W]`` map as is, ``[B, C, H, W]`` as
    ``sum_c |maps_c|``. Rejects other shapes, empty batches and non-finite values."""
    if not isinstance(maps, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() not in (3, 4):
        raise InputError(
            f"{name} must be [B, H, W] (a class activation map) or [B, C, H, W] (an "
            f"attribution such as Guided Backprop's), got {tuple(maps.shape)}"
        )
    if maps.dtype == torch.bool or maps.is_complex():
        raise InputError(f"{name} must hold real numbers, got {maps.dtype}")
    if maps.shape[0] == 0 or maps.shape[-1] == 0 or maps.shape[-2] == 0:
        raise InputError(f"{name} is empty: {tuple(maps.shape)}")
    maps = maps.detach()
    if not maps.dtype.is_floating_point:
        maps = maps.float()
    if not bool(torch.isfinite(maps).all()):
        raise InputError(f"{name} contains NaN or infinite values")
    return maps.abs().sum(dim=1) if maps.dim() == 4 else maps


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: True where the map's maximum lies inside the object's mask.

    ``maps``: ``[B, H, W]`` (or ``[B, C, H, W]``, reduced by :func:`saliency`); ``masks``:
    ``[B, H, W]`` bool (any other dtype counts its non-zeros). Ties: when several positions
    share the maximum, the map hits if *any* of them lies inside the mask. A constant map
    (all positions tied, e.g. a degenerate all-zero map) points nowhere and is a miss.
    """
    sal = saliency(maps)
    if not isinstance(masks, torch.Tensor):
        raise InputError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    if masks.shape != sal.shape:
        raise InputError(
            f"masks must be [B, H, W] matching the maps' {tuple(sal.shape)}, got "
            f"{tuple(masks.shape)}"
        )
    inside = (masks if masks.dtype == torch.bool else masks != 0).to(sal.device).flatten(1)
    flat = sal.flatten(1)
    top = flat.amax(dim=1, keepdim=True)
    peaks = flat == top
    informative = top[:, 0] > flat.amin(dim=1)
    return (peaks & inside).any(dim=1) & informative


def auc(fractions: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Area under ``values`` (``[..., S]``) over ``fractions`` (``[S]``), trapezoidal rule:
    ``sum_k (f_{k+1} - f_k) · (v_k + v_{k+1}) / 2``, computed in float64, returned float32."""
    f = fractions.to(torch.float64)
    v = values.to(torch.float64)
    area = ((f[1:] - f[:-1]) * (v[..., 1:] + v[..., :-1]) / 2).sum(dim=-1)
    return area.float()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` (``[B, C, H, W]``) blurred by a Gaussian of standard deviation ``sigma``
    pixels: a separable kernel of radius ``ceil(3 sigma)``, replicate padding (so any
    radius works on any image size)."""
    if sigma <= 0:
        return x.clone()
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(device=x.device, dtype=x.dtype)
    c = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def baseline_image(
    x: torch.Tensor, baseline: Baseline = "blur", blur_sigma: float | None = None
) -> torch.Tensor:
    """The image that deleted pixels become (and insertion starts from), ``[B, C, H, W]``.

    ``"blur"``: :func:`gaussian_blur` of ``x`` with ``blur_sigma`` (default
    ``max(H, W) / 10`` pixels: shapes are gone, colours stay); ``"mean"``: each image's
    per-channel mean; a float: that constant (in the model's input space, e.g. 0 is the
    dataset mean of a normalised input); a tensor: broadcast to ``x``.
    """
    if isinstance(baseline, torch.Tensor):
        try:
            return baseline.to(device=x.device, dtype=x.dtype).expand_as(x).clone()
        except RuntimeError:
            raise InputError(
                f"a baseline tensor of shape {tuple(baseline.shape)} does not broadcast to "
                f"the input's {tuple(x.shape)}"
            ) from None
    if isinstance(baseline, str):
        if baseline == "blur":
            sigma = max(x.shape[-2:]) / 10 if blur_sigma is None else float(blur_sigma)
            return gaussian_blur(x, sigma)
        if baseline == "mean":
            return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
        raise InputError(f"baseline must be 'blur', 'mean', a number or a tensor, got {baseline!r}")
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    raise InputError(
        f"baseline must be 'blur', 'mean', a number or a tensor, got {type(baseline).__name__}"
    )


def _check_input(x: object) -> torch.Tensor:
    """A finite, non-empty float ``[B, C, H, W]`` batch, detached. Not
    :func:`xcam.core.inputs.check_input`: the curves blend ``x`` with a float baseline, so
    an integer input is refused here, where the methods accept it (and cast it)."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"the input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[0] == 0:
        raise InputError(f"the input must be a non-empty [B, C, H, W] batch, got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise InputError(f"the input must be a float tensor, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise InputError("the input contains NaN or infinite values")
    return x.detach()


def _logits(model: Callable[[torch.Tensor], object], images: torch.Tensor) -> torch.Tensor:
    return _scores(model, images, watch=False)[0]


def _scores(
    model: Callable[[torch.Tensor], object], images: torch.Tensor, watch: bool = True
) -> tuple[torch.Tensor, str | None]:
    """``[B, K]`` float scores, and (``watch``) the final activation they went through, if
    any: a model ending in Softmax / Sigmoid gives probabilities, not logits."""
    with final_activations(watch) as final:
        out = model(images)
    if isinstance(out, (tuple, list)):  # a CamModel: (logits, *activations)
        out = out[0]
    activation = None if final is None else final.find(out)[0]  # type: ignore[arg-type]
    return flatten_logits(out).float(), activation  # type: ignore[arg-type]


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def deletion_insertion_curves(
    model: Callable[[torch.Tensor], object],
    x: torch.Tensor,
    maps: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor | None = None,
    *,
    steps: int = 16,
    baseline: Baseline = "blur",
    blur_sigma: float | None = None,
    batch_size: int = 64,
) -> Curves:
    """The deletion and insertion curves of ``maps`` for ``model`` on ``x`` (see the module).

    ``model``: an ``nn.Module`` (run in eval mode under ``no_grad``, its training flags
    restored afterwards) or any callable ``x -> logits`` (``[B, K]``; a tuple's first item
    is taken). ``maps``: ``[B, H, W]`` or ``[B, C, H, W]`` at the input's size. ``targets``:
    the class per sample (an int, a list or a ``[B]`` tensor); None takes the top-1 class of
    the unmodified input. All ``B · (2 · steps)`` distinct images go through the model in
    batches of ``batch_size``, built as needed (memory stays ``O(batch_size)`` images).
    """
    x, sal = _check_curves(x, maps, targets, steps, batch_size)
    base = baseline_image(x, baseline, blur_sigma)
    rank = _saliency_ranks(sal)
    b, _, h, w = x.shape
    n = h * w
    counts = torch.arange(steps + 1, device=x.device) * n // steps  # pixels changed at step k
    fractions = counts.to(torch.float64) / n
    context = preserved_state(model) if isinstance(model, nn.Module) else nullcontext()
    with context, torch.no_grad():
        found = [_scores(model, x[part]) for part in _chunks(b, batch_size)]
        logits, activation = torch.cat([f[0] for f in found]), found[0][1]
        classes = resolve_targets(logits, targets, activation).classes  # type: ignore[arg-type]
        assert classes is not None  # callables were rejected above
        classes = classes.to(x.device)
        p_x = class_probability(logits, classes, activation)
        probs = _step_probabilities(model, x, base, rank, counts, classes, activation, batch_size)
    p_base = probs[:b]
    middle = probs[b:].view(b, 2, steps - 1)
    deletion = torch.cat([p_x[:, None], middle[:, 0], p_base[:, None]], dim=1)
    insertion = torch.cat([p_base[:, None], middle[:, 1], p_x[:, None]], dim=1)
    return Curves(fractions.cpu(), deletion.cpu(), insertion.cpu(), classes.cpu())


def _check_curves(
    x: object,
    maps: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor | None,
    steps: int,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The arguments of :func:`deletion_insertion_curves` checked: the input (detached) and
    the maps' saliency ``[B, H, W]`` on the input's device."""
    x = _check_input(x)
    sal = saliency(maps).to(x.device)
    b, _, h, w = x.shape
    if sal.shape != (b, h, w):
        raise InputError(
            f"maps of shape {tuple(maps.shape)} do not fit the input {tuple(x.shape)}: "
            f"need [B, H, W] = {[b, h, w]} (or [B, C, H, W]), at the input's resolution"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive int, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    if score_functions(targets):
        raise TargetError("deletion / insertion needs class targets (ints), not a callable")
    return x, sal


def _saliency_ranks(sal: torch.Tensor) -> torch.Tensor:
    """``[B, HW]``: each pixel's rank by saliency, 0 the most salient; a stable sort ranks
    the lower row-major index first among equal values."""
    b, n = sal.shape[0], sal[0].numel()
    order = torch.sort(sal.flatten(1), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=sal.device).expand(b, n))
    return rank


def _step_jobs(
    b: int, steps: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sample, mode, step)`` of each image after the unmodified input: B baselines
    (mode -1), then per sample the intermediate steps k = 1..steps-1 of deletion (mode 0)
    and of insertion (mode 1)."""
    inner = steps - 1
    sample = torch.cat([torch.arange(b), torch.arange(b).repeat_interleave(2 * inner)])
    mode = torch.cat([torch.full((b,), -1), torch.arange(2).repeat_interleave(inner).repeat(b)])
    step = torch.cat([torch.zeros(b, dtype=torch.long), torch.arange(1, steps).repeat(2 * b)])
    return sample.to(device), mode.to(device), step.to(device)


def _step_probabilities(
    model: Callable[[torch.Tensor], object],
    x: torch.Tensor,
    base: torch.Tensor,
    rank: torch.Tensor,
    counts: torch.Tensor,
    classes: torch.Tensor,
    activation: str | None,
    batch_size: int,
) -> torch.Tensor:
    """The explained class's probability for each image of :func:`_step_jobs`, ``[B +
    2·B·(steps - 1)]``: the images are built and run ``batch_size`` at a time."""
    h, w = x.shape[-2:]
    job_sample, job_mode, job_step = _step_jobs(x.shape[0], len(counts) - 1, x.device)
    probs = torch.empty(len(job_sample), dtype=torch.float32, device=x.device)
    for part in _chunks(len(job_sample), batch_size):
        i, mode, k = job_sample[part], job_mode[part], job_step[part]
        changed = rank[i] < counts[k][:, None]  # [N, HW]: the top n_k pixels
        keep_x = torch.where((mode == 1)[:, None], changed, ~changed)
        keep_x &= (mode != -1)[:, None]
        images = torch.where(keep_x.view(-1, 1, h, w), x[i], base[i])
        probs[part] = class_probability(_logits(model, images), classes[i], activation)
    return probs


def deletion_insertion(
    model: Callable[[torch.Tensor], object],
    x: torch.Tensor,
    maps: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor | None = None,
    *,
    steps: int = 16,
    baseline: Baseline = "blur",
    blur_sigma: float | None = None,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(deletion_auc [B], insertion_auc [B])``, each in ``[0, 1]``: lower deletion and
    higher insertion mean a more faithful map. See :func:`deletion_insertion_curves` for
    the arguments and the module docstring for the definitions."""
    return deletion_insertion_curves(
        model,
        x,
        maps,
        targets,
        steps=steps,
        baseline=baseline,
        blur_sigma=blur_sigma,
        batch_size=batch_size,
    ).auc()
