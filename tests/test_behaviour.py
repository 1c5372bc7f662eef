"""Orientation, batch invariance, targets, degenerate maps, multi-layer fusion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xcam


class TwoPatchNet(nn.Module):
    """Stride-2 channel-wise averaging conv, GAP, identity Linear: class k reads channel k."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, stride=2, padding=1, groups=2, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 9)
            self.fc.weight.copy_(torch.eye(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


def test_orientation_oracle_non_square() -> None:
    """Class 0 reads a patch at the top right, class 1 one at the bottom left; H != W."""
    x = torch.zeros(1, 2, 40, 64)
    x[0, 0, 4:12, 44:58] = 1.0  # top right, channel 0
    x[0, 1, 28:36, 6:18] = 1.0  # bottom left, channel 1
    net = TwoPatchNet()
    for cls, (rows, cols) in {0: ((4, 12), (44, 58)), 1: ((28, 36), (6, 18))}.items():
        res = xcam.GradCAM(net, "conv")(x, targets=cls)
        assert res.maps.shape == (1, 40, 64)
        peak = int(res.maps[0].flatten().argmax())
        r, c = divmod(peak, 64)
        assert rows[0] <= r < rows[1] and cols[0] <= c < cols[1], (cls, r, c)


@pytest.mark.parametrize("model_name,layer", [("demo_model", "block3"), ("resnet18", "layer3")])
def test_batch_equals_per_sample(model_name: str, layer: str, request) -> None:
    model = request.getfixturevalue(model_name)
    torch.manual_seed(4)
    x = torch.randn(3, 3, 64, 72)
    method = xcam.GradCAM(model, layer)
    batched = method(x)
    for i in range(3):
        single = method(x[i : i + 1])
        torch.testing.assert_close(batched.maps[i], single.maps[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            batched.layer_maps[layer][i], single.layer_maps[layer][0], atol=1e-6, rtol=1e-4
        )
        assert batched.targets[i] == single.targets[0]


def test_maps_in_unit_range_and_input_size(demo_model) -> None:
    res = xcam.GradCAM(demo_model)(torch.randn(2, 3, 64, 64))
    assert res.maps.shape == (2, 64, 64)
    assert float(res.maps.min()) >= 0.0 and float(res.maps.max()) <= 1.0
    assert not bool(res.maps.isnan().any())
    assert res.layers == ["block3"]  # the default: last layer with a spatial output


def test_zero_gradient_gives_zeros_and_a_flag(demo_model) -> None:
    x = torch.randn(2, 3, 64, 64)
    for target in (lambda logits: logits[:, 0] * 0.0, lambda logits: torch.zeros(len(logits))):
        res = xcam.GradCAM(demo_model, "block3")(x, targets=target)
        assert bool(res.degenerate.all())
        assert torch.equal(res.maps, torch.zeros_like(res.maps))


def test_callable_target_regression(demo_model) -> None:
    """A callable score (e.g. one output of a regressor) equals the matching class index."""
    x = torch.randn(2, 3, 64, 64)
    by_fn = xcam.GradCAM(demo_model, "block3")(x, targets=lambda logits: logits[:, 2])
    by_idx = xcam.GradCAM(demo_model, "block3")(x, targets=2)
    torch.testing.assert_close(by_fn.maps, by_idx.maps)
    assert callable(by_fn.targets)


def test_per_sample_targets(demo_model) -> None:
    x = torch.randn(3, 3, 64, 64)
    res = xcam.GradCAM(demo_model, "block3")(x, targets=torch.tensor([0, 1, 3]))
    assert res.targets.tolist() == [0, 1, 3]
    one = xcam.GradCAM(demo_model, "block3")(x, targets=[2])  # length 1 broadcasts
    assert one.targets.tolist() == [2, 2, 2]


@pytest.mark.parametrize(
    "targets,match",
    [
        (7, "out of range for 4 classes"),
        (-1, "out of range"),
        ([0, 1], "2 targets given for a batch of 3"),
        ([[0], [1], [2]], "1-D"),
        ("positive", "single-logit"),
        (lambda logits: logits, r"one score per sample"),
        (1.5, "1-D list or tensor of ints"),
    ],
)
def test_bad_targets_are_clear_errors(demo_model, targets, match: str) -> None:
    with pytest.raises(xcam.TargetError, match=match):
        xcam.GradCAM(demo_model, "block3")(torch.randn(3, 3, 64, 64), targets=targets)


@pytest.mark.parametrize(
    "x,match",
    [
        (torch.randn(3, 64, 64).numpy(), "torch.Tensor"),
        (torch.randn(64, 64), r"\[B, C, H, W\]"),
        (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
        (torch.full((1, 3, 64, 64), float("inf")), "NaN or infinite"),
        (torch.zeros(0, 3, 64, 64), "empty"),
        (torch.randn(3, 64, 64), r"3-D \(3, 64, 64\).*unsqueeze\(0\)"),
        (torch.randn(1, 64, 64, 3), r"channels-last \(NHWC\).*permute\(0, 3, 1, 2\)"),
        (torch.randn(1, 1, 64, 64), "has 1 channels; the model's first convolution takes 3"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.bool), "real number"),
    ],
)
def test_bad_inputs_are_clear_errors(demo_model, x, match: str) -> None:
    with pytest.raises(xcam.InputError, match=match):
        xcam.GradCAM(demo_model, "block3")(x)


def test_the_finiteness_check_finds_one_bad_value_and_passes_huge_finite_ones() -> None:
    """check_input tests a sum first (cheap): one NaN or inf anywhere is still found, and
    finite values whose sum overflows are not mistaken for infinite ones."""
    from xcam.core.inputs import check_input

    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.zeros(2, 3, 32, 32)
        x[1, 2, 31, 5] = bad
        with pytest.raises(xcam.InputError, match="NaN or infinite"):
            check_input(x)
    both = torch.zeros(1, 3, 8, 8)
    both[0, 0, 0, 0], both[0, 1, 0, 0] = float("inf"), -float("inf")  # the sum is NaN
    with pytest.raises(xcam.InputError, match="NaN or infinite"):
        check_input(both)
    huge = torch.full((1, 3, 8, 8), 3e38)  # finite, but its sum is inf in float32
    assert check_input(huge) is huge
    half = torch.full((1, 3, 64, 64), 60000.0, dtype=torch.float16)  # its sum overflows fp16
    assert check_input(half) is half


def test_float64_uint8_and_non_contiguous_inputs_are_handled(demo_model) -> None:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    cam = xcam.GradCAM(demo_model, "block3")
    ref = cam(x)
    assert torch.allclose(cam(x.double()).maps, ref.maps, atol=1e-5)  # cast to the model's dtype
    strided = torch.rand(2, 3, 64, 128)[..., ::2]  # a non-contiguous view
    assert not strided.is_contiguous()
    assert torch.allclose(cam(strided).maps, cam(strided.contiguous()).maps)
    raw = (x * 255).to(torch.uint8)
    with pytest.warns(UserWarning, match="not rescaled"):
        got = cam(raw)
    assert torch.allclose(got.maps, cam(raw.float()).maps)


def test_multi_layer_fusion(resnet18) -> None:
    torch.manual_seed(5)
    x = torch.randn(2, 3, 64, 64)
    fused = xcam.GradCAM(resnet18, ["layer3", "layer4"])(x)
    assert list(fused.layer_maps) == ["layer3", "layer4"]
    assert fused.layer_maps["layer3"].shape == (2, 4, 4)
    assert fused.layer_maps["layer4"].shape == (2, 2, 2)
    # each layer's map equals the single-layer run (gradients through layer4 reach layer3)
    for name in ("layer3", "layer4"):
        single = xcam.GradCAM(resnet18, name)(x, targets=fused.targets)
        torch.testing.assert_close(fused.layer_maps[name], single.layer_maps[name])
    assert float(fused.maps.max()) == pytest.approx(1.0)


def test_layer_given_as_module(resnet18) -> None:
    torch.manual_seed(6)
    x = torch.randn(1, 3, 64, 64)
    by_obj = xcam.GradCAM(resnet18, resnet18.layer4)(x)
    by_name = xcam.GradCAM(resnet18, "layer4")(x)
    torch.testing.assert_close(by_obj.maps, by_name.maps)
    assert by_obj.layers == ["layer4"]


@pytest.mark.gpu
def test_inputs_follow_the_model_device(demo_model) -> None:
    x = torch.rand(1, 3, 64, 64)
    res = xcam.GradCAM(demo_model, "block3")(x.cuda())  # a CUDA input to a CPU model
    assert res.maps.device.type == "cpu"
    assert torch.allclose(res.maps, xcam.GradCAM(demo_model, "block3")(x).maps)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["gradcam", "scorecam", "layercam"])
def test_half_precision_models_give_finite_float32_maps(demo_model, dtype, name) -> None:
    import copy

    model = copy.deepcopy(demo_model).to(dtype)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    res = xcam.get_method(name)(model, "block3")(x)  # a float32 input is cast to the model's
    assert res.maps.dtype == torch.float32 and torch.isfinite(res.maps).all()
    ref = xcam.get_method(name)(demo_model, "block3")(x)
    assert float((res.maps - ref.maps).abs().mean()) < 0.05  # same picture, lower precision


def test_train_mode_model_is_explained_in_eval_mode_and_restored(demo_model) -> None:
    import copy

    model = copy.deepcopy(demo_model).train()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    res = xcam.GradCAM(model, "block3")(x)
    assert model.training and all(m.training for m in model.modules())
    assert torch.allclose(res.maps, xcam.GradCAM(demo_model, "block3")(x).maps, atol=1e-6)


def test_final_softmax_warns_and_pre_activation_explains_the_logit(demo_model) -> None:
    model = torch.nn.Sequential(demo_model, torch.nn.Softmax(dim=1)).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with pytest.warns(UserWarning, match="ends in Softmax.*pre_activation=True"):
        xcam.GradCAM(model, "0.block3")
    pre = xcam.GradCAM(model, "0.block3", pre_activation=True)(x)
    ref = xcam.GradCAM(demo_model, "block3")(x)
    assert torch.allclose(pre.maps, ref.maps, atol=1e-6)
    assert torch.allclose(pre.logits, ref.logits, atol=1e-6)  # the scores before the softmax
    assert model(x).sum(1).allclose(torch.ones(2))  # the model itself is unchanged
    # issue 12.2: pre_activation reaches the export (it used to be refused with a backend)
    exported = xcam.GradCAM(model, "0.block3", backend="onnxruntime", pre_activation=True)(x)
    assert torch.allclose(exported.maps, ref.maps, atol=1e-4)
    assert torch.allclose(exported.logits, ref.logits, atol=1e-4)


def test_data_parallel_is_unwrapped_with_a_note(demo_model) -> None:
    wrapped = torch.nn.DataParallel(demo_model)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with pytest.warns(UserWarning, match="DataParallel unwrapped"):
        cam = xcam.GradCAM(wrapped, "module.block3")
    assert cam.layers == ["block3"]
    assert torch.allclose(cam(x).maps, xcam.GradCAM(demo_model, "block3")(x).maps)


def test_tuple_output_error_shows_the_structure(demo_model) -> None:
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = demo_model

        def forward(self, x):
            y = self.net(x)
            return y, {"aux": y.sum()}

    with pytest.raises(xcam.TargetError, match=r"0: Tensor\[1, 4\], 1: dict.*output=INDEX"):
        xcam.GradCAM(Two(), "net.block3")(torch.rand(1, 3, 64, 64))
    res = xcam.GradCAM(Two(), "net.block3", output=0)(torch.rand(1, 3, 64, 64))
    assert res.maps.shape == (1, 64, 64)


def test_googlenet_aux_outputs_in_train_mode() -> None:
    from conftest import seeded

    model = seeded("googlenet", aux_logits=True, init_weights=True).train()
    assert isinstance(model(torch.rand(2, 3, 64, 64)), tuple)  # train mode: aux outputs
    res = xcam.GradCAM(model, "inception5b")(torch.rand(1, 3, 64, 64))  # eval: logits only
    assert res.maps.shape == (1, 64, 64) and model.training
