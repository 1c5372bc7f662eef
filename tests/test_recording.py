"""Nothing below the target layer is recorded by autograd (issue 14): the eager forward runs
with gradients off until the first target layer, whose output becomes a fresh leaf, so a
gradient method costs inference plus the tail. Checked where it is subtle: in-place ops after
the layer, skip connections around it, several layers, the caller's grad mode (no_grad,
inference_mode, threads, errors), models that read the grad mode, DataParallel, bf16."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from conftest import AroundNet, inplace_net, seeded
from torch import nn

import xcam


def reference_layer_map(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Grad-CAM's layer map by plain full autograd, independent of xcam: ``[B, h, w]``."""
    seen = {}

    def keep(_module, _inputs, output):  # a clone goes on: an in-place op after the layer
        seen["a"] = output  # (torchvision's `out += identity`) must not change what is kept
        return output.clone()

    hook = model.get_submodule(layer).register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # a graph from the input, whatever the params
            out = model(x)
    finally:
        hook.remove()
    a = seen["a"]
    score = out.gather(1, out.argmax(1, keepdim=True)).sum()
    (g,) = torch.autograd.grad(score, a)
    return F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1)).detach()


def grad_modes(model: nn.Module):
    """Hooks noting, per leaf module, whether autograd was recording during its forward."""
    modes: dict[str, bool] = {}

    def note(name: str):
        def hook(_module, _inputs, _output) -> None:
            modes.setdefault(name, torch.is_grad_enabled())

        return hook

    leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
    return modes, [m.register_forward_hook(note(n)) for n, m in leaves]


@pytest.mark.parametrize("layers", [["layer3"], ["layer2", "layer4"]])
def test_nothing_below_the_first_layer_is_recorded(layers: list[str]) -> None:
    model = seeded("resnet18")
    modes, handles = grad_modes(model)
    try:
        xcam.GradCAM(model, layers)(torch.randn(2, 3, 64, 64))
    finally:
        for h in handles:
            h.remove()
    first = layers[0]
    below = [n for n in modes if n.split(".")[0] in ("conv1", "bn1", "relu", "maxpool")]
    below += [n for n in modes if n.startswith(("layer1", "layer2", "layer3")) and n < first]
    above = [n for n in modes if n.startswith("fc") or (n.startswith("layer") and n > first + "~")]
    assert below and above
    assert not any(modes[n] for n in below), [n for n in below if modes[n]]
    assert all(modes[n] for n in above), [n for n in above if not modes[n]]


@pytest.mark.parametrize("layer", ["layer4", "layer3", "layer4.0.conv1", "layer2.1.bn2"])
def test_maps_equal_full_autograd_with_skip_connections(layer: str) -> None:
    """Targets inside residual blocks: the shortcut carries values from below the layer to
    above it, which are constants of the tail (they can't depend on the activation)."""
    model = seeded("resnet18")
    x = torch.randn(2, 3, 64, 64)
    got = xcam.GradCAM(model, layer)(x).layer_maps[layer]
    torch.testing.assert_close(got, reference_layer_map(model, layer, x), rtol=1e-4, atol=1e-6)


def test_densenet_concatenation_from_below() -> None:
    model = seeded("densenet121")
    layer = "features.denseblock2.denselayer3.conv2"
    x = torch.randn(1, 3, 64, 64)
    got = xcam.GradCAM(model, layer)(x).layer_maps[layer]
    torch.testing.assert_close(got, reference_layer_map(model, layer, x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "enable_grad"])
def test_the_callers_grad_mode_gives_the_same_maps_and_is_restored(mode: str) -> None:
    model = seeded("resnet18")
    x = torch.randn(2, 3, 64, 64)
    want = xcam.GradCAM(model, "layer3")(x)
    with getattr(torch, mode)():
        inside = torch.is_grad_enabled()
        got = xcam.GradCAM(model, "layer3")(x)
        assert torch.is_grad_enabled() == inside
    torch.testing.assert_close(got.maps, want.maps)
    assert torch.equal(got.targets, want.targets)


def test_grad_mode_restored_after_an_exception() -> None:
    model = seeded("resnet18")

    def bad(_logits):
        raise RuntimeError("boom")

    for ctx in (torch.no_grad, torch.enable_grad):
        with ctx():
            before = torch.is_grad_enabled()
            with pytest.raises(RuntimeError, match="boom"):
                xcam.GradCAM(model, "layer3")(torch.randn(1, 3, 32, 32), targets=bad)
            assert torch.is_grad_enabled() == before


