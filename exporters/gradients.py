"""Gradients inside the exported graph.

The exported function is :class:`GradModel`: the model's forward, the target score, and
``autograd.grad`` of that score with respect to each target activation, then the Grad-CAM
map itself. :func:`trace` records it — autograd included — as an aten graph with ``make_fx``,
the backward ops that exporters can't translate rewritten as forward ops
(:mod:`exporters.backward`).

For a layer followed by global average pooling and one linear layer, the gradient has a
closed form, ``dS/dA = W_target / (h·w)``, which is exact and costs nothing: it is used
whenever it applies (checked numerically at export time).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from exporters.backward import (
    BilinearAsMatmul,
    bilinear_matrix,
    decompositions,
    functional_copies,
    unbatched_weights,
)
from xcam.core.ops import normalize
from xcam.core.targets import covering_classes, is_class_maps


def _upsample(cam: torch.Tensor, size: Sequence[int], static: bool = True) -> torch.Tensor:
    """``[B, h, w] -> [B, H, W]`` bilinear, in the graph.

    Not :func:`xcam.core.ops.upsample`: with static spatial sizes, two small matmuls with
    constant matrices (a traced ``interpolate`` becomes slow gathers in ONNX); with dynamic
    ones, ``interpolate`` in the model's own dtype, always (``ops.upsample`` computes in
    float32 and skips equal sizes: a branch on shapes a symbolic trace would specialise).
    """
    if static:
        h, w, oh, ow = (int(v) for v in (cam.shape[-2], cam.shape[-1], *size))
        mh = bilinear_matrix(h, oh, cam.dtype, cam.device)
        mw = bilinear_matrix(w, ow, cam.dtype, cam.device)
        return torch.matmul(torch.matmul(mh, cam), mw.t())
    up = F.interpolate(cam[:, None], size=list(size), mode="bilinear", align_corners=False)
    return up[:, 0]


def gradcam_map(
    acts: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    size: Sequence[int],
    static: bool = True,
) -> torch.Tensor:
    """Grad-CAM from activations and gradients, in graph-friendly ops: ``[B, H, W]`` in
    [0, 1], layers fused like :class:`xcam.methods.base.BaseCAM` (a constant map is zeros).

    The channel sum is written out rather than :func:`xcam.core.ops.combine`, whose check
    for non-finite maps is a branch on tensor values that no trace can record.
    """
    ups = []
    for a, g in zip(acts, grads, strict=True):
        cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1))
        ups.append(normalize(_upsample(cam, size, static))[0])
    return ups[0] if len(ups) == 1 else normalize(torch.stack(ups).mean(dim=0))[0]


class GradModel(nn.Module):
    """``forward(x[, target]) -> (logits, *A, *dS/dA, gradcam)`` by eager autograd.

    ``target``: class per sample, ``-1`` for the top-1 class. ``closed_form[i]``: the
    Linear whose weights give layer i's gradient in closed form, or None for autograd.
    ``static_spatial``: H and W are fixed (the map is upsampled by constant matrices).
    ``activation``: the model's final activation, if any (a single sigmoid output decides at
    0.5); ``pre_activation``: the logits and the score are those before it.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        output=None,
        closed_form: Sequence[nn.Linear | None] | None = None,
        static_spatial: bool = True,
        *,
        pre_activation: bool = False,
        activation: str | None = None,
        token_layouts: dict[str, list] | None = None,
    ):
        super().__init__()
        from xcam.core.cammodel import CamModel
        from xcam.core.decision import decision_threshold
        from xcam.core.tokens import Layout

        self.static_spatial = static_spatial
        self.model = model
        self.cam_model = CamModel(
            model, list(layers), grad_handles=True, output=output, pre_activation=pre_activation
        )
        self.threshold = decision_threshold(None if pre_activation else activation)
        self.layers = list(layers)
        self.closed = list(closed_form or [None] * len(layers))
        # layers of tokens: their activations and gradients leave the graph as the layer
        # gives them (the file's token_layouts say how), and become maps for the Grad-CAM
        found = token_layouts or {}
        self.layouts = [Layout(*found[n]) if n in found else Layout() for n in self.layers]

    def _class_score(self, flat: torch.Tensor, target: torch.Tensor | None):
        """``(class, summed score, sign)`` of ``[B, K]`` logits: the class asked for, or the
        top-1 (a single logit: the decision, with the sign that explains it)."""
        if flat.shape[1] == 1:  # a single logit: explain the decision (or the one asked)
            top = (flat[:, 0] >= self.threshold).long()
            idx = top if target is None else torch.where(target >= 0, target.long(), top)
            sign = idx.to(flat.dtype) * 2 - 1
            return idx, (flat[:, 0] * sign).sum(), sign
        top = flat.argmax(dim=1)
        idx = top if target is None else torch.where(target >= 0, target.long(), top)
        return idx, flat.gather(1, idx[:, None]).sum(), None

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None):
        from xcam.core.targets import flatten_logits

        # detached weights: the graph holds no parameter gradients, only dS/dA
        params = {f"model.{k}": v.detach() for k, v in self.model.named_parameters()}
        with torch.enable_grad(), BilinearAsMatmul():
            logits, *acts = torch.func.functional_call(self.cam_model, params, (x,))
            if is_class_maps(logits):  # class maps, kept as they are: a region's score
                flat = logits
                idx, score = region_score(logits, target)
            else:
                flat = flatten_logits(logits)
                idx, score, sign = self._class_score(flat, target)
            need = [i for i, fc in enumerate(self.closed) if fc is None]
            auto = torch.autograd.grad(score, [acts[i] for i in need]) if need else ()
        grads: list[torch.Tensor] = []
        it = iter(auto)
        for a, fc in zip(acts, self.closed, strict=True):
            if fc is None:
                grads.append(next(it))
            else:
                if flat.shape[1] == 1:
                    w = fc.weight.detach()[0][None, :] * sign[:, None]
                else:
                    w = fc.weight.detach()[idx]
                w = w / (a.shape[2] * a.shape[3])
                grads.append(w[:, :, None, None].expand_as(a))
        acts = [a.detach() for a in acts]
        grads = [g.detach() for g in grads]
        size = x.shape[-2:]
        cam = gradcam_map(
            [lay.to_map(a, size) for lay, a in zip(self.layouts, acts, strict=True)],
            [lay.to_map(g, size) for lay, g in zip(self.layouts, grads, strict=True)],
            size,
            self.static_spatial,
        )
        return (flat.detach(), *acts, *grads, cam)


