"""The CAM family: each method against its paper's formula (hand-computed on fixed-weight
toy nets, identities between methods, an independent reference written here, and the peer
library pytorch-grad-cam), batched = per-sample, finite maps, every backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TOY_X, ToyNet
from torch import nn

import xcam
from xcam.core.ops import first_component

ALL_CAMS = [m for m in xcam.list_methods() if not m.startswith("guided")]
LAYER_METHODS = [m for m in ALL_CAMS if m != "fullgrad"]
# CAM reads a pooled-linear head: only the last layer has one
ANY_LAYER_METHODS = [m for m in LAYER_METHODS if m != "cam"]


def make(name: str, model: nn.Module, layers=None, **kw):
    cls = xcam.get_method(name)
    if name == "fullgrad":
        return cls(model, **kw)
    return cls(model, layers, **kw)


# --- hand-computed values and identities on fixed-weight toy nets ------------------------------


def test_gradcampp_toy_regular_case() -> None:
    # W[1] = [3, -1]: g = [0.5, -1/6]; channel 1 has g < 0 -> weight 0;
    # channel 0: a = 1/(2 + 6·0.5) = 0.2, w_0 = 6 · 0.2 · 0.5 = 0.6
    result = xcam.GradCAMPlusPlus(ToyNet(), "conv")(TOY_X, targets=1)
    assert torch.allclose(result.layer_maps["conv"][0], F.relu(0.6 * TOY_X[0, 0]), rtol=1e-5)


@pytest.mark.parametrize("name", ["hirescam", "xgradcam", "layercam"])
def test_equal_to_gradcam_where_the_paper_says(name: str) -> None:
    # pooled-linear head with positive weights: gradients constant per channel and >= 0, so
    # HiRes-CAM = Grad-CAM (always for this head), Layer-CAM = Grad-CAM (G >= 0, constant),
    # XGrad-CAM = Grad-CAM (sum(G·A)/sum(A) = G for constant G; A_0 = x has sum 6)
    net = ToyNet([[1.0, 0.5], [2.0, 0.25]])
    x = TOY_X.abs() + 0.1  # sums of A_0 and A_1 non-zero
    ref = xcam.GradCAM(net, "conv")(x, targets=1)
    got = xcam.get_method(name)(net, "conv")(x, targets=1)
    assert torch.allclose(got.layer_maps["conv"], ref.layer_maps["conv"], rtol=1e-5, atol=1e-7)
    assert torch.allclose(got.maps, ref.maps, atol=1e-6)


@pytest.mark.parametrize("name", ["hirescam", "layercam"])
def test_per_position_methods_differ_from_gradcam_on_a_spatial_head(name: str) -> None:
    # conftest's SpatialHeadNet: S = sum V A_0 + U A_1; HiRes-CAM = ReLU(V x - U x) exactly
    from conftest import SpatialHeadNet

    net = SpatialHeadNet()
    result = xcam.get_method(name)(net, "conv")(TOY_X, targets="positive")
    v = net.fc.weight[0, :6].view(2, 3).detach()
    u = net.fc.weight[0, 6:].view(2, 3).detach()
    a0, a1 = TOY_X[0, 0], -TOY_X[0, 0]
    expected = v * a0 + u * a1 if name == "hirescam" else v.clamp(min=0) * a0 + u * a1
    assert torch.allclose(result.layer_maps["conv"][0], F.relu(expected), atol=1e-6)


def test_eigencam_is_the_first_principal_component() -> None:
    torch.manual_seed(0)
    a = torch.randn(2, 5, 4, 3).relu()
    got = first_component(a)
    for i in range(2):
        m = a[i].reshape(5, -1).T.double().numpy()  # hw x C
        _, _, vt = np.linalg.svd(m, full_matrices=False)
        proj = m @ vt[0]
        if (proj * m.sum(axis=1)).sum() < 0:
            proj = -proj
        assert np.allclose(got[i].reshape(-1).numpy(), proj, atol=1e-5)


def test_eigen_smooth_of_a_rank_one_map_is_the_map() -> None:
    # weighted activations u v^T (rank 1): the first component is u·|v|, the channel sum u·sum v
    u = torch.tensor([0.0, 1.0, 3.0, 2.0, 0.5, 0.0])
    v = torch.tensor([0.5, 1.0, 2.0])
    a = (u[:, None] * v[None]).T.reshape(1, 3, 2, 3)
    proj = first_component(a)[0].reshape(-1)
    assert torch.allclose(proj / proj.max(), u / u.max(), atol=1e-6)


def test_eigengradcam_and_eigen_smooth_use_gradient_times_activation(demo_model) -> None:
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    hires = xcam.HiResCAM(demo_model, "block3")
    eigen = xcam.EigenGradCAM(demo_model, "block3")(x)
    smooth = xcam.HiResCAM(demo_model, "block3", eigen_smooth=True)(x)
    assert torch.allclose(eigen.layer_maps["block3"], smooth.layer_maps["block3"], atol=1e-6)
    # reference: SVD of G ⊙ A by numpy
    with torch.enable_grad():
        acts = {}
        h = demo_model.block3.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
        try:
            out = demo_model(x)
        finally:
            h.remove()
        g = torch.autograd.grad(out[0, out[0].argmax()], acts["a"])[0]
    m = (g * acts["a"]).detach()[0].reshape(g.shape[1], -1).T.double().numpy()
    _, _, vt = np.linalg.svd(m, full_matrices=False)
    proj = m @ vt[0]
    proj = proj if (proj * m.sum(axis=1)).sum() >= 0 else -proj
    expected = torch.from_numpy(np.maximum(proj, 0)).float().view(1, *g.shape[2:])
    assert torch.allclose(eigen.layer_maps["block3"], expected, atol=1e-5)
    assert not torch.allclose(eigen.maps, hires(x).maps, atol=1e-3)  # it does smooth


# --- gradient-free methods against independent references written here --------------------------


def _hooked_forward(model: nn.Module, layer: nn.Module, x, replace=None) -> torch.Tensor:
    """The full model, optionally with ``layer``'s output replaced — a reference path that
    shares nothing with xcam's tails."""
    h = layer.register_forward_hook(lambda m, i, o: replace(o) if replace else None)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        h.remove()


