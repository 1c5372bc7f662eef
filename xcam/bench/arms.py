"""What is timed: for one model on one device and one backend, the floor (plain inference),
xcam's arms (eager, through the backend, in-graph, :mod:`xcam.lite`) and the peers'."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from xcam.bench.config import PEERS, BenchConfig
from xcam.bench.floors import Floor
from xcam.bench.peers import peer_arm


@dataclass
class Target:
    """One model on one device, as every backend is timed on it."""

    short: str  # the model's name in the rows
    model: nn.Module
    layer: str
    shape: tuple[int, ...]  # one input: channels, height, width
    dtype: torch.dtype
    device: str
    example: torch.Tensor  # a batch of 2 the exports are traced with

    @property
    def sync(self) -> Callable[[], None] | None:
        """What a timed call waits for: the CUDA device's queue (None on the CPU)."""
        return torch.cuda.synchronize if self.device == "cuda" else None


@dataclass
class Setup:
    """One backend of a target, ready to time: its floor, its loaded export, xcam's methods."""

    backend: str
    floor: Floor
    loaded: Any | None  # the exported file, loaded (None on eager)
    methods: dict[str, Callable]  # ``(x, classes) -> result``


class Arm(NamedTuple):
    method: str  # as in Row.method
    library: str  # as in Row.library
    call: Callable[[], object]


def ingraph_methods() -> list[str]:
    """The methods whose gradients an exported-with-gradients file provides (the rest need
    the eager model), as the method classes declare."""
    from xcam.methods import get_method, list_methods

    return [m for m in list_methods() if get_method(m).in_graph]


def method_arms(
    cfg: BenchConfig, model: nn.Module, layer: str, backend: str, loaded: Any
) -> dict[str, Callable]:
    """xcam's arms for one backend: ``(x, classes) -> result``, per method that runs there."""
    from xcam.methods import get_method

    in_graph = ingraph_methods()
    arms: dict[str, Callable] = {}
    for m in cfg.methods:
        cls = get_method(m)
        if backend == "ingraph":
            if m not in in_graph:
                continue
            method = cls(loaded, layer)
        elif backend == "eager":
            method = cls(model, layer) if cls.uses_layers else cls(model)
        else:
            if not cls.uses_layers or cls.eager_only:
                continue  # what a backend can't serve
            method = cls(model, layer, backend=loaded)
        arms[m] = method
    return arms


def skipped_notes(cfg: BenchConfig, short: str, setup: Setup) -> list[str]:
    """A note naming the methods that don't run on this backend, if any."""
    skipped = [m for m in cfg.methods if m not in setup.methods]
    if not skipped:
        return []
    why = (
        "(not in an exported-with-gradients file)"
        if setup.backend == "ingraph"
        else "(eager PyTorch only)"
    )
    return [f"{short} {setup.backend}: {', '.join(skipped)} not run {why}"]


def lite_arms(cfg: BenchConfig, loaded: Any, x: torch.Tensor) -> dict[str, Arm]:
    """The torch-free path for a file with gradients: :class:`xcam.lite.OnnxExplainer`."""
    from xcam.lite import METHODS, OnnxExplainer

    explainer = OnnxExplainer(
        loaded.path, providers=["CPUExecutionProvider"], threads=cfg.threads, spin=False
    )  # the same session settings as the floor
    xn = x.numpy()
    return {
        f"lite:{m}": Arm(m, "xcam.lite", lambda m=m: explainer(xn, method=m))
        for m in cfg.methods
        if m in METHODS
    }


def peer_arms(
    cfg: BenchConfig, target: Target, x: torch.Tensor, classes: torch.Tensor, notes: list[str]
) -> dict[str, Arm]:
    """Every peer's arm for every method it has; a peer that is not installed (or can't
    read the layer's tokens) gets one note."""
    from xcam.core.layers import candidate_layers
    from xcam.core.tokens import Layout, may_have_tokens

    layout = None
    if may_have_tokens(target.model):
        infos = {i.name: i for i in candidate_layers(target.model, x[:1])}
        info = infos.get(target.layer)
        if info is not None and not info.is_map:
            layout = Layout(info.layout, prefix=info.prefix)
    arms: dict[str, Arm] = {}
    for lib in PEERS:
        for m in cfg.methods:
            fn = peer_arm(lib, m, target.model, target.layer, layout)
            if isinstance(fn, str):
                if fn not in notes:
                    notes.append(fn)
            elif fn is not None:
                arms[f"{lib}:{m}"] = Arm(m, lib, lambda f=fn: f(x, classes))
    return arms


def floor_library(backend: str) -> str:
    """What plain inference runs on: ONNX Runtime for the ONNX backends, else torch."""
    return "onnxruntime" if backend in ("onnxruntime", "ingraph") else "torch"


def batch_arms(
    cfg: BenchConfig,
    target: Target,
    setup: Setup,
    x: torch.Tensor,
    classes: torch.Tensor,
    notes: list[str],
) -> dict[str, Arm]:
    """Every arm for one batch ``x``, the floor ``inference`` first; ``notes`` gets any
    peer that is not installed."""
    backend, loaded = setup.backend, setup.loaded
    arms = {"inference": Arm("inference", floor_library(backend), lambda f=setup.floor: f(x))}
    if backend == "onnxruntime" and loaded is not None:
        arms["activations"] = Arm("activations", "xcam", lambda b=loaded: b.run(x))
    for m, method in setup.methods.items():
        arms[f"xcam:{m}"] = Arm(m, "xcam", lambda f=method: f(x, classes))
    if backend == "ingraph" and target.device == "cpu":
        arms.update(lite_arms(cfg, loaded, x))
    if cfg.peers and backend == "eager":
        arms.update(peer_arms(cfg, target, x, classes, notes))
    return arms
