"""Token activations as maps (issue 17, item 1): vision transformers' layers — ViT's
``[B, 1 + N, C]`` tokens, Swin's ``[B, h, w, C]`` stages — explained by every CAM method,
against hand-written references and pytorch-grad-cam with its documented reshape transforms.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import importable
from tiny_transformers import SIZE, swin, vit

import xcam
from xcam.core.errors import ModelSpecError
from xcam.core.layers import candidate_layers, default_layer
from xcam.core.ops import first_component
from xcam.core.tokens import Layout, grid_shape, layout_of

VIT_LAST = "encoder.layers.encoder_layer_1.ln_1"
GRID = SIZE // 8  # the ViT's patch grid (8x8 patches)


@pytest.fixture(scope="module")
def vit_model():
    return vit()


@pytest.fixture(scope="module")
def swin_model():
    return swin()


def _x(b: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _vit_reshape(t: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT reshape transform (its tutorial's)."""
    r = t[:, 1:, :].reshape(t.size(0), GRID, GRID, t.size(2))
    return r.transpose(2, 3).transpose(1, 2)


def _swin_reshape(t: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's Swin reshape transform, for torchvision's NHWC stages."""
    return t.permute(0, 3, 1, 2)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def _layer_output(model, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits and layer ``name``'s output, with autograd on (a plain forward)."""
    seen = {}
    handle = model.get_submodule(name).register_forward_hook(
        lambda m, i, o: seen.setdefault("a", o)
    )
    try:
        out = model(x)
    finally:
        handle.remove()
    return out, seen["a"]


# --- layouts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,prefix", [("grid", 0), ("cls+grid", 1), ("cls+grid", 2)])
def test_token_layouts_go_to_a_map_and_back(kind, prefix) -> None:
    b, h, w, c = 2, 3, 5, 4
    grid = torch.randn(b, h, w, c)
    tokens = torch.cat([torch.randn(b, prefix, c), grid.reshape(b, h * w, c)], 1)
    layout = Layout(kind, prefix=prefix)
    m = layout.to_map(tokens, (30, 50))  # a 3:5 input: a 3x5 grid
    assert m.shape == (b, c, h, w)
    assert torch.equal(m, grid.permute(0, 3, 1, 2))  # row-major positions, channels first
    assert torch.equal(layout.to_tokens(m, tokens), tokens)  # prefix tokens from `like`
    nhwc = Layout("nhwc")
    assert torch.equal(nhwc.to_map(grid, (3, 5)), grid.permute(0, 3, 1, 2))
    assert torch.equal(nhwc.to_tokens(nhwc.to_map(grid, (3, 5)), grid), grid)


def test_a_grid_takes_the_inputs_aspect() -> None:
    assert grid_shape(196, (224, 224)) == (14, 14)
    assert grid_shape(98, (112, 224)) == (7, 14)
    assert grid_shape(98, (224, 112)) == (14, 7)
    assert grid_shape(7, (64, 64)) == (1, 7)  # a prime count: one row


def test_a_layout_is_found_from_the_tokens(vit_model) -> None:
    # the model's own prefix count (torchvision's ViT: its class token; timm: num_prefix_tokens)
    assert layout_of(None, vit_model, "l", torch.zeros(1, 65, 8)) == Layout("cls+grid", 1)

    class Plain(torch.nn.Module):
        pass

    # without one, the only reading that leaves a square grid (1 + k² is never a square)
    assert layout_of(None, Plain(), "l", torch.zeros(1, 64, 8)) == Layout("grid")
    assert layout_of(None, Plain(), "l", torch.zeros(1, 65, 8)) == Layout("cls+grid", 1)
    with pytest.raises(xcam.LayerTypeError, match=r"'l' outputs 1x66x8 tokens.*reshape="):
        layout_of(None, Plain(), "l", torch.zeros(1, 66, 8))
    assert layout_of("grid", Plain(), "l", torch.zeros(1, 66, 8)) == Layout("grid")
    with pytest.raises(xcam.XCamError, match=r"reshape='tokens' is not a layout.*'cls\+grid'"):
        layout_of("tokens", Plain(), "l", torch.zeros(1, 64, 8))


def test_token_layers_are_listed_with_their_grid(vit_model, swin_model) -> None:
    infos = {i.name: i for i in candidate_layers(vit_model, _x(1))}
    assert infos[VIT_LAST].layout == "cls+grid" and infos[VIT_LAST].grid == (GRID, GRID)
    assert infos["conv_proj"].layout == "nchw"  # the patch embedding is a map
    assert default_layer(vit_model, _x(1)) == VIT_LAST  # the input of the last attention
    infos = {i.name: i for i in candidate_layers(swin_model, _x(1))}
    # torchvision's Permute modules turn the stages channels-last and the end back
    assert infos["features.0.0"].layout == "nchw"  # the patch convolution
    assert infos["features.1"].layout == "nhwc" and infos["features.1"].grid == (16, 16)
    assert infos["features.3"].layout == "nhwc" and infos["features.3"].grid == (8, 8)
    assert infos["permute"].layout == "nchw"


def test_layers_without_the_batch_are_not_candidates() -> None:
    """Swin V2's relative-position MLP runs on a ``[1, 2w-1, 2w-1, 2]`` table, not on the
    image batch: its channels-last output must not be listed as a map (it was the default
    layer of swin_v2_t at 32²)."""
    model = swin(v2=True)
    for b in (1, 2):
        names = [i.name for i in candidate_layers(model, _x(b))]
        assert not [n for n in names if "cpb_mlp" in n], names
        assert "features.3" in names
    assert default_layer(model, _x(1)) == "permute"  # the last stage normalised, as a map


# --- against references ----------------------------------------------------------------------


def test_gradcam_on_vit_tokens_is_the_hand_computed_map(vit_model) -> None:
    x = _x()
    result = xcam.GradCAM(vit_model, VIT_LAST)(x)
    out, tokens = _layer_output(vit_model, VIT_LAST, x)
    score = out.gather(1, out.argmax(1, keepdim=True)).sum()
    (g,) = torch.autograd.grad(score, tokens)
    # drop the class token, lay the 64 grid tokens out row by row: [B, C, 8, 8]
    a = tokens[:, 1:].detach().reshape(3, GRID, GRID, -1).permute(0, 3, 1, 2)
    g = g[:, 1:].reshape(3, GRID, GRID, -1).permute(0, 3, 1, 2)
    expected = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))
    assert result.layers == [VIT_LAST]
    assert torch.allclose(result.layer_maps[VIT_LAST], expected, atol=1e-6)
    assert not result.degenerate.any()


