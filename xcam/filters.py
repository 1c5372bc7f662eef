"""Filter views: what a conv layer's kernels look like, what a layer outputs for an image,
and what input a channel of a layer responds to most (activation maximisation).

Tensors are computed with torch; numpy and PIL are imported inside the picture helpers
(the I/O edge). Activations come from :class:`xcam.core.capture.Capture` (the only place that
registers hooks) and every call leaves the model as it was: eval mode during the call,
training flags restored after, no parameter ``.grad`` written, ``requires_grad`` untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from xcam.core.capture import Capture, preserved_state
from xcam.core.errors import InputError, LayerTypeError
from xcam.core.layers import LayerRef, resolve_layer
from xcam.core.ops import normalize
from xcam.models import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

__all__ = [
    "activation_maximisation",
    "conv_layer",
    "feature_map_grid",
    "feature_maps",
    "kernel_grid",
    "maximisation_grid",
]

_BACKGROUND = (40, 40, 40)


# --------------------------------------------------------------------------- helpers


def conv_layer(model: nn.Module, layer: LayerRef) -> tuple[str, nn.Conv2d]:
    """``(name, module)`` of a Conv2d layer; any other kind of module is a LayerTypeError."""
    name, module = resolve_layer(model, layer)
    if not isinstance(module, nn.Conv2d):
        inner = [f"{name}.{n}" for n, m in module.named_modules() if n and isinstance(m, nn.Conv2d)]
        hint = f"; the Conv2d layers inside it: {', '.join(inner[:8])}" if inner else ""
        raise LayerTypeError(
            f"layer {name!r} is a {type(module).__name__}, not a Conv2d: kernels can only be"
            f" shown for a Conv2d layer{hint}"
        )
    return name, module


def _check_positive(value: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _upscale(arr: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an ``[h, w, ...]`` array by an integer factor."""
    import numpy as np

    if factor == 1:
        return arr
    return np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)


