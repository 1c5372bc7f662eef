"""The eager "tail": the part of a model after a target layer, as a module ``A -> output``.

With activations from an exported backend, gradient methods differentiate only the tail,
so nothing before the layer runs in eager. The tail is cut from a ``torch.fx`` trace of
the model in which the target layer is a leaf: every node the output needs that lies after
the layer is kept, and the layer's node becomes the tail's input.

Where that cut is impossible — the model isn't fx-traceable, or the output also needs
values from before the layer (a skip connection around it, or the input itself) — the
fallback is :class:`InjectedTail`: the whole eager model runs, with the layer's output
replaced by the given activation. It is just as correct (gradients are taken at the
backend's activations) but runs the layers before the target as well.
"""

from __future__ import annotations

import math

import torch
from torch import fx, nn

from xcam.core.capture import replaced_output
from xcam.core.tracing import FX_GATE, TRACE_LOCK


class _LeafTracer(fx.Tracer):
    def __init__(self, leaf: str):
        super().__init__(autowrap_modules=(math,))
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname == self.leaf or super().is_leaf_module(m, qualname)


def split_tail(model: nn.Module, layer: str) -> tuple[nn.Module | None, str]:
    """``(tail, "")`` with ``tail(A) == model(x)``'s output, or ``(None, reason)``."""
    try:
        with FX_GATE.exclusive(), TRACE_LOCK:  # no forward anywhere while fx patches calls
            graph = _LeafTracer(layer).trace(model)
    except Exception as e:
        return None, f"torch.fx can't trace {type(model).__name__} ({type(e).__name__}: {e})"
    cut = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(cut) != 1:
        return None, f"layer {layer!r} is called {len(cut)} times in the traced graph"
    cut_node = cut[0]
    output = next(n for n in graph.nodes if n.op == "output")
    needed: set[fx.Node] = set()
    stack = [output]
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        if node is cut_node:
            continue
        if node.op == "placeholder":
            return None, f"the output needs more than {layer!r} (a path around it from the input)"
        stack.extend(node.all_input_nodes)
    if cut_node not in needed:
        return None, f"the output does not depend on {layer!r}"
    tail = fx.Graph()
    env: dict[fx.Node, fx.Node] = {cut_node: tail.placeholder("activation")}
    for node in graph.nodes:  # topological order
        if node in needed and node is not cut_node:
            env[node] = tail.node_copy(node, lambda n: env[n])
    module = fx.GraphModule(model, tail, class_name=f"Tail_{layer.replace('.', '_')}")
    return module, ""


class InjectedTail(nn.Module):
    """Fallback tail: the full model run on ``example`` (the model input, given with each
    call: one tail is shared by every thread), with ``layer``'s output replaced by the
    given tensor."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        self.model = model
        self.layer = layer

    def forward(self, activation: torch.Tensor, example: torch.Tensor) -> object:
        # the layers before ``layer`` run (their output is replaced) but are not recorded:
        # autograd resumes, in the caller's mode, at the replaced output
        mode = torch.is_grad_enabled()
        with (
            torch.no_grad(),
            replaced_output(self.model.get_submodule(self.layer), activation, mode),
        ):
            return self.model(example)


class SplitTail(nn.Module):
    """A tail cut from the graph: ``example`` is accepted, for one calling convention with
    :class:`InjectedTail`, and not needed."""

    def __init__(self, graph_module: nn.Module):
        super().__init__()
        self.graph_module = graph_module

    def forward(self, activation: torch.Tensor, example: torch.Tensor | None = None) -> object:
        return self.graph_module(activation)