PEER_LAYERS = [
    ("vit", VIT_LAST, _vit_reshape),
    ("vit", "encoder.layers.encoder_layer_0", _vit_reshape),
    ("swin", "features.3", _swin_reshape),
    ("swin", "features.2", _swin_reshape),
]
# Grad-CAM++ against the peer at ViT block outputs only. Its denominator 2G² + G³·sum(A)
# assumes A >= 0 (after a ReLU); a transformer's activations sum to about 0 or below (a
# LayerNorm's output, a linear patch merging), so it crosses 0 where 2 + G·sum(A) does: the
# peer adds 1e-7 to it, xcam replaces an exact 0 only (as for CNNs), and near that pole the
# two differ (0.989 on Swin's features.2). Both follow the formula, which is undefined there;
# xcam's is checked against a hand-written one below.
PEER_CASES = [(m, *layer) for m in ("gradcam", "xgradcam", "layercam") for layer in PEER_LAYERS]
PEER_CASES += [("gradcam++", *PEER_LAYERS[1])]


@pytest.mark.parametrize("method,family,layer,reshape", PEER_CASES)
def test_gradient_methods_match_pytorch_grad_cam_on_transformers(
    vit_model, swin_model, method, family, layer, reshape
) -> None:
    import pytorch_grad_cam as peer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = vit_model if family == "vit" else swin_model
    peer_cls = {
        "gradcam": peer.GradCAM,
        "xgradcam": peer.XGradCAM,
        "layercam": peer.LayerCAM,
        "gradcam++": peer.GradCAMPlusPlus,
    }[method]
    x = _x(seed=1)
    ours = xcam.get_method(method)(model, layer)(x)
    targets = [ClassifierOutputTarget(int(c)) for c in ours.targets]
    with peer_cls(model, [model.get_submodule(layer)], reshape_transform=reshape) as cam:
        theirs = torch.as_tensor(cam(input_tensor=x, targets=targets))
    for i in range(len(x)):
        assert _corr(ours.maps[i], theirs[i]) >= 0.99, (method, layer, i)