def _tile(
    cells: Sequence[np.ndarray],
    *,
    ncols: int | None = None,
    pad: int = 2,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """Lay equally sized ``[h, w, 3]`` uint8 cells out row by row on a dark background."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    if not cells:
        raise InputError("nothing to draw: no cells")
    h, w = cells[0].shape[:2]
    ncols = ncols or math.ceil(math.sqrt(len(cells)))
    nrows = math.ceil(len(cells) / ncols)
    canvas = np.empty((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), dtype=np.uint8)
    canvas[:] = _BACKGROUND
    for k, cell in enumerate(cells):
        r, c = divmod(k, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y : y + h, x : x + w] = cell
    image = Image.fromarray(canvas)
    if labels:
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=max(9, min(h, w) // 8))
        for k, label in enumerate(labels[: len(cells)]):
            r, c = divmod(k, ncols)
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            outline = {"stroke_width": 1, "stroke_fill": "black"}
            draw.text((x + 3, y + 2), str(label), fill="white", font=font, **outline)
    return image


def _symmetric(t: torch.Tensor, scale: Literal["kernel", "layer"]) -> torch.Tensor:
    """Map ``[N, ...]`` values to [0, 1] with 0 at 0.5, by the largest |value| of each item
    (``scale="kernel"``) or of all items together (``scale="layer"``)."""
    flat = t.abs().flatten(1).amax(dim=1)
    if scale == "layer":
        flat = flat.amax().expand_as(flat)
    elif scale != "kernel":
        raise InputError(f"scale must be 'kernel' or 'layer', got {scale!r}")
    denom = flat.clamp_min(torch.finfo(t.dtype).tiny).view(-1, *([1] * (t.dim() - 1)))
    return (0.5 + 0.5 * t / denom).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- kernels


def kernel_grid(
    model: nn.Module,
    layer: LayerRef,
    *,
    max_filters: int = 64,
    cell_size: int = 48,
    scale: Literal["kernel", "layer"] = "kernel",
    colormap: str = "RdBu_r",
    pad: int = 2,
) -> Image.Image:
    """A grid of the kernels of a Conv2d layer, one cell per output filter, row-major.

    * A kernel with 3 input channels (a first layer on RGB images) is shown as an RGB
      picture of its weights: 0 is mid-grey, the largest |weight| is 0 or 255.
    * Any other kernel is averaged over its input channels and shown in the diverging
      ``colormap`` (red positive, blue negative, white 0 with the default).

    ``scale="kernel"`` divides each kernel by its own largest |weight| (the pattern of
    each is visible); ``scale="layer"`` by the largest of the layer's shown kernels (their
    strengths can be compared). Each kernel pixel becomes an ``s x s`` block with
    ``s = max(1, cell_size // max(kh, kw))`` (nearest neighbour), so a 3x3 kernel is 48
    pixels wide by default. Only the first ``max_filters`` filters are shown.
    """
    import numpy as np

    from xcam.viz import colorize

    _check_positive(max_filters, "max_filters")
    _check_positive(cell_size, "cell_size")
    _name, conv = conv_layer(model, layer)
    w = conv.weight.detach().float().cpu()[:max_filters]  # [N, Cin/groups, kh, kw]
    factor = max(1, cell_size // max(w.shape[2], w.shape[3]))
    if w.shape[1] == 3:
        rgb = _symmetric(w, scale).permute(0, 2, 3, 1).numpy()  # [N, kh, kw, 3]
        pictures = [(k * 255.0 + 0.5).astype(np.uint8) for k in rgb]
    else:
        mean = _symmetric(w.mean(dim=1), scale).numpy()  # [N, kh, kw]
        pictures = [colorize(k, colormap) for k in mean]
    return _tile([_upscale(p, factor) for p in pictures], pad=pad)


# --------------------------------------------------------------------------- feature maps


def feature_maps(
    model: nn.Module, layer: LayerRef, x: torch.Tensor, *, max_channels: int = 64
) -> torch.Tensor:
    """The output of ``layer`` for the batch ``x``: ``[B, C', h, w]``, its first
    ``min(C, max_channels)`` channels, computed in eval mode without gradients."""
    _check_positive(max_channels, "max_channels")
    name, module = resolve_layer(model, layer)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"x must be a [B, C, H, W] tensor, got {shape}")
    with preserved_state(model), torch.no_grad(), Capture([(name, module)]) as capture:
        model(x)
        (act,) = capture.ordered()
    if act.dim() != 4:
        raise InputError(
            f"layer {name!r} outputs a tensor of shape {tuple(act.shape)}, not [B, C, H, W]"
        )
    return act[:, :max_channels].detach().clone()


def feature_map_grid(
    model: nn.Module,
    layer: LayerRef,
    x: torch.Tensor,
    *,
    max_channels: int = 64,
    image: Image.Image | None = None,
    colormap: str = "viridis",
    cell_size: int = 64,
    pad: int = 2,
) -> Image.Image:
    """A grid of one image's feature maps at ``layer``, one cell per channel, labelled.

    ``x`` is one model input, ``[1, 3, H, W]`` or ``[3, H, W]``. Each channel is scaled
    to [0, 1] by its own min and max (a constant channel, e.g. a dead ReLU, is drawn as
    0) and upscaled by nearest neighbour to about ``cell_size`` pixels. With ``image``
    (a PIL image), the picture starts with it, resized to the cells' size.
    """
    import numpy as np

    from xcam.viz import colorize

    _check_positive(cell_size, "cell_size")
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        x = x.unsqueeze(0)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(
            f"feature_map_grid takes one image, [1, 3, H, W] or [3, H, W]; got {shape}"
        )
    maps = feature_maps(model, layer, x, max_channels=max_channels)[0].float().cpu()
    norm = normalize(maps)[0]
    norm[maps.isnan().flatten(1).any(dim=1)] = 0.0  # a channel with NaN: drawn as 0 too
    h, w = maps.shape[1:]
    factor = max(1, cell_size // max(h, w))
    cells = [_upscale(colorize(m.numpy(), colormap), factor) for m in norm]
    labels = [str(c) for c in range(len(cells))]
    if image is not None:
        from PIL import Image as PILImage

        size = (cells[0].shape[1], cells[0].shape[0])
        cells.insert(0, np.asarray(image.convert("RGB").resize(size, PILImage.Resampling.BILINEAR)))
        labels.insert(0, "input")
    return _tile(cells, pad=pad, labels=labels)


# --------------------------------------------------------------------------- maximisation


def _total_variation(img: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, per batch row: ``[B]``."""
    dy = (img[:, :, 1:, :] - img[:, :, :-1, :]).abs().mean(dim=(1, 2, 3))
    dx = (img[:, :, :, 1:] - img[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))
    return dy + dx


def activation_maximisation(
    model: nn.Module,
    layer: LayerRef,
    channels: Sequence[int],
    *,
    steps: int = 100,
    lr: float = 0.05,
    size: tuple[int, int] = (128, 128),
    jitter: int = 4,
    l2: float = 1e-2,
    tv: float = 5e-2,
    noise: float = 0.05,
    seed: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Images that excite each of ``channels`` of ``layer``: ``[len(channels), 3, H, W]``
    in image space, values in [0, 1].

    All channels are optimised together, one batch row each: starting from mid-grey plus
    Gaussian noise of std ``noise`` (seeded by ``seed``), Adam (``lr``, in normalised input
    units) maximises the mean activation of the row's channel minus ``l2`` x the mean
    squared distance from grey and ``tv`` x the total variation. Each step first rolls the
    input by up to ``jitter`` pixels, so the result is robust to small shifts rather than
    pixel noise. The image is kept in [0, 1]; ``mean``/``std`` are the model's input
    normalisation (ImageNet's by default). Gradients are taken by ``torch.autograd.grad``
    with respect to the input only: the model's parameters get no ``.grad``.
    ``steps=0`` returns the starting images.
    """
    name, module = resolve_layer(model, layer)
    chans = list(channels)
    _check_maximisation(chans, steps=steps, jitter=jitter, lr=lr, size=size, mean=mean, std=std)
    h, w = size
    device = _model_device(model)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    start = (0.5 + noise * torch.randn(len(chans), 3, h, w, generator=gen)).clamp(0.0, 1.0)
    x = ((start.to(device) - m) / s).requires_grad_(True)
    index = torch.tensor(chans, device=device)
    with preserved_state(model):
        _check_channels(model, (name, module), x, chans)
        _ascend(model, (name, module), x, index, gen, (m, s), steps, lr, jitter, l2, tv)
    return (x.detach() * s + m).clamp(0.0, 1.0)


def _check_maximisation(
    chans: list[int],
    steps: int,
    jitter: int,
    lr: float,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> None:
    """The arguments of :func:`activation_maximisation` that need no model, checked."""
    if not chans:
        raise InputError("channels is empty: give at least one channel index")
    for c in chans:
        if isinstance(c, bool) or not isinstance(c, int):
            raise InputError(f"channel indices are integers, got {c!r}")
    if not isinstance(steps, int) or steps < 0:
        raise InputError(f"steps must be an integer >= 0, got {steps!r}")
    if not isinstance(jitter, int) or jitter < 0:
        raise InputError(f"jitter must be an integer >= 0, got {jitter!r}")
    if lr <= 0:
        raise InputError(f"lr must be positive, got {lr}")
    h, w = size
    _check_positive(h, "size[0]")
    _check_positive(w, "size[1]")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise InputError(f"mean and std need 3 values each (std > 0), got {mean!r}, {std!r}")


def _check_channels(
    model: nn.Module, target: tuple[str, nn.Module], x: torch.Tensor, chans: list[int]
) -> None:
    """One image through ``model`` (no gradients): ``target`` must output ``[B, C, H, W]``
    and every one of ``chans`` be one of its ``C`` channels."""
    name = target[0]
    with torch.no_grad(), Capture([target]) as capture:
        model(x[:1].detach())
        (probe,) = capture.ordered()
    if probe.dim() != 4:
        raise InputError(
            f"layer {name!r} outputs a tensor of shape {tuple(probe.shape)}, not [B, C, H, W]"
        )
    n_channels = probe.shape[1]
    bad = [c for c in chans if not 0 <= c < n_channels]
    if bad:
        raise InputError(
            f"channel(s) {', '.join(map(str, bad))} out of range: layer {name!r} has"
            f" {n_channels} channels (0..{n_channels - 1})"
        )


def _ascend(
    model: nn.Module,
    target: tuple[str, nn.Module],
    x: torch.Tensor,
    index: torch.Tensor,
    gen: torch.Generator,
    norm: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    lr: float,
    jitter: int,
    l2: float,
    tv: float,
) -> None:
    """``steps`` Adam steps on the normalised input ``x``, in place (kept in [0, 1] in image
    space), row ``i`` maximising channel ``index[i]`` as :func:`activation_maximisation`
    says; ``norm``: the ``(mean, std)`` of the input normalisation, ``[1, 3, 1, 1]`` each."""
    m, s = norm
    lo, hi = (0.0 - m) / s, (1.0 - m) / s
    rows = torch.arange(len(index), device=x.device)
    optimiser = torch.optim.Adam([x], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
            with Capture([target]) as capture:
                model(torch.roll(x, shifts=(dy, dx), dims=(2, 3)))
                (act,) = capture.ordered()
            score = act[rows, index].mean(dim=(1, 2))  # [N]
            img = x * s + m
            penalty = l2 * ((img - 0.5) ** 2).mean(dim=(1, 2, 3)) + tv * _total_variation(img)
            (grad,) = torch.autograd.grad((penalty - score).sum(), [x])
            x.grad = grad
            optimiser.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))


def maximisation_grid(
    images: torch.Tensor,
    channels: Sequence[int] | None = None,
    *,
    cell_size: int = 128,
    pad: int = 2,
) -> Image.Image:
    """A labelled grid of ``[N, 3, H, W]`` images in [0, 1] (e.g. from
    :func:`activation_maximisation`), each upscaled by nearest neighbour to about
    ``cell_size`` pixels; ``channels`` label the cells."""
    import numpy as np

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images must be [N, 3, H, W], got {shape}")
    _check_positive(cell_size, "cell_size")
    arr = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    factor = max(1, cell_size // max(arr.shape[1], arr.shape[2]))
    cells = [_upscale((a * 255.0 + 0.5).astype(np.uint8), factor) for a in arr]
    labels = [f"ch {c}" for c in channels] if channels is not None else None
    return _tile(cells, pad=pad, labels=labels)