def _activation(model: nn.Module, layer: nn.Module, x) -> tuple[torch.Tensor, torch.Tensor]:
    """(model output, the layer's activation) by a plain hook."""
    acts: list[torch.Tensor] = []
    out = _hooked_forward(model, layer, x, lambda o: acts.append(o))
    return out, acts[0]


def test_scorecam_matches_a_plain_loop(demo_model) -> None:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    result = xcam.ScoreCAM(demo_model, "block2", batch_size=7)(x, targets=[0, 2])
    _, act = _activation(demo_model, demo_model.block2, x)
    a = act
    for i, cls in enumerate([0, 2]):
        w = []
        for c in range(a.shape[1]):
            m = F.interpolate(a[i : i + 1, c : c + 1], size=(64, 64), mode="bilinear")
            m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else torch.zeros_like(m)
            with torch.no_grad():
                w.append(demo_model(x[i : i + 1] * m).softmax(1)[0, cls])
        cam = F.relu((torch.stack(w)[:, None, None] * a[i]).sum(0))
        assert torch.allclose(result.layer_maps["block2"][i], cam, rtol=1e-4, atol=1e-6)


def test_scorecam_channel_softmax_matches_pytorch_grad_cam(demo_model) -> None:
    from pytorch_grad_cam import ScoreCAM as PeerScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    ours = xcam.ScoreCAM(demo_model, "block3", channel_softmax=True)(x, targets=1)
    _, act = _activation(demo_model, demo_model.block3, x)
    peer = PeerScoreCAM(demo_model, [demo_model.block3])
    peer_w = peer.get_cam_weights(x, None, [ClassifierOutputTarget(1)], act.numpy(), None)
    peer.activations_and_grads.release()
    a = act[0]
    peer_cam = F.relu((torch.from_numpy(peer_w)[0, :, None, None] * a).sum(0))
    # the peer upsamples with align_corners=True, xcam as F.interpolate's default: the masks
    # differ by interpolation only (4 % of the map's range at most here)
    ref = peer_cam / peer_cam.max()
    got = ours.layer_maps["block3"][0] / ours.layer_maps["block3"][0].max()
    assert float((got - ref).abs().max()) < 0.06
    assert float(torch.corrcoef(torch.stack([got.flatten(), ref.flatten()]))[0, 1]) > 0.995


