"""Shared fixtures: fixed-weight toy nets, seeded torchvision models, model-state snapshots."""

from __future__ import annotations

import contextlib
import copy
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn


class ToyNet(nn.Module):
    """A_0 = x, A_1 = -x (1x1 conv, fixed), then GAP + Linear with fixed W (no bias)."""

    def __init__(self, w: list[list[float]] | None = None):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor(w or [[1.0, 2.0], [3.0, -1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


class SpatialHeadNet(nn.Module):
    """Same conv; a single logit = sum_ij V_ij A0_ij + U_ij A1_ij (not pooled-linear)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.fc = nn.Linear(12, 1, bias=False)
        v = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 5.0]])  # mean 1
        u = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 0.0]])  # mean 0.5
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.cat([v.flatten(), u.flatten()])[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x), 1))


# the input of the hand computations
TOY_X = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 4.0]]).view(1, 1, 2, 3)


@contextlib.contextmanager
def importable(folder: Path, name: str, source: str) -> Iterator[Path]:
    """``source`` written to ``folder/<name>.py`` and importable as ``name`` (a
    ``module:factory`` spec for the CLI) within the block."""
    (folder / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)


@pytest.fixture()
def runner():
    from click.testing import CliRunner

    return CliRunner()


def seeded(name: str, seed: int = 0, **kwargs) -> nn.Module:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def replicating() -> nn.Module:
    """AlexNet / VGG at a small input in small: the features end at 1x1 and layer ``"3"``
    (an ``AdaptiveAvgPool2d``) copies that one position to 3x3 for the classifier."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(8 * 9, 4),
    ).eval()


def shallow(name: str, seed: int = 0) -> nn.Module:
    """A seeded torchvision family built with one block per stage (torchvision's own
    classes and blocks, so the same ops reach the exporters): an export's time grows with the
    number of ops, and a family's ops are all in its first block. The full-depth models are
    covered by ``benchmarks/coverage.py``. Stage names are the full model's."""
    from torchvision.models import (
        ConvNeXt,
        DenseNet,
        EfficientNet,
        MobileNetV2,
        MobileNetV3,
        RegNet,
    )
    from torchvision.models.convnext import CNBlockConfig
    from torchvision.models.efficientnet import _efficientnet_conf
    from torchvision.models.mobilenetv3 import _mobilenet_v3_conf
    from torchvision.models.regnet import BlockParams

    torch.manual_seed(seed)
    if name == "densenet121":  # (6, 12, 24, 16) dense layers per block
        return DenseNet(32, (2, 2, 2, 2), 64).eval()
    if name == "mobilenet_v2":  # [expansion, channels, blocks, stride] per stage
        stages = [(1, 16, 1), (6, 24, 2), (6, 32, 2), (6, 64, 2), (6, 96, 1), (6, 160, 2)]
        setting = [[t, c, 1, s] for t, c, s in [*stages, (6, 320, 1)]]
        return MobileNetV2(inverted_residual_setting=setting).eval()
    if name == "convnext_tiny":  # (3, 3, 9, 3) blocks per stage
        widths = [(96, 192), (192, 384), (384, 768), (768, None)]
        return ConvNeXt([CNBlockConfig(c, n, 1) for c, n in widths]).eval()
    if name == "mobilenet_v3_small":  # its 11 blocks less those that repeat a shape
        setting, last = _mobilenet_v3_conf("mobilenet_v3_small")
        return MobileNetV3([setting[i] for i in (0, 1, 3, 6, 8)], last).eval()
    if name == "efficientnet_b0":
        setting, last = _efficientnet_conf("efficientnet_b0", width_mult=1.0, depth_mult=1.0)
        for stage in setting:
            stage.num_layers = 1
        return EfficientNet(setting, 0.2, last_channel=last).eval()
    if name == "regnet_y_400mf":  # regnet_y_400mf's widths, (1, 3, 6, 6) blocks per stage
        params = BlockParams([1, 1, 1, 1], [48, 104, 208, 440], [8] * 4, [1.0] * 4, [2] * 4, 0.25)
        return RegNet(params).eval()
    raise KeyError(name)


@pytest.fixture(scope="session")
def resnet18() -> nn.Module:
    return seeded("resnet18")


@pytest.fixture(scope="session")
def demo_model() -> nn.Module:
    from xcam.demo import load_demo_model

    return load_demo_model()


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    """A folder with three of the demo's sample images."""
    from xcam.demo import sample_images

    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sample_images()[:3]:
        shutil.copy(p, folder / p.name)
    return folder


def snapshot(model: nn.Module) -> dict:
    """Everything explaining must leave as it was."""
    mods = list(model.modules())
    return {
        "training": [m.training for m in mods],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [
            (
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(m._backward_pre_hooks),
            )
            for m in mods
        ],
        "inplace": [getattr(m, "inplace", None) for m in mods],
        "state": copy.deepcopy(model.state_dict()),
    }


def assert_same_snapshot(a: dict, b: dict) -> None:
    for key in ("training", "requires_grad", "hooks", "inplace"):
        assert a[key] == b[key], key
    for ga, gb in zip(a["grad"], b["grad"], strict=True):
        assert (ga is None and gb is None) or torch.equal(ga, gb)
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``gpu`` skip, with the reason, where no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def inplace_net(inplace: bool) -> nn.Module:
    torch.manual_seed(8)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).eval()


class AroundNet(nn.Module):
    """The output needs the input itself besides ``body``: the tail can't be cut, so the
    fallback (the whole model with ``body``'s output replaced) runs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.body(torch.relu(self.stem(x))))
        return self.fc(a.mean(dim=(2, 3))) + x.mean(dim=(1, 2, 3))[:, None]


@pytest.fixture(scope="session")
def grad_file(tmp_path_factory) -> Path:
    """The demo model exported with in-graph gradients, a target input and its class names
    (served by ``xcam.lite`` without torch), once for the whole run."""
    from serving import export_demo

    return export_demo(tmp_path_factory.mktemp("ingraph") / "demo_grad.onnx")
