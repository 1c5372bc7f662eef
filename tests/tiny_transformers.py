"""Small seeded vision transformers (``module:factory`` specs for CLI tests, and fixtures).

``vit``: torchvision's ``VisionTransformer`` at 64² with 8x8 patches (an 8x8 grid and a class
token), two blocks; torchvision initialises the head to zeros (every gradient would be 0),
so it is drawn at random here. ``swin``: torchvision's ``SwinTransformer`` at 64² (stages of
16x16 and 8x8, NHWC), two stages, no stochastic depth.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import SwinTransformer, VisionTransformer

SIZE = 64


def vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = VisionTransformer(
        image_size=SIZE,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model.eval()


def swin(seed: int = 0, v2: bool = False) -> nn.Module:
    """``v2``: Swin V2's blocks and patch merging (attention biased by an MLP of the
    relative positions)."""
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

    torch.manual_seed(seed)
    blocks = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    model = SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=[4, 4],
        stochastic_depth_prob=0.0,
        num_classes=10,
        **blocks,
    )
    return model.eval()