def test_ablationcam_matches_a_plain_loop(demo_model) -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    result = xcam.AblationCAM(demo_model, "block3", batch_size=5)(x)
    y, a = _activation(demo_model, demo_model.block3, x)
    cls = y.argmax(1)
    for i in range(2):
        w = []
        for c in range(a.shape[1]):

            def ablate(o, c=c):
                o = o.clone()
                o[:, c] = 0
                return o

            yc = _hooked_forward(demo_model, demo_model.block3, x[i : i + 1], ablate)[0, cls[i]]
            w.append((y[i, cls[i]] - yc) / y[i, cls[i]])
        cam = F.relu((torch.stack(w)[:, None, None] * a[i]).sum(0))
        # (y - y_c) / y loses ~1e-4 of y's precision when the drop is small
        tol = 2e-4 * float(cam.abs().max())
        assert torch.allclose(result.layer_maps["block3"][i], cam, rtol=0, atol=tol)


def test_ablationcam_toy_hand_computed() -> None:
    # y_k = W_k·mean(A); zeroing channel c removes W_kc·mean(A_c): w_c = W_kc mean(A_c) / y_k
    net, x = ToyNet(), TOY_X
    mean = torch.tensor([1.0, -1.0])  # mean of x and of -x
    w = torch.tensor([3.0, -1.0]) * mean
    w = w / w.sum()
    expected = F.relu(w[0] * x[0, 0] + w[1] * -x[0, 0])
    result = xcam.AblationCAM(net, "conv")(x, targets=1)
    assert torch.allclose(result.layer_maps["conv"][0], expected, atol=1e-6)


@pytest.mark.parametrize("gaussian", [False, True])
def test_reciprocam_matches_a_plain_loop(demo_model, gaussian: bool) -> None:
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    result = xcam.ReciproCAM(demo_model, "block3", gaussian=gaussian, batch_size=9)(x)
    y, a = _activation(demo_model, demo_model.block3, x)
    cls = int(y.argmax())
    h, w = a.shape[-2:]
    k = torch.tensor([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]) / 4
    expected = torch.zeros(h, w)
    for i in range(h):
        for j in range(w):
            mask = torch.zeros(h + 2, w + 2)
            if gaussian:
                mask[i : i + 3, j : j + 3] = k
            else:
                mask[i + 1, j + 1] = 1
            mask = mask[1:-1, 1:-1]
            out = _hooked_forward(demo_model, demo_model.block3, x, lambda o, m=mask: o * m)
            expected[i, j] = out.softmax(1)[0, cls]
    assert torch.allclose(result.layer_maps["block3"][0], expected, atol=1e-5)


def test_fullgrad_completeness_and_reference(resnet18) -> None:
    """For a ReLU net, f(x) = ∇x f·x + sum_l ∇z_l f·b_l exactly: this checks every gradient
    and effective bias FullGrad uses; then the map against the formula computed here."""
    from xcam.attributions.fullgrad import effective_bias

    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    layers = [(n, m) for n, m in resnet18.named_modules() if effective_bias(m) is not None]
    outs: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o)) for n, m in layers
    ]
    try:
        xi = x.clone().requires_grad_(True)
        y = resnet18(xi)
        cls = int(y.argmax())
        grads = torch.autograd.grad(y[0, cls], [xi, *(outs[n] for n, _ in layers)])
    finally:
        for h in handles:
            h.remove()
    total = (grads[0] * x).sum() + sum(
        (g * effective_bias(m)[None, :, None, None]).sum()
        for (_, m), g in zip(layers, grads[1:], strict=True)
    )
    fc_bias = resnet18.fc.bias[cls]  # the last Linear's bias is not spatial: not in the map
    assert torch.allclose(total + fc_bias, y[0, cls], rtol=1e-4, atol=1e-4)

    def psi(t):
        t = t.abs()
        t = (t - t.min()) / (t.max() - t.min()) if t.max() > t.min() else torch.zeros_like(t)
        return F.interpolate(t, size=(64, 64), mode="bilinear").sum(1)

    ref = psi(grads[0] * x)
    for (_, m), g in zip(layers, grads[1:], strict=True):
        ref = ref + psi(g * effective_bias(m)[None, :, None, None])
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    result = xcam.FullGrad(resnet18)(x)
    assert torch.allclose(result.maps, ref, atol=1e-5)
    assert len(result.layer_maps) == len(layers) + 1