def test_gradcam_plus_plus_on_swin_tokens_is_the_papers_formula(swin_model) -> None:
    x = _x(2, seed=6)
    layer = "features.2"
    result = xcam.GradCAMPlusPlus(swin_model, layer)(x)
    out, a = _layer_output(swin_model, layer, x)
    score = out.gather(1, out.argmax(1, keepdim=True)).sum()
    (g,) = torch.autograd.grad(score, a)
    a, g = a.detach().double().permute(0, 3, 1, 2), g.double().permute(0, 3, 1, 2)
    for i in range(2):
        total = a[i].sum(dim=(1, 2))  # [C]
        w = torch.zeros(a.shape[1], dtype=torch.double)
        for c in range(a.shape[1]):
            for y in range(a.shape[2]):
                for z in range(a.shape[3]):
                    gv = float(g[i, c, y, z])
                    den = 2 * gv**2 + float(total[c]) * gv**3
                    if gv != 0:
                        w[c] += gv**2 / (den if den != 0 else 1e-7) * max(gv, 0.0)
        expected = F.relu((w[:, None, None] * a[i]).sum(0)).float()
        assert torch.allclose(result.layer_maps[layer][i], expected, rtol=1e-3, atol=1e-5)


def test_scorecam_on_tokens_matches_pytorch_grad_cam(vit_model, monkeypatch) -> None:
    """The peer's channel weights on the same reshaped activations. The peer upsamples its
    masks with ``align_corners=True``, xcam as ``F.interpolate``'s default: on a ViT, whose
    patches see the mask's interpolation, that alone moves the weights, so the peer runs
    here with xcam's interpolation (what the test isolates is the token handling)."""
    from pytorch_grad_cam import ScoreCAM as PeerScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def upsample(size):
        return torch.nn.Upsample(size=size, mode="bilinear", align_corners=False)

    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", upsample)
    x = _x(2, seed=2)
    ours = xcam.ScoreCAM(vit_model, VIT_LAST, channel_softmax=True)(x)
    _, tokens = _layer_output(vit_model, VIT_LAST, x)
    a = _vit_reshape(tokens.detach())
    peer = PeerScoreCAM(vit_model, [vit_model.get_submodule(VIT_LAST)])
    try:
        targets = [ClassifierOutputTarget(int(c)) for c in ours.targets]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = torch.from_numpy(peer.get_cam_weights(x, None, targets, a.numpy(), None))
    finally:
        peer.activations_and_grads.release()
    expected = F.relu((w[:, :, None, None] * a).sum(1))
    got = ours.layer_maps[VIT_LAST]
    for i in range(len(x)):
        assert _corr(got[i], expected[i]) >= 0.99
        assert torch.allclose(got[i] / got[i].max(), expected[i] / expected[i].max(), atol=0.02)


