"""The arithmetic every method shares, written once: combine the weighted channels, take
the first principal component, upsample, normalise, fuse layers, differentiate a score.

Graph-friendly (no in-place ops): the in-graph Grad-CAM of :mod:`exporters.gradients` is
built from the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from xcam.core.errors import NumericalError
from xcam.core.flat import RELATIVE_SPREAD


def normalize(maps: torch.Tensor, dims: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale each sample of ``maps`` to ``[0, 1]`` over its last ``dims`` dimensions
    (``[B, H, W]`` by default; ``dims=3`` scales ``[B, C, H, W]`` over channels and positions).

    A constant sample (nothing to show) becomes zeros and is flagged ``[B]``, never NaN; so
    does one whose spread is rounding (see :mod:`xcam.core.flat`).
    """
    flat = maps.flatten(maps.dim() - dims)  # [..., N]
    lo = flat.amin(dim=-1, keepdim=True)  # (torch.aminmax along a dim is many times slower)
    hi = flat.amax(dim=-1, keepdim=True)
    span = hi - lo
    # (a non-finite map is left to give NaN, which the callers name as an overflow)
    still = (span <= RELATIVE_SPREAD * torch.maximum(hi.abs(), lo.abs())) & span.isfinite()
    scaled = torch.where(still, 0.0, (flat - lo) / torch.where(still, 1.0, span))
    constant = still.flatten(1).all(dim=1)
    return scaled.clamp(0.0, 1.0).reshape(maps.shape), constant


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[B, h, w]`` (or ``[B, C, h, w]``) resized bilinearly to ``size``, in float32 whatever
    the model's dtype (fp16 / bf16 maps too)."""
    size = tuple(int(s) for s in size)
    single = maps.dim() == 3
    t = maps[:, None] if single else maps
    if tuple(t.shape[-2:]) != size:
        t = F.interpolate(t.float(), size=size, mode="bilinear", align_corners=False)
    t = t.float()
    return t[:, 0] if single else t


def first_component(weighted: torch.Tensor, center: bool = False) -> torch.Tensor:
    """Projection of ``[B, C, h, w]`` on its first principal direction: ``[B, h, w]``.

    Per sample, the ``hw x C`` matrix ``M = U S V^T`` (float32 SVD whatever the dtype, not
    centred, as in Eigen-CAM) gives ``M v_1``. With ``center``, each channel's mean over the
    positions is subtracted from ``M`` first (a principal component analysis proper, as
    pytorch-grad-cam computes it). An SVD's sign is arbitrary: it is chosen so that the
    projection agrees with the channel sum ``sum_c M_c``, the un-weighted map; where that
    sum is zero up to rounding (tokens out of a LayerNorm), so that its largest entry is
    positive.
    """
    b, _, h, w = weighted.shape
    if not bool(torch.isfinite(weighted).all()):  # an SVD of it can't converge
        raise NumericalError(
            "the weighted activations are not finite (overflow in activations or gradients)"
        )
    flat = weighted.float().flatten(2).transpose(1, 2)  # [B, hw, C]
    m = flat - flat.mean(dim=1, keepdim=True) if center else flat
    _, _, vh = torch.linalg.svd(m, full_matrices=False)
    proj = m @ vh[:, 0, :, None]  # [B, hw, 1]
    p, total = proj[:, :, 0], flat.sum(dim=2)
    sign = torch.where((p * total).sum(dim=1) < 0, -1.0, 1.0)
    # where the channel sum is only rounding noise (a LayerNorm's output: each token sums to
    # 0), it would pick the sign at random: the largest entry is made positive instead
    noise = total.norm(dim=1) <= 1e-4 * math.sqrt(flat.shape[2]) * flat.norm(dim=(1, 2))
    largest = p.gather(1, p.abs().argmax(dim=1, keepdim=True))[:, 0]
    sign = torch.where(noise, torch.where(largest < 0, -1.0, 1.0), sign).to(proj)
    return (p * sign[:, None]).reshape(b, h, w)


def combine(
    acts: torch.Tensor,
    weights: torch.Tensor,
    name: str = "",
    eigen: bool = False,
    center: bool = False,
) -> torch.Tensor:
    """``ReLU(sum_c w_c A_c)``: ``[B, h, w]``. ``weights`` is ``[B, C]`` or ``[B, C, h, w]``.

    ``eigen``: the first principal component of ``w_c A_c`` instead of the channel sum.
    """
    if weights.dim() == 2:
        weights = weights[:, :, None, None]
    weighted = weights * acts
    cam = F.relu(first_component(weighted, center) if eigen else weighted.sum(dim=1))
    if not bool(torch.isfinite(cam).all()):
        raise NumericalError(
            f"the map of layer {name!r} is not finite (overflow in activations or gradients)"
        )
    return cam


def fuse(
    layer_maps: Sequence[torch.Tensor], size: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upsample each layer's map to ``size`` (bilinear), normalise, average, normalise."""
    if len(layer_maps) == 1:  # the average of one map is the map, already normalised
        return normalize(upsample(layer_maps[0], size))
    ups = [normalize(upsample(cam, size))[0] for cam in layer_maps]
    return normalize(torch.stack(ups).mean(dim=0))


def layer_gradients(scores: torch.Tensor, acts: list[torch.Tensor]) -> list[torch.Tensor]:
    """``dS/dA`` for every layer by ``autograd.grad``; a layer S does not use gets zeros.

    The batch's scores are summed: in eval mode samples don't interact, so each
    sample's gradient is its own.
    """
    if not scores.requires_grad:  # the score does not depend on any activation
        return [torch.zeros_like(a) for a in acts]
    grads = torch.autograd.grad(scores.sum(), acts, allow_unused=True)
    return [torch.zeros_like(a) if g is None else g for a, g in zip(acts, grads, strict=True)]