# --- the peer library, weighting rules on the same activations and gradients -------------------


@pytest.mark.parametrize(
    "name,peer",
    [
        ("gradcam", "GradCAM"),
        ("gradcam++", "GradCAMPlusPlus"),
        ("xgradcam", "XGradCAM"),
        ("hirescam", "HiResCAM"),
        ("layercam", "LayerCAM"),
    ],
)
def test_weighting_rules_match_pytorch_grad_cam(resnet18, name: str, peer: str) -> None:
    import pytorch_grad_cam

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    classes = resnet18(x).argmax(1)

    # The score is scaled by 1000: pytorch-grad-cam adds eps = 1e-6 to Grad-CAM++'s
    # denominator 2G² + sum(A)G³, which is of that order for gradients ~1e-3 and biases its
    # weights; xcam computes the paper's formula. With larger gradients the two agree.
    def score(y: torch.Tensor) -> torch.Tensor:
        return 1000 * y.gather(1, classes[:, None])[:, 0]

    result = xcam.get_method(name)(resnet18, "layer3")(x, targets=score)
    acts, grads = {}, {}
    with torch.enable_grad():
        h = resnet18.layer3.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
        try:
            y = resnet18(x)
        finally:
            h.remove()
        grads["g"] = torch.autograd.grad(score(y).sum(), acts["a"])[0]
    method = getattr(pytorch_grad_cam, peer)(resnet18, [resnet18.layer3])
    try:
        a, g = acts["a"].detach().numpy(), grads["g"].numpy()
        cam = method.get_cam_image(x, resnet18.layer3, None, a, g, eigen_smooth=False)
    finally:
        method.activations_and_grads.release()
    expected = torch.from_numpy(np.maximum(cam, 0)).float()
    got = result.layer_maps["layer3"]
    scale = float(expected.abs().max())
    assert scale > 0
    assert float((got - expected).abs().max()) <= 1e-4 * scale


# --- properties every method has ---------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_CAMS)
def test_batched_equals_per_sample(demo_model, name: str) -> None:
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    method = make(name, demo_model, None if name == "fullgrad" else "block3")
    batch = method(x, targets=[0, 1, 2])
    for i in range(3):
        single = method(x[i : i + 1], targets=i)
        assert torch.allclose(batch.maps[i], single.maps[0], atol=1e-5), i
    assert batch.maps.shape == (3, 64, 64)
    assert batch.method == method.name


@pytest.mark.parametrize("name", ALL_CAMS)
@pytest.mark.parametrize("kind", ["zeros", "constant", "huge"])
def test_degenerate_inputs_give_finite_maps(demo_model, name: str, kind: str) -> None:
    x = {
        "zeros": torch.zeros(1, 3, 64, 64),
        "constant": torch.full((1, 3, 64, 64), 0.7),
        "huge": torch.full((1, 3, 64, 64), 1e4),
    }[kind]
    result = make(name, demo_model, None if name == "fullgrad" else "block3")(x)
    assert torch.isfinite(result.maps).all()
    assert float(result.maps.min()) >= 0 and float(result.maps.max()) <= 1
    assert result.degenerate.dtype == torch.bool


@pytest.mark.parametrize("name", ANY_LAYER_METHODS)
def test_multi_layer_returns_each_layer_and_the_fusion(demo_model, name: str) -> None:
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    layers = ["block1", "block2", "block3"]
    multi = make(name, demo_model, layers)(x)
    assert list(multi.layer_maps) == layers
    ups = []
    for layer in layers:
        single = make(name, demo_model, layer)(x)
        assert torch.allclose(multi.layer_maps[layer], single.layer_maps[layer], atol=1e-5)
        ups.append(single.maps)
    fused = torch.stack(ups).mean(0)
    fused = (fused - fused.min()) / (fused.max() - fused.min())
    assert torch.allclose(multi.maps, fused, atol=1e-5)


