"""Small seeded stand-ins for the models that the documentation's examples name (README.md,
docs/*.md), so that ``tests/test_doc_pages.py`` runs those examples offline and in seconds.

Each has the layer names, the output and the head of what it stands for, at a fraction of the
size: ``ten`` for the resnet50 exported as ``r50_cam.onnx`` (10 classes, a ``layer4`` before
global average pooling and one linear layer); ``xray`` a one-channel classifier;
``my_model`` a ViT of one's own (``blocks.11.norm1`` with a class token, then a channels-last
``stage4``); ``swin`` torchvision's Swin with four stages (``features.7``, NHWC);
``chestxray`` four independent sigmoid labels; ``deeplab`` torchvision's DeepLabV3 on
MobileNetV3 (21 classes, ``"out"``); ``detector`` torchvision's RetinaNet at 64², its
class-1 scores biased so that it finds boxes; ``vit_b_16`` torchvision's own, with the head
drawn at random (torchvision initialises it to zeros, so every gradient would be 0).

``offline(factory)`` is a builder that takes ``weights=`` and ignores it: examples that load
``weights="IMAGENET1K_V1"`` or ``weights=...`` (yours) get the seeded model instead of a
download. The ``mypkg.nets:NAME`` specs of the command-line examples import from here.
"""

from __future__ import annotations

import torch
from heads import Features
from torch import nn
from torchvision.models import SwinTransformer
from torchvision.models import vit_b_16 as _vit_b_16
from torchvision.models.detection import retinanet_resnet50_fpn
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

# the builders are imported here, before an example replaces them with offline(...)


def offline(factory):
    """A torchvision-style builder that makes ``factory()`` whatever ``weights=`` says."""

    def build(*args, weights=None, **kwargs):
        return factory()

    return build


class Ten(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layer4(self.stem(x))), 1))


def ten() -> nn.Module:
    torch.manual_seed(0)
    return Ten().eval()


def xray() -> nn.Module:
    """One input channel (grey images), two classes."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    ).eval()


class Block(nn.Module):
    """A pre-norm transformer block, named as timm's (``norm1``, ``attn``, ``norm2``, ``mlp``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class Stage(nn.Module):
    """Channels-last ``[B, h, w, C]`` in and out."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(self.norm(x))


class MyModel(nn.Module):
    """32x32 patches and a class token, 12 blocks, then the grid tokens laid out channels-last
    through ``stage4``, pooled to 10 classes (224² in: a 7x7 grid)."""

    def __init__(self, dim: int = 32, patch: int = 32):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim) for _ in range(12)])
        self.stage4 = Stage(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch(x)  # [B, C, h, w]
        b, c, h, w = p.shape
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), p.flatten(2).transpose(1, 2)], 1)
        grid = self.blocks(tokens)[:, 1:].reshape(b, h, w, c)
        return self.head(self.stage4(grid).mean(dim=(1, 2)))


def my_model() -> nn.Module:
    torch.manual_seed(0)
    return MyModel().eval()


def vit() -> nn.Module:
    """The ``mypkg.nets:vit`` of the command line: a ViT of one's own, as ``my_model``."""
    return my_model()


def swin() -> nn.Module:
    """torchvision's Swin, one block per stage, 8 channels at the first: ``features.7`` is the
    last stage's ``[B, 7, 7, 64]`` at 224²."""
    torch.manual_seed(0)
    return SwinTransformer(
        patch_size=[4, 4],
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 2],
        window_size=[7, 7],
        stochastic_depth_prob=0.0,
        num_classes=10,
    ).eval()


def vit_b_16() -> nn.Module:
    torch.manual_seed(0)
    model = _vit_b_16(weights=None)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model.eval()


class ChestXRay(nn.Module):
    """Four independent findings: residual features (``features.block3``), one sigmoid each."""

    def __init__(self):
        super().__init__()
        self.features = Features()
        self.fc = nn.Linear(32, 4)
        self.act = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(self.features(x).mean(dim=(2, 3))))


def chestxray() -> nn.Module:
    torch.manual_seed(0)
    model = ChestXRay()
    with torch.no_grad():  # labels 0 and 2 present, 1 and 3 absent
        model.fc.bias.copy_(torch.tensor([2.0, -2.0, 1.0, -1.0]))
    return model.eval()


def deeplab() -> nn.Module:
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=False
    )
    # batch norms' statistics from a few random images (a random MobileNet's features
    # otherwise fade to nothing by its last stage, and every gradient with them)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(99)))
        model.classifier[-1].bias[15] = 0.5  # class 15 ("person") covers part of an image
    return model.eval()


def detector() -> nn.Module:
    torch.manual_seed(0)
    model = retinanet_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        min_size=64,
        max_size=64,
        detections_per_img=4,
    ).eval()
    with torch.no_grad():  # RetinaNet's logits: [anchors x classes] channels, sigmoid scores
        model.head.classification_head.cls_logits.bias[1::5] = 3.0
    return model


class TritonStandIn:
    """``tritonclient.grpc.InferenceServerClient`` for the examples, without a server: what
    a Triton server does with a model repository written by ``xcam export --triton-repo`` —
    parse ``config.pbtxt`` with Triton's own schema, check each input's name, data type and
    dims (after the batch) against it, apply its ``reshape``, run ``1/model.onnx`` in ONNX
    Runtime and return the outputs asked for."""

    def __init__(self, url: str, repository: str = "models") -> None:
        self.url, self.repository = url, repository

    def infer(self, model_name: str, inputs, outputs=None):
        from pathlib import Path

        import numpy as np
        import onnxruntime as ort
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
        from tritonclient.utils import triton_to_np_dtype

        folder = Path(self.repository) / model_name
        config = text_format.Parse(
            (folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        declared = {i.name: i for i in config.input}
        feed = {}
        for given in inputs:
            spec = declared[given.name()]
            kind = model_config_pb2.DataType.Name(spec.data_type).removeprefix("TYPE_")
            assert given.datatype() == kind, (given.name(), given.datatype(), kind)
            shape = given.shape()
            assert list(shape[1:]) == list(spec.dims), (given.name(), shape, spec.dims)
            value = np.frombuffer(given._raw_content, triton_to_np_dtype(kind)).reshape(shape)
            if spec.HasField("reshape"):
                value = value.reshape(shape[0], *spec.reshape.shape)
            feed[given.name()] = value
        session = ort.InferenceSession(str(folder / "1" / "model.onnx"))
        names = [o.name() for o in outputs] if outputs else [o.name for o in config.output]
        found = dict(zip(names, session.run(names, feed), strict=True))

        class Result:
            def as_numpy(self, name: str):
                return found[name]

        return Result()
