"""Layer references and the method registry."""

from __future__ import annotations

import pytest
import torch
from conftest import replicating
from torch import nn

import xcam
from xcam.core.layers import candidate_layers, default_layer, resolve_layers
from xcam.methods import register_method
from xcam.methods.base import BaseCAM


def test_dotted_names_and_modules(resnet18) -> None:
    ((name, module),) = resolve_layers(resnet18, "layer4.1.conv2")
    assert name == "layer4.1.conv2" and module is resnet18.layer4[1].conv2
    ((name, _),) = resolve_layers(resnet18, resnet18.layer2)
    assert name == "layer2"


@pytest.mark.parametrize(
    "bad,expected",
    [("layer5", "layer4"), ("layr4", "layer4"), ("layer4.1.conv9", "layer4.1.conv2")],
)
def test_wrong_name_lists_closest(resnet18, bad: str, expected: str) -> None:
    with pytest.raises(xcam.LayerNotFoundError) as info:
        resolve_layers(resnet18, bad)
    assert expected in str(info.value) and repr(bad) in str(info.value)


def test_module_not_in_model(resnet18) -> None:
    with pytest.raises(xcam.LayerNotFoundError, match="not part of the model"):
        resolve_layers(resnet18, nn.Conv2d(1, 1, 1))


def test_duplicate_layer_is_an_error(resnet18) -> None:
    with pytest.raises(xcam.LayerNotFoundError, match="twice"):
        resolve_layers(resnet18, ["layer4", resnet18.layer4])


def test_default_layer_is_last_spatial(resnet18, demo_model) -> None:
    assert default_layer(resnet18, torch.zeros(1, 3, 64, 64)) == "layer4"
    assert default_layer(demo_model, torch.zeros(1, 3, 64, 64)) == "block3"


def test_a_layer_that_repeats_one_position_is_not_the_default() -> None:
    model = replicating()
    for example in (torch.zeros(1, 3, 16, 16), torch.randn(3, 3, 16, 16)):
        infos = {i.name: i for i in candidate_layers(model, example)}
        assert infos["3"].grid == (3, 3) and infos["3"].replicated and not infos["3"].spatial
        assert infos["1"].spatial and not infos["1"].replicated
        assert default_layer(model, example) == "1"  # the last map whose positions differ
    assert xcam.GradCAM(model)(torch.randn(2, 3, 16, 16)).layers == ["1"]


def test_candidate_layers_shapes(demo_model) -> None:
    infos = {i.name: i for i in candidate_layers(demo_model, torch.zeros(1, 3, 64, 64))}
    assert infos["block1"].shape == (1, 16, 32, 32)
    assert infos["block3"].shape == (1, 64, 16, 16)
    assert infos["pool"].shape == (1, 64, 1, 1) and not infos["pool"].spatial


def test_registry() -> None:
    assert {"cam", "gradcam"} <= set(xcam.list_methods())
    assert xcam.get_method("gradcam") is xcam.GradCAM
    assert xcam.get_method("Grad-CAM") is xcam.GradCAM
    assert xcam.get_method("CAM") is xcam.CAM
    with pytest.raises(xcam.XCamError, match=r"available: .*gradcam"):
        xcam.get_method("gradcam++++")


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(xcam.XCamError, match="already registered"):

        @register_method
        class Impostor(BaseCAM):
            name = "grad_cam"

    with pytest.raises(xcam.XCamError, match="no name"):

        @register_method
        class Nameless(BaseCAM):
            pass


def test_wrong_types_for_layers_and_method_names_are_clear_errors(demo_model) -> None:
    with pytest.raises(xcam.LayerNotFoundError, match=r"got 123 \(int\)"):
        xcam.GradCAM(demo_model, 123)
    with pytest.raises(xcam.XCamError, match=r"named by a string, got 123 \(int\)"):
        xcam.get_method(123)


def test_a_model_that_takes_one_sample_is_probed_with_one() -> None:
    class OneAtATime(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4 * 14 * 14, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).view(1, -1))

    model = OneAtATime().eval()
    infos = candidate_layers(model, torch.zeros(1, 3, 16, 16))
    assert [(i.name, i.shape) for i in infos] == [("conv", (1, 4, 14, 14))]
    assert default_layer(model, torch.zeros(1, 3, 16, 16)) == "conv"


def test_xcam_layers_marks_a_repeated_position(runner) -> None:
    from xcam.cli import main

    res = runner.invoke(main, ["layers", "torchvision:alexnet", "--input-size", "64"])
    assert res.exit_code == 0, res.output
    lines = {line[2:].split()[0]: line for line in res.output.splitlines()[1:] if line[2:]}
    assert "one position repeated" in lines["avgpool"] and lines["avgpool"].startswith(" ")
    assert lines["features.11"].startswith("*")  # the last ReLU, 1x1 after its max-pool: 3x3