def test_eight_threads_keep_their_own_grad_mode() -> None:
    model = seeded("resnet18")
    cam = xcam.GradCAM(model, "layer3")
    xs = [torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(i)) for i in range(16)]
    single = [cam(x).maps for x in xs]

    def run(i: int) -> tuple[bool, bool, torch.Tensor]:
        want = i % 2 == 0  # half the threads call from inside no_grad
        with torch.set_grad_enabled(want):
            maps = cam(xs[i]).maps
            return want, torch.is_grad_enabled(), maps

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(16)))
    for (want, after, maps), ref in zip(results, single, strict=True):
        assert after == want
        torch.testing.assert_close(maps, ref)
    assert threading.active_count() >= 1 and torch.is_grad_enabled()


class _ChecksGradMode(nn.Module):
    """A forward that reads the grad mode: activation checkpointing only when training-like
    (recording), as memory-saving models do; the values are the same either way."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        if torch.is_grad_enabled():
            h = checkpoint(self.stem, x, use_reentrant=False)
        else:
            h = self.stem(x)
        return self.head(self.body(h).mean(dim=(2, 3)))


@pytest.mark.parametrize("layer", ["stem", "body"])
def test_a_model_that_reads_the_grad_mode(layer: str) -> None:
    model = _ChecksGradMode().eval()
    x = torch.randn(2, 3, 16, 16)
    got = xcam.GradCAM(model, layer)(x).layer_maps[layer]
    torch.testing.assert_close(got, reference_layer_map(model, layer, x), rtol=1e-4, atol=1e-6)


def test_inplace_relu_after_the_layer_under_no_grad_below() -> None:
    net, plain = inplace_net(True), inplace_net(False)
    x = torch.randn(2, 3, 16, 16)
    got = xcam.GradCAM(net, "2")(x).layer_maps["2"]
    torch.testing.assert_close(got, reference_layer_map(plain, "2", x), rtol=1e-4, atol=1e-6)


def test_dataparallel_and_bf16() -> None:
    model = seeded("resnet18")
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(UserWarning, match="unwrapped"):
        wrapped = xcam.GradCAM(nn.DataParallel(model), "module.layer3")(x)
    torch.testing.assert_close(wrapped.maps, xcam.GradCAM(model, "layer3")(x).maps)
    half = seeded("resnet18").to(torch.bfloat16)
    got = xcam.GradCAM(half, "layer3")(x.to(torch.bfloat16)).layer_maps["layer3"]
    want = reference_layer_map(half, "layer3", x.to(torch.bfloat16))
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=1e-2)


def test_the_injected_tail_records_only_after_the_layer(tmp_path) -> None:
    import exporters

    model = AroundNet().eval()
    path = tmp_path / "around.onnx"
    exporters.export(model, ["body"], torch.rand(1, 3, 16, 16), path)
    with pytest.warns(RuntimeWarning, match="whole eager model"):
        cam = xcam.GradCAM(model, "body", backend=xcam.load(path))
        modes, handles = grad_modes(model)
        try:
            got = cam(torch.randn(2, 3, 16, 16))
        finally:
            for h in handles:
                h.remove()
    assert modes["stem"] is False and modes["fc"] is True
    assert got.maps.shape == (2, 16, 16)


@pytest.mark.parametrize("name", ["scorecam", "ablationcam", "reciprocam", "eigencam", "cam"])
def test_gradient_free_methods_run_under_inference_mode(name: str) -> None:
    """Their forwards record nothing at all; what they return is ordinary tensors (an
    inference tensor can't be changed in place outside inference_mode)."""
    model = seeded("resnet18")
    modes: dict[str, bool] = {}

    def note(_module, _inputs, _output) -> None:
        modes.setdefault("inference", torch.is_inference_mode_enabled())

    hook = model.conv1.register_forward_hook(note)
    try:
        result = xcam.get_method(name)(model, "layer4")(torch.randn(1, 3, 32, 32))
    finally:
        hook.remove()
    assert modes["inference"] is True
    for t in (
        result.maps,
        result.logits,
        result.scores,
        result.targets,
        *result.layer_maps.values(),
    ):
        assert not t.is_inference()
    result.logits += 0  # in place, as a caller may


# -- the fixed cost per call (issue 14): what is cached or skipped must not change a map ----


def test_the_module_walk_finds_every_module_once() -> None:
    """preserved_state's own walk of the model: the modules of ``model.modules()``, a
    shared one once; every training flag is back after the call."""
    from xcam.core.capture import _all_modules, preserved_state

    shared = nn.Conv2d(3, 3, 3)
    model = nn.Sequential(shared, nn.Sequential(shared, nn.ReLU(), nn.Dropout()), nn.Identity())
    model.register_module("absent", None)
    found = _all_modules(model)
    assert len(found) == len(list(model.modules())) == 6
    assert {id(m) for m in found} == {id(m) for m in model.modules()}
    model.train()
    model[1][2].eval()
    flags = [m.training for m in model.modules()]
    with preserved_state(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == flags


def test_the_wrapped_model_is_kept_once_it_has_nothing_to_watch() -> None:
    """The eager source keeps its CamModel between calls, except one that watches the
    final activation (the first call; pre_activation): maps and the learnt activation stay
    right when pre_activation changes between calls."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.append(nn.Linear(4, 3)).append(nn.Softmax(dim=1)).eval()
    x = torch.randn(2, 3, 12, 12)
    with pytest.warns(UserWarning, match="ends in Softmax"):
        cam = xcam.GradCAM(model, "1")
        first = cam(x)
    kept = cam.eager._cam_models
    assert first.activation == "softmax" and len(kept) == 0  # the first call watched
    second = cam(x)
    assert len(kept) == 1 and torch.equal(second.maps, first.maps)
    cam.pre_activation = True
    before = cam(x)  # scores before the softmax: a watching model, never kept
    assert before.activation is None and len(kept) == 1
    reference = xcam.GradCAM(model[:-1], "1")(x)
    assert torch.allclose(before.maps, reference.maps, atol=1e-6)
    cam.pre_activation = False
    assert torch.equal(cam(x).maps, first.maps) and len(kept) == 1


def test_a_file_with_in_graph_gradients_gives_its_own_map(tmp_path) -> None:
    """GradCAM on a file with gradients reads the file's fused map: equal to what the
    torch post-processing computes from the file's activations and gradients; for a subset
    of its layers, and for a method that only subclasses GradCAM, the map is computed."""
    import exporters
    from xcam.core.ops import fuse

    model = seeded("resnet18")
    path = tmp_path / "grad.onnx"
    exporters.export(model, ["layer3", "layer4"], torch.randn(2, 3, 64, 64), path, gradients=True)
    loaded = xcam.load(path)
    x = torch.randn(3, 3, 64, 64)
    x[2] = 0.0  # a flat input: its map may be degenerate, flagged either way alike
    got = xcam.GradCAM(loaded)(x)
    maps, degenerate = fuse(list(got.layer_maps.values()), (64, 64))
    assert torch.allclose(got.maps, maps, atol=1e-5)
    assert torch.equal(got.degenerate, degenerate)
    assert torch.equal(got.maps, loaded.run(x)["gradcam"])  # the file's own
    one = xcam.GradCAM(loaded, "layer4")(x)  # the file's map is of both layers: not read
    assert torch.allclose(one.maps, xcam.GradCAM(model, "layer4")(x).maps, atol=1e-4)

    class PlusCAM(xcam.GradCAM):  # another rule on the same gradients
        name = "plus-test"

        def weights(self, ctx):
            return ctx.gradients.clamp(min=0).mean(dim=(2, 3))

    plus = PlusCAM(loaded)(x)
    assert not torch.allclose(plus.maps, got.maps, atol=1e-3)
    assert torch.allclose(plus.maps, fuse(list(plus.layer_maps.values()), (64, 64))[0])


def test_a_non_finite_map_from_the_file_is_an_error_not_nan(tmp_path, monkeypatch) -> None:
    import exporters

    model = seeded("resnet18")
    path = tmp_path / "grad.onnx"
    exporters.export(model, ["layer4"], torch.randn(2, 3, 64, 64), path, gradients=True)
    loaded = xcam.load(path)
    run = loaded.run

    def corrupted(x, target=None):
        outs = run(x, target)
        outs["gradcam"][0, 3, 3] = float("nan")  # a fault in the file's own map only
        return outs

    monkeypatch.setattr(loaded, "run", corrupted)
    from xcam.core.errors import NumericalError

    with pytest.raises(NumericalError, match="not finite"):
        xcam.GradCAM(loaded)(torch.randn(1, 3, 64, 64))


def test_a_target_layer_replaced_between_calls_is_the_one_explained() -> None:
    """The kept wrapped model follows the model: a replaced target layer is hooked anew,
    a removed one is a clear error."""
    from xcam.core.errors import LayerNotFoundError

    model = seeded("resnet18")
    x = torch.randn(1, 3, 64, 64)
    cam = xcam.GradCAM(model, "layer4")
    cam(x)
    cam(x)  # the wrapped model is kept from here on
    model.layer4 = nn.Sequential(model.layer4, nn.Identity())
    assert torch.allclose(cam(x).maps, xcam.GradCAM(model, "layer4")(x).maps)
    del model.layer4
    with pytest.raises(LayerNotFoundError, match="layer4"):
        cam(x)
