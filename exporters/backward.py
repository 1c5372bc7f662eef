"""Backward ops rewritten as forward ops, so that a traced gradient can be exported.

``make_fx`` traces :class:`exporters.gradients.GradModel` — autograd included — into an
aten graph; the backward ops in it that exporters can't translate become forward ops here:

- ``convolution_backward`` (input gradient) = a transposed convolution with the same weight,
  stride, padding, dilation and groups, and the output padding that restores the input size;
  at stride 1, the equivalent ordinary convolution with the kernel flipped and its channels
  swapped, which ONNX Runtime runs much faster;
- ``avg_pool2d_backward`` = a depthwise transposed convolution with a constant 1/(kh·kw) kernel;
- ``_adaptive_avg_pool2d_backward`` = ``Ph^T · G · Pw`` with the (constant) pooling matrices;
- bilinear resizing (``F.interpolate``) with fixed sizes is traced as ``Mh · X · Mwᵀ`` with
  constant interpolation matrices (:class:`BilinearAsMatmul`), so its backward is two
  matrix products: torch decomposes it into gathers, whose backward scatter-adds, and ONNX
  Runtime's ScatterND adds duplicate indices unreliably (gradients off by percents);
- ``max_pool2d_with_indices_backward`` = a scatter-add of the gradient at the argmax indices;
- ``_scaled_dot_product_flash_attention_for_cpu_backward`` = attention's backward written out:
  with ``P = softmax(s·QKᵀ + M)`` and ``O = PV``, ``dV = PᵀdO``, ``dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙
  O))``, ``dQ = s·dS·K``, ``dK = s·dSᵀ·Q`` (Vaswani et al. 2017's attention, differentiated);
- autograd's in-place buffers (``copy_`` into an ``as_strided`` view) become a concatenation
  and contiguous ``as_strided`` views reshapes (:func:`functional_copies`);
- a weight copied once per token to multiply a strided ``[L, B, C]`` (a transformer's
  ``Linear`` on transposed tokens: ``bmm`` with the weight expanded to ``[L, C, N]``) becomes
  one matrix product of the tokens folded to ``[L·B, C]`` (:func:`unbatched_weights`): for
  ViT-B the copies were 1.4 GB per projection.

Everything else comes from torch's own core-ATen decompositions.
"""

from __future__ import annotations

import math

import torch

aten = torch.ops.aten


# -- decompositions of backward ops into forward ops ---------------------------------------


def _conv_backward(
    grad_out,
    inp,
    weight,
    bias_sizes,
    stride,
    padding,
    dilation,
    transposed,
    output_padding,
    groups,
    output_mask,
):
    if transposed:
        raise NotImplementedError("gradient through a transposed convolution")
    if not output_mask[0]:
        return (None, None, None)
    nd = len(stride)
    k = list(weight.shape[2:])
    pad = [dilation[i] * (k[i] - 1) - padding[i] for i in range(nd)]
    out_pad = [
        (inp.shape[2 + i] + 2 * padding[i] - dilation[i] * (k[i] - 1) - 1) % stride[i]
        for i in range(nd)
    ]
    if all(p >= 0 for p in pad) and (
        all(st == 1 for st in stride) or (STRIDED_AS_CONV and nd == 2)
    ):
        # the adjoint as an ordinary convolution: ONNX Runtime runs Conv much faster than
        # ConvTranspose (zeros go between the gradient's pixels first where stride > 1)
        return (_adjoint_conv(grad_out, weight, stride, pad, out_pad, dilation, groups), None, None)
    grad_in = aten.convolution(
        grad_out, weight, None, stride, padding, dilation, True, out_pad, groups
    )
    return (grad_in, None, None)


# strided convolutions: zeros inserted between the gradient's pixels, then an ordinary
# convolution (True), or a transposed convolution (False)
STRIDED_AS_CONV = True


