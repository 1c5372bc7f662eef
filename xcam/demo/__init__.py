"""The bundled demo model: a small CNN trained by ``python -m xcam.demo.train`` on the
synthetic shapes of :mod:`xcam.demo.data` (no downloaded weights anywhere).

Its head is global average pooling then one linear layer, so CAM applies as well as
Grad-CAM; ``block1``..``block3`` are its three conv stages (32², 16², 16² at 64² input).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

CLASSES = ["circle", "square", "triangle", "cross"]
INPUT_SIZE = (64, 64)
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def _stage(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class DemoNet(nn.Module):
    """Three conv stages, global average pooling, one linear classifier."""

    def __init__(self, num_classes: int = len(CLASSES), width: int = 16):
        super().__init__()
        self.block1 = _stage(3, width, pool=True)
        self.block2 = _stage(width, 2 * width, pool=True)
        self.block3 = _stage(2 * width, 4 * width, pool=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _asset(name: str) -> Path:
    return Path(str(resources.files("xcam.demo").joinpath(name)))


def weights_path() -> Path:
    return _asset("weights.pt")


def sample_images() -> list[Path]:
    """The sample PNGs shipped with the package, sorted by name."""
    return sorted(_asset("samples").glob("*.png"))


@cache
def model_card() -> dict[str, Any]:
    """Training facts and held-out figures written by the training script."""
    path = _asset("model_card.json")
    return json.loads(path.read_text()) if path.exists() else {}


def load_demo_model(device: str | torch.device = "cpu") -> DemoNet:
    """The trained demo model, in eval mode, on ``device``."""
    path = weights_path()
    if not path.exists():
        raise FileNotFoundError(
            f"demo weights missing at {path}; run `python -m xcam.demo.train` to make them"
        )
    model = DemoNet()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().to(device)
