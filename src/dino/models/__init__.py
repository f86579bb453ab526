"""Backbones and the DINO head; ``build_backbone`` is the architecture registry."""

from __future__ import annotations

from torch import nn

from dino.models.head import DINOHead, MultiCropWrapper, WeightNormLinear, WithFeatures
from dino.models.resnet import RESNETS, resnet
from dino.models.vit import VIT_SIZES, VisionTransformer, vit

ARCHITECTURES = tuple(f"vit_{s}" for s in VIT_SIZES) + tuple(RESNETS)


def build_backbone(
    arch: str,
    patch_size: int = 16,
    img_size: int = 224,
    drop_path_rate: float = 0.0,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
) -> nn.Module:
    """A backbone by name; its ``embed_dim`` attribute gives the feature width.

    ``img_size`` sets the position-embedding grid of a ViT (other sizes are interpolated);
    ``embed_dim``/``depth``/``num_heads`` override a ViT's named size.
    """
    if arch.startswith("vit_") and arch[4:] in VIT_SIZES:
        return vit(arch[4:], patch_size, img_size, drop_path_rate, embed_dim, depth, num_heads)
    if arch in RESNETS:
        return resnet(arch)
    raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")


__all__ = [
    "ARCHITECTURES",
    "DINOHead",
    "MultiCropWrapper",
    "VisionTransformer",
    "WeightNormLinear",
    "WithFeatures",
    "build_backbone",
]