def _swap_flip(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The kernel of the adjoint convolution: in/out channels swapped per group, flipped."""
    cout, cin_g, *k = weight.shape
    w = weight.reshape(groups, cout // groups, cin_g, *k).transpose(1, 2)
    return w.reshape(groups * cin_g, cout // groups, *k).flip(list(range(2, 2 + len(k))))


def _adjoint_conv(grad_out, weight, stride, pad, out_pad, dilation, groups):
    """``conv_transpose(grad_out, weight)`` as zero insertion + padding + a stride-1 conv."""
    nd = len(stride)
    if all(s == 1 for s in stride):
        pads = []
        for i in reversed(range(nd)):
            pads += [pad[i], pad[i] + out_pad[i]]
        g = aten.constant_pad_nd(grad_out, pads) if any(out_pad) else grad_out
        return aten.convolution(
            g,
            _swap_flip(weight, groups),
            None,
            [1] * nd,
            [0] * nd if any(out_pad) else pad,
            dilation,
            False,
            [0] * nd,
            groups,
        )
    b, c, h, w = grad_out.shape
    sh, sw = stride
    pointwise = list(weight.shape[2:]) == [1, 1]
    if pointwise:  # a 1x1 kernel commutes with zero insertion: convolve the small map first
        grad_out = aten.convolution(
            grad_out,
            _swap_flip(weight, groups),
            None,
            [1, 1],
            [0, 0],
            [1, 1],
            False,
            [0, 0],
            groups,
        )
        c = grad_out.shape[1]
    g = aten.constant_pad_nd(grad_out.reshape(b, c, h, 1, w, 1), [0, sw - 1, 0, 0, 0, sh - 1])
    g = g.reshape(b, c, h * sh, w * sw)[:, :, : (h - 1) * sh + 1, : (w - 1) * sw + 1]
    g = aten.constant_pad_nd(g, [pad[1], pad[1] + out_pad[1], pad[0], pad[0] + out_pad[0]])
    if pointwise:
        return g
    return aten.convolution(
        g, _swap_flip(weight, groups), None, [1, 1], [0, 0], dilation, False, [0, 0], groups
    )


def _avg_pool2d_backward(
    grad_out, inp, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
):
    kh, kw = kernel_size if len(kernel_size) == 2 else (kernel_size[0], kernel_size[0])
    stride = stride or kernel_size
    sh, sw = stride if len(stride) == 2 else (stride[0], stride[0])
    ph, pw = padding if len(padding) == 2 else (padding[0], padding[0])
    if (ph or pw) and not count_include_pad:
        raise NotImplementedError("avg_pool2d backward with count_include_pad=False and padding")
    c = inp.shape[1]
    div = divisor_override or kh * kw
    weight = torch.full((c, 1, kh, kw), 1.0 / div, dtype=grad_out.dtype, device=grad_out.device)
    out_pad = [(inp.shape[2] + 2 * ph - kh) % sh, (inp.shape[3] + 2 * pw - kw) % sw]
    if ceil_mode:  # the last window may hang over: trim what lands beyond the input
        full = aten.convolution(grad_out, weight, None, [sh, sw], [ph, pw], [1, 1], True, [0, 0], c)
        return full[:, :, : inp.shape[2], : inp.shape[3]]
    return aten.convolution(grad_out, weight, None, [sh, sw], [ph, pw], [1, 1], True, out_pad, c)


def _pool_matrix(n_in: int, n_out: int, dtype, device) -> torch.Tensor:
    """Rows: the averaging windows of adaptive pooling from n_in to n_out (a constant: built
    from Python lists, so no in-place op lands in the graph)."""
    rows = []
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(n_in)])
    return torch.tensor(rows, dtype=dtype, device=device)


def _adaptive_avg_pool2d_backward(grad_out, inp):
    h, w = int(inp.shape[2]), int(inp.shape[3])
    oh, ow = int(grad_out.shape[2]), int(grad_out.shape[3])
    ph = _pool_matrix(h, oh, grad_out.dtype, grad_out.device)  # [oh, h]
    pw = _pool_matrix(w, ow, grad_out.dtype, grad_out.device)  # [ow, w]
    return torch.matmul(torch.matmul(ph.t(), grad_out), pw)


def _max_pool2d_backward(grad_out, inp, kernel_size, stride, padding, dilation, ceil_mode, indices):
    b, c = grad_out.shape[0], grad_out.shape[1]
    flat = torch.zeros(
        b, c, inp.shape[2] * inp.shape[3], dtype=grad_out.dtype, device=grad_out.device
    )
    flat = flat.scatter_add(2, indices.reshape(b, c, -1), grad_out.reshape(b, c, -1))
    return flat.reshape(inp.shape)


def _attention_backward(
    grad_out,
    query,
    key,
    value,
    out,
    logsumexp,
    dropout_p,
    is_causal,
    *,
    attn_mask=None,
    scale=None,
):
    if dropout_p:
        raise NotImplementedError("gradient through attention with dropout (a model in training)")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    s = torch.matmul(query, key.transpose(-2, -1)) * scale
    if is_causal:
        keep = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=s.device)
        s = s.masked_fill(~keep.tril(), float("-inf"))
    if attn_mask is not None:
        s = s + attn_mask  # a boolean mask reaches this op as an additive one
    p = torch.softmax(s, dim=-1)
    grad_v = torch.matmul(p.transpose(-2, -1), grad_out)
    grad_p = torch.matmul(grad_out, value.transpose(-2, -1))
    grad_s = p * (grad_p - (grad_out * out).sum(-1, keepdim=True)) * scale
    return torch.matmul(grad_s, key), torch.matmul(grad_s.transpose(-2, -1), query), grad_v


def bilinear_matrix(
    n_in: int, n_out: int, dtype, device, align_corners: bool = False, scale: float | None = None
) -> torch.Tensor:
    """``[n_out, n_in]``: bilinear resampling along one axis, exactly as ``F.interpolate``
    (half-pixel centres clamped at the border; or corners aligned; ``scale``: the
    ``scale_factor`` given, which sets the step instead of ``n_in / n_out``)."""
    if align_corners:
        step = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
        step = 1.0 / scale if scale else n_in / n_out
    rows = []
    for o in range(n_out):
        src = o * step if align_corners else max((o + 0.5) * step - 0.5, 0.0)
        i0 = min(int(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        row = [0.0] * n_in
        row[i0] += 1.0 - lam
        row[i1] += lam
        rows.append(row)
    return torch.tensor(rows, dtype=dtype, device=device)


def _resize(
    x,
    size=None,
    scale_factor=None,
    mode="nearest",
    align_corners=None,
    recompute_scale_factor=None,
    antialias=False,
):
    """``F.interpolate`` as two matrix products, or None where it is not bilinear resizing of
    ``[B, C, h, w]`` with fixed sizes."""
    if mode != "bilinear" or antialias or x.dim() != 4:
        return None
    h, w = x.shape[2:]
    pair = lambda v: tuple(v) if isinstance(v, list | tuple) else (v, v)  # noqa: E731
    scales = (None, None)
    if size is not None:
        oh, ow = pair(size)
    elif scale_factor is not None and isinstance(h, int) and isinstance(w, int):
        sh, sw = pair(scale_factor)
        oh, ow = int(h * sh), int(w * sw)
        scales = (None, None) if recompute_scale_factor else (sh, sw)
    else:
        return None
    if not all(isinstance(v, int) for v in (h, w, oh, ow)):
        return None
    corners = bool(align_corners)
    mh = bilinear_matrix(h, oh, x.dtype, x.device, corners, scales[0])
    mw = bilinear_matrix(w, ow, x.dtype, x.device, corners, scales[1])
    return torch.matmul(torch.matmul(mh, x), mw.t())


class BilinearAsMatmul(torch.overrides.TorchFunctionMode):
    """While active, bilinear ``F.interpolate`` with fixed sizes runs as matrix products with
    the same weights (equal up to rounding), so that autograd's backward of it is matrix
    products too."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.interpolate:
            out = _resize(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def decompositions() -> dict:
    from torch._decomp import core_aten_decompositions

    # only backward ops are decomposed: forward ops stay whole (batch_norm, hardswish, …) so
    # that exporters and ONNX Runtime fuse them exactly as in a plain inference export
    table = {op: fn for op, fn in core_aten_decompositions().items() if "backward" in str(op)}
    table[aten.convolution_backward.default] = _conv_backward
    table[aten.avg_pool2d_backward.default] = _avg_pool2d_backward
    table[aten._adaptive_avg_pool2d_backward.default] = _adaptive_avg_pool2d_backward
    table[aten.max_pool2d_with_indices_backward.default] = _max_pool2d_backward
    table[aten._scaled_dot_product_flash_attention_for_cpu_backward.default] = _attention_backward
    return table


# -- a weight multiplied once, not once per token --------------------------------------


def _weight_of(node: torch.fx.Node) -> tuple[torch.fx.Node, bool] | None:
    """``(W, transposed)`` where ``node`` is a batch of copies of the 2-D ``W``
    (``view(expand(W))``) or of ``Wᵀ`` (its last two dims transposed: a backward's)."""
    if node.op != "call_function":
        return None
    if node.target is aten.transpose.int and sorted(node.args[1:3]) in ([1, 2], [-2, -1]):
        inner = _weight_of(node.args[0])
        return None if inner is None else (inner[0], not inner[1])
    if node.target not in (aten.view.default, aten.reshape.default):
        return None
    expand = node.args[0]
    if not (
        isinstance(expand, torch.fx.Node)
        and expand.op == "call_function"
        and expand.target is aten.expand.default
    ):
        return None
    src = expand.args[0]
    val = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
    return (src, False) if val is not None and val.dim() == 2 else None


def unbatched_weights(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``bmm(A, view(expand(W)))``, ``A [L, B, C]``, ``W [C, N]``, as
    ``reshape(mm(reshape(A, [-1, C]), W), [L, -1, N])``: the same product, W not copied L
    times (torch's matmul takes the batched path for a strided ``A`` that requires grad)."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.bmm.default:
            continue
        a, b = node.args[:2]
        found = _weight_of(b)
        out = node.meta.get("val")
        if found is None or out is None or not isinstance(out.shape[0], int):
            continue
        weight, transposed = found
        c, n = weight.meta["val"].shape
        if transposed:
            c, n = n, c
        with graph.inserting_before(node):
            if transposed:
                weight = graph.call_function(aten.t.default, (weight,))
            flat = graph.call_function(aten.reshape.default, (a, [-1, c]))
            prod = graph.call_function(aten.mm.default, (flat, weight))
            new = graph.call_function(aten.reshape.default, (prod, [out.shape[0], -1, n]))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    return gm


# -- autograd's buffers as plain tensor ops --------------------------------------------


def _contiguous(size, stride) -> bool:
    """Whether (size, stride) lays a tensor out densely in row-major order (size-1 dims and
    a symbolic leading dim allowed)."""
    acc = 1
    for n, st in zip(reversed(list(size)), reversed(list(stride)), strict=True):
        if isinstance(n, int) and n == 1:
            continue
        if st != acc:
            return False
        if not isinstance(n, int):
            return n is size[0]  # only the leading dim may be symbolic
        acc *= n
    return True


def functional_copies(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Rewrite what autograd's buffers leave in the trace — ``as_strided_`` re-strides and
    ``copy_`` into an ``as_strided`` view of a fresh 1-D buffer — as plain reshapes, slices
    and concatenations, so that no exporter has to functionalise ops it can't translate."""
    graph = gm.graph
    order = {n: i for i, n in enumerate(graph.nodes)}

    def rewire(old: torch.fx.Node, new: torch.fx.Node, after: torch.fx.Node) -> None:
        for user in list(old.users):
            if user is not new and order.get(user, len(order)) > order[after]:
                user.replace_input_with(old, new)

    def call(target, *args) -> torch.fx.Node:
        return graph.call_function(target, args)

    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in (aten.as_strided_.default, aten.as_strided.default):
            src, size, stride = node.args[:3]
            offset = node.args[3] if len(node.args) > 3 else 0
            if offset or not _contiguous(size, stride):
                continue  # left to the exporter
            with graph.inserting_after(node):
                new = call(aten.reshape.default, src, list(size))
            order[new] = order[node]
            if node.target is aten.as_strided_.default:
                rewire(src, new, node)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
        elif node.target is aten.copy_.default:
            dst, src = node.args[:2]
            # only autograd's pattern: a copy into a reshaped view of a fresh 1-D buffer
            if not (dst.op == "call_function" and dst.target is aten.reshape.default):
                continue
            base = dst.args[0]
            if not (
                base.op == "call_function"
                and base.target is aten.full.default
                and len(base.meta["val"].shape) == 1
            ):
                continue
            with graph.inserting_after(node):
                flat = call(aten.reshape.default, src, [-1])
                with graph.inserting_after(flat):
                    n = call(aten.sym_numel.default, src)
                    with graph.inserting_after(n):
                        rest = call(aten.slice.Tensor, base, 0, n, 2**62)
                        with graph.inserting_after(rest):
                            new = call(aten.cat.default, [flat, rest])
            for added in (flat, n, rest, new):
                order[added] = order[node]
            rewire(base, new, node)
            node.replace_all_uses_with(dst)
            graph.erase_node(node)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    return gm