def test_eigencam_on_tokens_is_the_peers_projection(vit_model, swin_model) -> None:
    """The centred projection equals pytorch-grad-cam's ``get_2d_projection`` of the reshaped
    activations up to the SVD's sign (the peer leaves it to LAPACK; xcam makes the map agree
    with the channel sum), and EigenCAM's map is its positive part."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    for model, layer, reshape in (
        (vit_model, VIT_LAST, _vit_reshape),
        (swin_model, "features.3", _swin_reshape),
    ):
        x = _x(2, seed=3)
        _, out = _layer_output(model, layer, x)
        a = reshape(out.detach())
        peer = torch.from_numpy(get_2d_projection(a.numpy()))
        ours = first_component(a, center=True)
        for p, q in zip(ours, peer, strict=True):
            assert abs(_corr(p, q)) >= 0.999
        result = xcam.EigenCAM(model, layer, center=True)(x)
        assert torch.allclose(result.layer_maps[layer], ours.relu(), atol=1e-5)


def test_ablation_and_recipro_cam_run_the_tail_on_tokens(vit_model) -> None:
    """Methods that run the model on after the layer get the tokens back, class token
    included: Ablation-CAM equals a loop that zeroes one channel of the grid tokens."""
    x = _x(1, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the tail runs the whole model
        result = xcam.AblationCAM(vit_model, VIT_LAST)(x)
        xcam.ReciproCAM(vit_model, VIT_LAST)(x)  # runs, its masks in token form
    with torch.no_grad():
        out, tokens = _layer_output(vit_model, VIT_LAST, x)
        cls = int(out.argmax(1))
        y = float(out[0, cls])
        weights = []
        for c in range(tokens.shape[2]):
            ablated = tokens.clone()
            ablated[:, 1:, c] = 0  # the grid tokens' channel c; the class token as it was
            handle = vit_model.get_submodule(VIT_LAST).register_forward_hook(
                lambda m, i, o, t=ablated: t
            )
            try:
                weights.append((y - float(vit_model(x)[0, cls])) / y)
            finally:
                handle.remove()
    a = _vit_reshape(tokens)[0]
    expected = F.relu((torch.tensor(weights)[:, None, None] * a).sum(0))
    assert torch.allclose(result.layer_maps[VIT_LAST][0], expected, rtol=1e-4, atol=1e-5)


# --- options, errors, side effects -------------------------------------------------------------


def test_reshape_given_by_name_or_callable_equals_the_found_layout(vit_model, swin_model) -> None:
    x = _x(2, seed=5)
    found = xcam.GradCAM(vit_model, VIT_LAST)(x)
    for reshape in ("cls+grid", _vit_reshape):
        given = xcam.GradCAM(vit_model, VIT_LAST, reshape=reshape)(x)
        assert torch.allclose(given.maps, found.maps, atol=1e-6)
    found = xcam.GradCAM(swin_model, "features.3")(x)
    given = xcam.GradCAM(swin_model, "features.3", reshape="nhwc")(x)
    assert torch.equal(given.maps, found.maps)
    # the CNN path is untouched: an explicit "nchw" is the default
    assert xcam.GradCAM(swin_model, "permute", reshape="nchw").settings()["reshape"] == "nchw"


def test_token_errors_name_the_problem(vit_model) -> None:
    x = _x(1)
    with pytest.raises(xcam.XCamError, match="reshape='rows' is not a layout"):
        xcam.GradCAM(vit_model, VIT_LAST, reshape="rows")
    with pytest.raises(xcam.LayerTypeError, match=r"not \[B, h, w, C\] as layout 'nhwc' says"):
        xcam.GradCAM(vit_model, VIT_LAST, reshape="nhwc")(x)
    with pytest.raises(xcam.LayerTypeError, match=r"reshape= turned layer .* into \(1, 65, 32\)"):
        xcam.GradCAM(vit_model, VIT_LAST, reshape=lambda t: t)(x)
    with (
        pytest.raises(xcam.XCamError, match="a reshape= callable has none"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", RuntimeWarning)
        xcam.AblationCAM(vit_model, VIT_LAST, reshape=_vit_reshape)(x)
    with pytest.raises(xcam.LayerTypeError, match=r"'heads.head' outputs a 1x10 tensor"):
        xcam.GradCAM(vit_model, "heads.head")(x)


def test_explaining_a_transformer_leaves_it_as_it_was(vit_model) -> None:
    model = vit()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name in ("gradcam", "scorecam", "eigencam"):
        xcam.get_method(name)(model, VIT_LAST)(_x(1))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_guided_backprop_says_a_transformer_has_no_relus(vit_model) -> None:
    with pytest.warns(UserWarning, match="GELU"):
        result = xcam.GuidedBackprop(vit_model)(_x(1))
    assert result.maps.shape == (1, 3, SIZE, SIZE)


# --- the command line ----------------------------------------------------------------------------


def test_the_cli_lists_and_explains_token_layers(runner, tmp_path) -> None:
    from PIL import Image

    from xcam.cli import main

    noise = torch.rand(SIZE, SIZE, 3, generator=torch.Generator().manual_seed(7))
    Image.fromarray((noise * 255).byte().numpy()).save(tmp_path / "a.png")
    source = "from tiny_transformers import vit, swin\n"
    with importable(tmp_path, "tt_models", source):
        res = runner.invoke(main, ["layers", "tt_models:vit", "--input-size", str(SIZE)])
        assert res.exit_code == 0, res.output
        line = next(x for x in res.output.splitlines() if x.startswith("*"))
        assert VIT_LAST in line and "cls+grid 8x8" in line
        res = runner.invoke(main, ["layers", "tt_models:swin", "--input-size", str(SIZE)])
        assert any("features.3 " in x and "nhwc 8x8" in x for x in res.output.splitlines())
        out = tmp_path / "out"
        args = ["explain", "tt_models:vit", str(tmp_path / "a.png"), "--input-size", str(SIZE)]
        res = runner.invoke(main, [*args, "--out", str(out), "--tokens", "cls+grid"])
        assert res.exit_code == 0, res.output
        saved = torch.from_numpy(__import__("numpy").load(out / "a_gradcam.npy"))
        assert saved.shape == (SIZE, SIZE) and float(saved.max()) == pytest.approx(1.0)
        res = runner.invoke(main, [*args, "--out", str(tmp_path / "o2"), "--tokens", "nhwc"])
        assert res.exit_code == 1 and "as layout 'nhwc' says" in res.output  # the default layer
        res = runner.invoke(
            main, [*args, "--out", str(tmp_path / "o2"), "--tokens", "nhwc", "-l", VIT_LAST]
        )
        assert res.exit_code == 2 and "--tokens nhwc" in res.output  # a usage error, found first
        res = runner.invoke(main, [*args, "--out", str(tmp_path / "o3"), "-l", "heads.head"])
        assert res.exit_code == 2 and "'heads.head'" in res.output


# --- exported ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,layer", [("vit", VIT_LAST), ("swin", "features.3")])
def test_an_exported_transformer_explains_as_eager(vit_model, swin_model, tmp_path, family, layer):
    """A file with the token activations as outputs: gradients from the eager tail match
    eager; explained alone (no model), the file's metadata says how its tokens lie (a
    Swin stage's [B, 8, 8, C] would otherwise read as a map of 8 channels). In-graph
    gradients of token layers are refused with what works instead."""
    import exporters

    model = vit_model if family == "vit" else swin_model
    path = tmp_path / f"{family}.onnx"
    exporters.export(model, layer, _x(1), path)
    loaded = xcam.load(path)
    assert loaded.metadata.token_layouts == {
        layer: ["cls+grid", 1] if family == "vit" else ["nhwc", 0]
    }
    x = _x(2, seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the ViT's tail is the whole model
        eager = xcam.GradCAM(model, layer)(x)
        onnx = xcam.GradCAM(model, layer, backend=loaded)(x)
    assert torch.allclose(onnx.maps, eager.maps, atol=1e-4)
    alone = xcam.EigenCAM(loaded, layer)(x)
    assert torch.allclose(alone.maps, xcam.EigenCAM(model, layer)(x).maps, atol=1e-4)
    # TorchScript too: its trace takes the models' branches on sizes for branches on values,
    # so the file is the make_fx graph, scripted (batch still dynamic)
    report = exporters.export(model, layer, _x(1), tmp_path / f"{family}.ts", format="torchscript")
    assert any("make_fx" in n for n in report.notes)
    scripted = xcam.load(tmp_path / f"{family}.ts", trust_code=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = xcam.GradCAM(model, layer, backend=scripted)(x)
    assert torch.allclose(got.maps, eager.maps, atol=1e-4)
    assert torch.allclose(xcam.EigenCAM(scripted, layer)(x).maps, alone.maps, atol=1e-4)


SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("family,layer", [("vit", VIT_LAST), ("swin", "features.3")])
def test_in_graph_gradients_of_a_transformer_match_eager_autograd(
    vit_model, swin_model, tmp_path, family, layer, fmt
) -> None:
    """Issue 17, item 2: the backward of LayerNorm, attention (scaled dot-product), GELU,
    window shifts and the patch embedding in the exported graph; gradients within 1e-3
    relative norm of eager autograd, maps within 1e-3, batch 1 and 3, top-1 and asked classes;
    the file explains alone (no eager model), and xcam.lite serves the ONNX file."""
    import exporters
    from xcam.core.artifact import grad_name

    model = vit_model if family == "vit" else swin_model
    path = tmp_path / f"{family}{SUFFIX[fmt]}"
    exporters.export(model, layer, _x(1), path, format=fmt, gradients=True, target_input=True)
    backend = xcam.load(path, trust_code=True)
    assert backend.has_gradients
    assert backend.metadata.token_layouts == {
        layer: ["cls+grid", 1] if family == "vit" else ["nhwc", 0]
    }
    for b in (1, 3):
        x = _x(b, seed=10 + b)
        wanted = [(3 * i + 1) % 10 for i in range(b)]
        for targets in (None, wanted):
            out, a = _layer_output(model, layer, x)
            idx = out.argmax(1) if targets is None else torch.tensor(targets)
            (g,) = torch.autograd.grad(out.gather(1, idx[:, None]).sum(), a)
            got = backend.run(x, targets)
            assert got[grad_name(layer)].shape == a.shape  # laid out as the layer's tokens
            rel = (got[grad_name(layer)] - g).norm() / g.norm()
            assert float(rel) < 1e-3, (b, targets, float(rel))
            ref = xcam.GradCAM(model, layer)(x, targets=targets)
            assert float((got["gradcam"] - ref.maps).abs().max()) < 1e-3
            alone = xcam.GradCAM(backend, layer)(x, targets=targets)
            assert float((alone.maps - ref.maps).abs().max()) < 1e-3
            assert torch.equal(alone.targets, ref.targets)
    if fmt == "onnx":
        from xcam.lite import OnnxExplainer

        x = _x(3, seed=20)
        for method, cls in (("gradcam", xcam.GradCAM), ("gradcam++", xcam.GradCAMPlusPlus)):
            lite = OnnxExplainer(path, method=method)(x.numpy())
            ref = cls(model, layer)(x)
            assert float(abs(lite.maps - ref.maps.numpy()).max()) < 1e-3, method
            assert lite.targets.tolist() == ref.targets.tolist()


@pytest.mark.parametrize(
    "kind,prefix", [("nhwc", 0), ("grid", 0), ("cls+grid", 1), ("cls+grid", 2)]
)
def test_lite_lays_tokens_out_as_the_library_does(kind, prefix) -> None:
    """xcam.lite's numpy layout of a token file's outputs is Layout.to_map's."""
    from xcam.lite import as_map

    shape = (2, 4, 8, 5) if kind == "nhwc" else (2, prefix + 4 * 8, 5)
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    want = Layout(kind, prefix=prefix).to_map(t, (32, 64))
    got = as_map(t.numpy(), [kind, prefix], (32, 64))
    assert got.shape == tuple(want.shape) and np.array_equal(got, want.numpy())