def region_score(
    maps: torch.Tensor, target: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(class, score)`` of :class:`xcam.core.targets.RegionTarget` with its default region,
    in graph ops: class ``k`` per sample (``-1`` or no target: the class that covers most
    pixels), ``S = sum_b sum_ij [argmax_c Y_bcij = k_b] · Y_bkij``."""
    pred = maps.detach().argmax(dim=1)  # [B, H, W]
    top = covering_classes(maps)
    k = top if target is None else torch.where(target >= 0, target.long(), top)
    mask = (pred == k[:, None, None]).to(maps.dtype)
    chosen = maps.gather(1, k[:, None, None, None].expand(-1, 1, *maps.shape[2:]))[:, 0]
    return k, (chosen * mask).sum()


def closed_form_heads(
    model: nn.Module,
    layers: Sequence[str],
    example: torch.Tensor,
    output=None,
    pre_activation: bool = False,
) -> list[nn.Linear | None]:
    """For each layer, the Linear of a pooled-linear head right after it, if there is one."""
    from xcam.core.cammodel import CamModel
    from xcam.core.errors import HeadError
    from xcam.core.heads import pooled_linear_head
    from xcam.core.targets import flatten_logits

    with torch.no_grad():
        cam_model = CamModel(model, list(layers), output=output, pre_activation=pre_activation)
        logits, *acts = cam_model(example)
    if is_class_maps(logits):  # a region's score: no pooled-linear head gives its gradient
        return [None] * len(acts)
    flat = flatten_logits(logits)
    heads: list[nn.Linear | None] = []
    for a in acts:
        if a.dim() != 4:  # tokens: no pooled-linear head reads them directly
            heads.append(None)
            continue
        try:
            heads.append(pooled_linear_head(model, a, flat))
        except HeadError:
            heads.append(None)
    return heads


def trace(grad_model: GradModel, example: torch.Tensor, target: bool) -> torch.fx.GraphModule:
    """``grad_model`` as an aten graph with a symbolic batch (and symbolic H, W where the
    model is exported with dynamic spatial sizes), backward ops rewritten."""
    args = [example] + ([torch.full((example.shape[0],), -1)] if target else [])
    return aten_graph(grad_model, args, grad_model.static_spatial)


def aten_graph(
    module: nn.Module, args: Sequence[torch.Tensor], static_spatial: bool = True
) -> torch.fx.GraphModule:
    """``module(*args)`` traced by ``make_fx`` into an aten graph: every input's first dim (the
    batch) a symbol, H and W of the image (``args[0]``) too unless ``static_spatial``, backward
    ops rewritten as forward ops. A branch on tensor values can't be traced (an error); one
    on sizes is recorded for the sizes that are fixed, and as a guard on the batch."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import (
        DimDynamic,
        ShapeEnv,
        StatelessSymbolicContext,
    )

    # only the dims that vary are symbols: a symbolic H and W where they are fixed would
    # make every shape computation of a model a guard to solve (minutes for a Swin)
    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    fake = []
    for i, a in enumerate(args):
        dims = [DimDynamic.STATIC] * a.dim()
        dims[0] = DimDynamic.DYNAMIC
        if i == 0 and not static_spatial:
            dims[2:] = [DimDynamic.DYNAMIC] * (a.dim() - 2)
        fake.append(mode.from_tensor(a, symbolic_context=StatelessSymbolicContext(dims)))
    gm = make_fx(
        module,
        decomposition_table=decompositions(),
        tracing_mode="symbolic",
        _allow_non_fake_inputs=True,
    )(*fake)
    return unbatched_weights(functional_copies(gm))
