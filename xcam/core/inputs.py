"""Checks of what a caller hands in, before any work: the input tensor, the model's stem."""

from __future__ import annotations

import torch
from torch import nn

from xcam.core.errors import InputError


def check_input(x: object) -> torch.Tensor:
    """A finite ``[B, C, H, W]`` tensor (float, or an integer type the model's dtype is cast
    from); anything else is an :class:`InputError` that says what it got."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"the input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        raise InputError(
            f"the input is 3-D {tuple(x.shape)}: xcam takes a batch [B, C, H, W] (NCHW); for "
            "one image use x.unsqueeze(0)"
        )
    if x.dim() != 4:
        raise InputError(f"the input must be [B, C, H, W] (NCHW), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError("the input batch is empty")
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise InputError(f"the input must be a real number tensor, got {x.dtype}")
    if x.dtype.is_floating_point and not _finite(x):
        raise InputError("the input contains NaN or infinite values")
    return x


def _finite(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is finite. A sum is several times cheaper than an
    elementwise test and is finite when they all are; only a sum that overflows or meets a
    NaN / inf needs the exact test."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def first_conv_channels(model: nn.Module) -> int | None:
    """The input channels of the model's first ``Conv2d`` (its stem), if it has one."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels
