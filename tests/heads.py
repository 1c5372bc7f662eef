"""Models whose output already is a probability (``module:factory`` specs for CLI tests).

``xray``: as the X-ray classifiers of issue 12 — residual blocks, then a convolution over the
whole remaining map to one output, ``Dropout``, ``Sigmoid`` (output ``[B, 1, 1, 1]``), at a
64² input. ``functional_sigmoid`` ends in ``torch.sigmoid(...).squeeze(1)`` instead, and
``softmax_head`` in ``F.softmax``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class Features(nn.Module):
    """64² -> 8x8x32: a strided stem and three residual blocks."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.block1 = Block(16, 16, 1)
        self.block2 = Block(16, 32, 2)
        self.block3 = Block(32, 32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block3(self.block2(self.block1(self.stem(x))))


class XRay(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = Features()
        self.head = nn.Conv2d(32, 1, 8)  # the whole 8x8 map to one logit
        self.drop = nn.Dropout(0.5)
        self.act = nn.Sigmoid()

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.head(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.logit(x))


class FunctionalSigmoid(XRay):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(x).flatten(1)).squeeze(1)[:, None]


class SoftmaxHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = Features()
        self.fc = nn.Linear(32, 4)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.logit(x), dim=1)


def _seeded(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = cls()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def calibrate(model: XRay, x: torch.Tensor, logits: list[float]) -> XRay:
    """Scale the head so that the two inputs of ``x`` get exactly ``logits`` (z = a f + b)."""
    with torch.no_grad():
        head = model.head
        f = head(model.features(x)).flatten() - head.bias
        a = (logits[0] - logits[1]) / float(f[0] - f[1])
        head.weight.mul_(a)
        head.bias.fill_(logits[0] - a * float(f[0]))
    return model


def xray() -> nn.Module:
    return _seeded(XRay)


def functional_sigmoid() -> nn.Module:
    return _seeded(FunctionalSigmoid)


def softmax_head() -> nn.Module:
    return _seeded(SoftmaxHead)