def test_a_token_grid_needs_a_fixed_size_for_in_graph_gradients(vit_model, tmp_path) -> None:
    """The grid of a ViT's tokens is fixed by the example's size: --dynamic-spatial with
    --gradients is refused before any tracing, and nothing is written."""
    import exporters

    path = tmp_path / "g.onnx"
    with pytest.raises(exporters.ExportError, match="fixed input size"):
        exporters.export(vit_model, VIT_LAST, _x(1), path, gradients=True, dynamic_spatial=True)
    assert not path.exists()


def test_the_eigen_sign_is_stable_where_the_channel_sum_is_rounding_noise() -> None:
    """A LayerNorm's tokens sum to 0 over the channels, so "agree with the channel sum"
    would pick the sign from rounding: the largest entry is made positive instead (what kept
    a ViT's Eigen-CAM from the file equal to eager). ReLU maps are unaffected."""
    g = torch.Generator().manual_seed(9)
    a = torch.randn(3, 16, 4, 4, generator=g)
    a = a - a.mean(dim=1, keepdim=True)  # each position sums to 0
    p = first_component(a)
    q = first_component(a + 1e-6 * torch.randn(a.shape, generator=g))
    for i in range(3):
        assert float(p[i].flatten()[p[i].abs().argmax()]) > 0
        assert _corr(p[i], q[i]) > 0.999
    relu = torch.rand(2, 8, 3, 3, generator=g)  # a CNN's: the channel sum decides
    r = first_component(relu)
    assert all(float((r[i] * relu[i].sum(0)).sum()) > 0 for i in range(2))