@pytest.mark.parametrize("name", ALL_CAMS)
def test_callable_target_on_a_multi_output_regressor(name: str) -> None:
    """A head-pose-like net: three outputs of 66 bins each; the score is the sum of the
    softmax expectations (yaw + pitch + roll)."""
    torch.manual_seed(0)

    class PoseNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.heads = nn.Linear(8, 3 * 66)

        def forward(self, x):
            return self.heads(self.pool(self.features(x)).flatten(1)).view(-1, 3, 66)

    bins = torch.arange(66, dtype=torch.float32) * 3 - 99

    def pose_score(out: torch.Tensor) -> torch.Tensor:
        return (out.softmax(-1) * bins).sum(-1).sum(-1)

    net = PoseNet().eval()
    x = torch.rand(2, 3, 16, 16)
    method = make(name, net, None if name == "fullgrad" else "features")
    if name == "cam":
        with pytest.raises(xcam.HeadError):
            method(x, targets=pose_score)
        return
    batch = method(x, targets=pose_score)
    assert torch.isfinite(batch.maps).all() and batch.maps.shape == (2, 16, 16)
    assert torch.allclose(batch.scores, pose_score(net(x)).detach(), atol=1e-4)
    single = method(x[1:], targets=pose_score)
    # Recipro-CAM's map is the raw score, whose spread over positions is ~5e-3 here: float
    # rounding of the batched tail (~2e-7) becomes ~5e-5 after min-max scaling
    assert torch.allclose(batch.maps[1], single.maps[0], atol=1e-4)


# --- options ------------------------------------------------------------------------------------


def test_aug_smooth_is_flip_equivariant_and_identity_without_augmentations(demo_model) -> None:
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(10))
    smooth = xcam.GradCAM(demo_model, "block3", aug_smooth=True)
    a, b = smooth(x), smooth(x.flip(-1), targets=smooth(x).targets)
    # the flips and scales form a set closed under a flip: explaining the flipped image
    # gives the flipped map
    assert torch.allclose(b.maps, a.maps.flip(-1), atol=1e-5)
    plain = xcam.GradCAM(demo_model, "block3")(x)
    assert not torch.allclose(a.maps, plain.maps, atol=1e-3)

    class One(xcam.GradCAM):
        augmentations = ((False, 1.0),)

    assert torch.allclose(One(demo_model, "block3", aug_smooth=True)(x).maps, plain.maps)


def test_aug_smooth_reference(demo_model) -> None:
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    got = xcam.GradCAM(demo_model, "block3", aug_smooth=True)(x).maps
    plain = xcam.GradCAM(demo_model, "block3")
    cls = plain(x).targets
    maps = []
    for flip in (False, True):
        for scale in (1.0, 1.25, 0.8):
            xt = x.flip(-1) if flip else x
            n = round(64 * scale)
            xt = F.interpolate(xt, size=(n, n), mode="bilinear") if scale != 1 else xt
            m = plain(xt, targets=cls).maps[:, None]
            m = F.interpolate(m, size=(64, 64), mode="bilinear")[:, 0] if scale != 1 else m[:, 0]
            maps.append(m.flip(-1) if flip else m)
    ref = torch.stack(maps).mean(0)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    assert torch.allclose(got, ref, atol=1e-5)


def test_batching_options_are_checked(demo_model) -> None:
    for bad in (0, -3, True):
        with pytest.raises(xcam.XCamError, match="batch_size"):
            xcam.ScoreCAM(demo_model, "block3", batch_size=bad)
    with pytest.raises(xcam.XCamError, match="layers"):
        xcam.FullGrad(demo_model, "block3")
    with pytest.raises(xcam.XCamError, match="eager"):
        xcam.FullGrad(demo_model, backend="onnxruntime")


def test_scorecam_chunks_are_independent_of_batch_size(demo_model) -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    a = xcam.ScoreCAM(demo_model, "block3", batch_size=1)(x)
    b = xcam.ScoreCAM(demo_model, "block3", memory_budget=1 << 20)(x)
    c = xcam.ScoreCAM(demo_model, "block3")(x)
    assert torch.allclose(a.maps, c.maps, atol=1e-5) and torch.allclose(b.maps, c.maps, atol=1e-5)


