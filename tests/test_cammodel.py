"""CamModel: activations as real outputs of the forward, usable by tracing."""

from __future__ import annotations

import warnings

import torch
from conftest import assert_same_snapshot, seeded, snapshot

import xcam


def test_outputs_and_names(resnet18) -> None:
    cm = xcam.CamModel(resnet18, ["layer3", "layer4"])
    assert cm.output_names == ["logits", "layer3", "layer4"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, a3, a4 = cm(x)
        ref = {}
        hooks = [
            getattr(resnet18, n).register_forward_hook(
                lambda m, i, o, n=n: ref.__setitem__(n, o.clone())
            )
            for n in ("layer3", "layer4")
        ]
        try:
            ref_logits = resnet18(x)
        finally:
            for h in hooks:
                h.remove()
    assert torch.equal(logits, ref_logits)
    assert torch.equal(a3, ref["layer3"]) and torch.equal(a4, ref["layer4"])


def test_traced_cammodel_needs_no_hooks() -> None:
    """Tracing makes the activations graph outputs: the trace reproduces them on new input."""
    model = seeded("resnet18")
    before = snapshot(model)
    cm = xcam.CamModel(model, ["layer2", "layer4"]).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        traced = torch.jit.trace(cm, torch.randn(2, 3, 64, 64))
    assert_same_snapshot(before, snapshot(model))  # nothing registered on the model remains
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(traced(x), cm(x), strict=True):
            torch.testing.assert_close(got, want)