# --- timm ----------------------------------------------------------------------------------------


def _timm(name: str, **kwargs):
    timm = pytest.importorskip("timm")  # a dev dependency: installed by the test set-up
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def test_timm_vit_and_deit_tokens_are_found(tmp_path) -> None:
    """timm says how many prefix tokens come first (DeiT's distilled: class + distillation);
    the default layer is the last block's norm1, the input of its attention."""
    for name, prefix in (("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)):
        model = _timm(name, img_size=SIZE, depth=2, num_classes=10)
        x = _x(2, seed=10)
        result = xcam.GradCAM(model)(x)
        layer = "blocks.1.norm1"
        assert result.layers == [layer]
        out, tokens = _layer_output(model, layer, x)
        score = out.gather(1, out.argmax(1, keepdim=True)).sum()
        (g,) = torch.autograd.grad(score, tokens)
        side = SIZE // 16
        a = tokens[:, prefix:].detach().reshape(2, side, side, -1).permute(0, 3, 1, 2)
        g = g[:, prefix:].reshape(2, side, side, -1).permute(0, 3, 1, 2)
        expected = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))
        assert torch.allclose(result.layer_maps[layer], expected, atol=1e-6), name


def test_timm_swin_stages_are_channels_last() -> None:
    """timm's Swin says ``output_fmt = "NHWC"``: its stages are permuted (its patch
    convolution is not), and Grad-CAM matches pytorch-grad-cam's Swin tutorial transform."""
    from pytorch_grad_cam import GradCAM as PeerGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _timm(
        "swin_tiny_patch4_window7_224",
        img_size=SIZE,
        window_size=4,
        embed_dim=16,
        depths=(1, 1),
        num_heads=(1, 2),
        num_classes=10,
    )
    infos = {i.name: i for i in candidate_layers(model, _x(1))}
    assert infos["patch_embed.proj"].layout == "nchw"
    assert infos["layers.1"].layout == "nhwc" and infos["layers.1"].grid == (8, 8)
    x = _x(2, seed=11)
    ours = xcam.GradCAM(model, "layers.1")(x)
    targets = [ClassifierOutputTarget(int(c)) for c in ours.targets]
    with PeerGradCAM(model, [model.layers[1]], reshape_transform=_swin_reshape) as cam:
        theirs = torch.as_tensor(cam(input_tensor=x, targets=targets))
    for i in range(2):
        assert _corr(ours.maps[i], theirs[i]) >= 0.99


def test_timm_model_specs() -> None:
    pytest.importorskip("timm")
    from xcam.models import load_model

    a = load_model("timm:vit_tiny_patch16_224")
    b = load_model("timm:vit_tiny_patch16_224")
    assert a.fingerprint == b.fingerprint  # seeded: the same random weights each time
    assert a.input_size == (224, 224) and a.mean == (0.5, 0.5, 0.5)  # timm's own config
    assert "random weights" in " ".join(a.notes)
    with pytest.raises(ModelSpecError, match=r"timm has no model 'vit_tiny_patch16'.*closest"):
        load_model("timm:vit_tiny_patch16")