def test_registry_and_top_level_names() -> None:
    expected = {
        "CAM": "cam",
        "GradCAM": "gradcam",
        "GradCAMPlusPlus": "gradcam++",
        "XGradCAM": "xgradcam",
        "HiResCAM": "hirescam",
        "LayerCAM": "layercam",
        "EigenCAM": "eigencam",
        "EigenGradCAM": "eigengradcam",
        "ScoreCAM": "scorecam",
        "AblationCAM": "ablationcam",
        "ReciproCAM": "reciprocam",
        "FullGrad": "fullgrad",
        "GuidedBackprop": "guidedbackprop",
        "GuidedGradCAM": "guidedgradcam",
    }
    for attr, name in expected.items():
        assert getattr(xcam, attr) is xcam.get_method(name), attr
    assert sorted(expected.values()) == xcam.list_methods()


# --- exported backends --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_onnx(demo_model, tmp_path_factory):
    import exporters

    path = tmp_path_factory.mktemp("onnx") / "demo.onnx"
    exporters.export(demo_model, ["block2", "block3"], torch.rand(1, 3, 64, 64), path)
    return xcam.load(path)


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_every_method_through_onnx_runtime_equals_eager(demo_model, demo_onnx, name) -> None:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(13))
    eager = make(name, demo_model, "block3")(x)
    onnx = make(name, demo_model, "block3", backend=demo_onnx)(x)
    assert onnx.backend == "onnx"
    assert torch.equal(onnx.targets, eager.targets)
    assert torch.allclose(onnx.maps, eager.maps, atol=1e-4), float(
        (onnx.maps - eager.maps).abs().max()
    )


@pytest.mark.parametrize("name", ["eigencam", "scorecam"])
def test_gradient_free_methods_run_on_the_file_alone(demo_model, demo_onnx, name) -> None:
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(14))
    alone = xcam.get_method(name)(demo_onnx, "block3")(x)
    eager = xcam.get_method(name)(demo_model, "block3")(x)
    assert torch.allclose(alone.maps, eager.maps, atol=1e-4)


@pytest.mark.parametrize("name", ["ablationcam", "reciprocam"])
def test_tail_methods_need_the_eager_model_with_a_file(demo_onnx, name) -> None:
    with pytest.raises(xcam.XCamError, match="eager model"):
        xcam.get_method(name)(demo_onnx, "block3")(torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize("fmt,suffix", [("torchscript", ".ts"), ("pt2", ".pt2")])
def test_gradient_free_methods_through_torchscript_and_pt2(demo_model, tmp_path, fmt, suffix):
    import exporters

    path = tmp_path / f"demo{suffix}"
    example = torch.rand(1, 3, 64, 64)
    exporters.export(demo_model, ["block3"], example, path, format=fmt, aoti=False)
    backend = xcam.load(path, trust_code=True)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(15))
    for name in ("scorecam", "ablationcam", "reciprocam", "eigencam"):
        eager = xcam.get_method(name)(demo_model, "block3")(x)
        other = xcam.get_method(name)(demo_model, "block3", backend=backend)(x)
        assert torch.allclose(other.maps, eager.maps, atol=1e-4), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_give_finite_float32_eigen_maps(demo_model, dtype) -> None:
    import copy

    model = copy.deepcopy(demo_model).to(dtype)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(16)).to(dtype)
    ref = xcam.EigenCAM(demo_model, "block3")(x.float())
    for cls in (xcam.EigenCAM, xcam.EigenGradCAM):
        result = cls(model, "block3")(x)
        assert torch.isfinite(result.maps).all()
        assert float(result.maps.min()) >= 0 and float(result.maps.max()) <= 1
    got = xcam.EigenCAM(model, "block3")(x)
    assert got.maps.dtype == torch.float32  # the SVD and the map are float32
    tol = 1e-5 if dtype == torch.float64 else 0.1  # bfloat16 keeps ~3 significant digits
    assert float((got.maps - ref.maps).abs().max()) <= tol


