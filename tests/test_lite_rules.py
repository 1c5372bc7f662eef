"""``xcam.lite`` re-writes the in-graph weighting rules in numpy (it serves without torch):
each rule must give the map the shipped method class gives, on the same activations and
gradients — checked against the classes themselves, for every method that declares
``in_graph``, so a change to a method file that lite doesn't follow fails here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xcam
from xcam import lite
from xcam.core.targets import resolve_targets
from xcam.methods.context import LayerContext

IN_GRAPH = [name for name in xcam.list_methods() if xcam.get_method(name).in_graph]


def test_the_in_graph_methods_are_the_ones_the_classes_declare() -> None:
    assert set(IN_GRAPH) == {
        "gradcam",
        "gradcam++",
        "xgradcam",
        "hirescam",
        "layercam",
        "eigengradcam",
    }
    assert set(lite.METHODS) == set(IN_GRAPH)  # lite serves every one of them


def _shipped_map(name: str, model: torch.nn.Module, a: torch.Tensor, g: torch.Tensor):
    """The shipped class's layer map ``[B, h, w]`` for activations ``a``, gradients ``g``."""
    method = xcam.get_method(name)(model, "block3")
    logits = torch.randn(a.shape[0], 4)
    ctx = LayerContext(
        name="block3",
        activations=a,
        gradients=g,
        logits=logits,
        target=resolve_targets(logits, None),
        model=model,
        module=model.get_submodule("block3"),
    )
    return method.layer_map(ctx)


@pytest.mark.parametrize("name", IN_GRAPH)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lite_rule_equals_the_shipped_method(demo_model, name: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 8, 5, 7, generator=gen).relu()  # post-ReLU activations, some zeros
    g = torch.randn(3, 8, 5, 7, generator=gen) * 1e-2
    g[0, 0] = 0.0  # a channel with no gradient (gradcam++'s alpha is defined as 0 there)
    want = _shipped_map(name, demo_model, a, g).numpy()
    got = lite.layer_map(name, a.numpy(), g.numpy())
    assert got.shape == want.shape == (3, 5, 7)
    assert (got >= 0).all()
    scale = float(np.abs(want).max()) or 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)


def test_lite_eigengradcam_refuses_an_overflow_as_the_class_does(demo_model) -> None:
    from xcam.core.errors import NumericalError

    a = torch.ones(1, 8, 4, 4)
    g = torch.full((1, 8, 4, 4), float("inf"))
    with pytest.raises(NumericalError):
        _shipped_map("eigengradcam", demo_model, a, g)
    with pytest.raises(NumericalError, match="not finite"):
        lite.layer_map("eigengradcam", a.numpy(), g.numpy())
