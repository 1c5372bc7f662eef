"""Explaining never changes the caller's model, after success or after an exception."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_snapshot, inplace_net, seeded, snapshot
from torch import nn

import xcam


class Boom(RuntimeError):
    pass


class FailingHead(nn.Module):
    """A conv body whose head raises when ``fail`` is set (an error after the target layer)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(True))
        self.fc = nn.Linear(4, 3)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.body(x)
        if self.fail:
            raise Boom("head failed")
        return self.fc(a.mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "cam"])
def test_no_side_effects_after_success(method: str) -> None:
    model = seeded("resnet18").train()  # training mode: BN would update stats if run as is
    model.layer4[0].conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)  # a caller's leftover gradient
    before = snapshot(model)
    xcam.get_method(method)(model, "layer4")(torch.randn(2, 3, 64, 64))
    assert_same_snapshot(before, snapshot(model))


def test_no_side_effects_after_exception_in_model() -> None:
    model = FailingHead().train()
    model.fail = True
    before = snapshot(model)
    with pytest.raises(Boom):
        xcam.GradCAM(model, "body")(torch.randn(2, 3, 8, 8))
    assert_same_snapshot(before, snapshot(model))


def test_no_side_effects_after_exception_in_target() -> None:
    model = FailingHead().train()
    before = snapshot(model)

    def bad_target(logits: torch.Tensor) -> torch.Tensor:
        raise Boom("target failed")

    with pytest.raises(Boom):
        xcam.GradCAM(model, "body")(torch.randn(2, 3, 8, 8), targets=bad_target)
    assert_same_snapshot(before, snapshot(model))
    # the model still works, hook-free, afterwards
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 3)


def test_works_under_no_grad_and_frozen_parameters(resnet18) -> None:
    torch.manual_seed(7)
    x = torch.randn(2, 3, 64, 64)
    ref = xcam.GradCAM(resnet18, "layer3")(x)
    frozen = seeded("resnet18")
    for p in frozen.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        res = xcam.GradCAM(frozen, "layer3")(x)
    torch.testing.assert_close(res.maps, ref.maps)
    assert all(p.grad is None for p in frozen.parameters())
    assert not any(p.requires_grad for p in frozen.parameters())


def test_inplace_relu_right_after_target_layer() -> None:
    """Target = conv whose output an in-place ReLU overwrites: the map uses pre-ReLU values."""
    x = torch.randn(2, 3, 16, 16)
    ref = xcam.GradCAM(inplace_net(False), "0")(x, targets=1)
    net = inplace_net(True)
    res = xcam.GradCAM(net, "0")(x, targets=1)
    torch.testing.assert_close(res.layer_maps["0"], ref.layer_maps["0"])
    assert net[1].inplace and net[3].inplace
    # the captured activation really is the conv output (it has negative values)
    _, act = xcam.CamModel(net, ["0"])(x)
    torch.testing.assert_close(act, net[0](x))
    assert bool((act < 0).any())


def test_no_hooks_left_after_layer_error(resnet18) -> None:
    before = snapshot(resnet18)
    with pytest.raises(xcam.LayerNotFoundError):
        xcam.GradCAM(resnet18, "layer5")
    assert_same_snapshot(before, snapshot(resnet18))


def test_shared_module_called_twice_is_a_clear_error() -> None:
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean(dim=(2, 3)))

    model = Twice()
    before = snapshot(model)
    with pytest.raises(xcam.InputError, match="more than once"):
        xcam.GradCAM(model, "conv")(torch.randn(1, 3, 8, 8))
    assert_same_snapshot(before, snapshot(model))


class SmallNet(nn.Module):
    """conv-BN-ReLU(inplace) x2, GAP, Linear: small enough to run every method quickly."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=True),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


def _every_method(model: nn.Module, name: str):
    cls = xcam.get_method(name)
    return cls(model, "body") if cls.uses_layers else cls(model)


@pytest.mark.parametrize("name", xcam.list_methods())
def test_every_method_leaves_the_model_as_it_was(name: str) -> None:
    torch.manual_seed(0)
    model = SmallNet().train()
    model.body[0].weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = snapshot(model)
    result = _every_method(model, name)(torch.randn(2, 3, 12, 12))
    assert torch.isfinite(result.maps).all()
    assert_same_snapshot(before, snapshot(model))

    def bad_target(logits: torch.Tensor) -> torch.Tensor:
        raise Boom("target failed")

    if name != "cam":  # CAM reads class weights and never calls a target
        with pytest.raises(Boom):
            _every_method(model, name)(torch.randn(2, 3, 12, 12), targets=bad_target)
        assert_same_snapshot(before, snapshot(model))