def test_centred_eigen_projections_match_pytorch_grad_cam(demo_model) -> None:
    """Issue 12.6: ``center=True`` is the mean-subtracted projection pytorch-grad-cam's
    EigenCAM / EigenGradCAM / eigen_smooth compute (``get_2d_projection``); the default
    (the paper's, uncentred) correlates only 0.6-0.75 with it."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(21))
    _, acts = xcam.CamModel(demo_model, "block3")(x)
    peer = torch.from_numpy(get_2d_projection(acts.detach().numpy()))
    ours = first_component(acts.detach(), center=True)
    for a, b in zip(ours, peer, strict=True):
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert abs(float(corr)) >= 0.999  # the same up to an SVD's arbitrary sign
    # the option reaches every eigen path and is part of the method's settings
    for name, options in (
        ("eigencam", {}),
        ("eigengradcam", {}),
        ("gradcam", {"eigen_smooth": True}),
    ):
        plain = xcam.get_method(name)(demo_model, "block3", **options)
        centred = xcam.get_method(name)(demo_model, "block3", center=True, **options)
        assert centred.settings()["center"] and not plain.settings()["center"]
        assert not torch.allclose(plain(x).maps, centred(x).maps)
    want = torch.relu(first_component(acts.detach(), center=True))
    got = xcam.EigenCAM(demo_model, "block3", center=True)(x).layer_maps["block3"]
    assert torch.allclose(got, want, atol=1e-6)


def _softmax_pair() -> tuple[nn.Module, nn.Module]:
    """A small CNN, and the same CNN (same modules) ending in Softmax."""
    torch.manual_seed(4)
    body = [
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ]
    return nn.Sequential(*body).eval(), nn.Sequential(*body, nn.Softmax(dim=1)).eval()


@pytest.mark.parametrize("name", xcam.list_methods())
def test_pre_activation_is_honoured_by_every_method(name: str) -> None:
    """Issue 12.8: with ``pre_activation=True`` a model ending in Softmax is explained as the
    same model without it. Ablation-CAM differed by 1.0, FullGrad by 0.31, Recipro-CAM by
    0.01, the guided methods by 1e-4 (their forwards never skipped the final activation)."""
    plain, probs = _softmax_pair()
    cls = xcam.get_method(name)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    args = ("3",) if cls.uses_layers else ()  # the last ReLU: GAP + Linear follow (CAM)
    want = cls(plain, *args)(x)
    got = cls(probs, *args, pre_activation=True)(x)
    assert torch.equal(got.targets, want.targets)
    assert torch.allclose(got.maps, want.maps, atol=1e-5), float((got.maps - want.maps).abs().max())


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "ablationcam"])
def test_pytorch_grad_cam_target_objects_work_unchanged(resnet18, name: str) -> None:
    """Targets as pytorch-grad-cam users bring them: a list of target objects, one per
    sample (``[ClassifierOutputTarget(281)] * 2`` was a raw "Could not infer dtype")."""
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputSoftmaxTarget,
        ClassifierOutputTarget,
    )

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(30))
    method = make(name, resnet18, "layer4")
    got = method(x, targets=[ClassifierOutputTarget(281), ClassifierOutputTarget(7)])
    want = method(x, targets=[281, 7])
    assert torch.allclose(got.maps, want.maps, atol=1e-5)
    assert torch.allclose(got.scores, want.scores, atol=1e-5)
    one = method(x, targets=[ClassifierOutputTarget(281)])  # one object serves the batch
    assert torch.allclose(one.maps, method(x, targets=281).maps, atol=1e-5)
    if name == "gradcam":  # the softmax target: the probability's gradient, as the peer's
        soft = method(x, targets=[ClassifierOutputSoftmaxTarget(281)] * 2)
        assert torch.allclose(soft.scores, resnet18(x).softmax(1)[:, 281], atol=1e-6)
    with pytest.raises(xcam.TargetError, match="3 target functions"):
        method(x, targets=[ClassifierOutputTarget(1)] * 3)


def test_target_objects_on_methods_that_rescore_variants(resnet18) -> None:
    """Score-CAM / Recipro-CAM score many variants of each sample: each variant is scored by
    its own sample's target object (a function is applied as is: the raw score)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(31))
    for name in ("scorecam", "reciprocam"):
        method = make(name, resnet18, "layer4")
        objects = method(x, targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(9)])
        first = method(x[:1], targets=lambda logits: logits[:, 3]).maps
        second = method(x[1:], targets=lambda logits: logits[:, 9]).maps
        assert torch.allclose(objects.maps, torch.cat([first, second]), atol=1e-5), name
