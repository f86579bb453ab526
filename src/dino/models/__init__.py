"""Backbones and the DINO head. Architectures are built by name from one registry:
``dino.architectures`` declares each name and its contract (torch-free, so that
configuration checks need no torch); ``FACTORIES`` here builds each family."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dino.architectures import ARCHITECTURES, Architecture, BackboneSpec, architecture
from dino.models.head import DINOHead, MultiCropWrapper, WeightNormLinear, WithFeatures
from dino.models.resnet import resnet
from dino.models.timm_backbone import timm_backbone
from dino.models.vit import VisionTransformer, vit

# family -> the function that builds an entry of it (spec, drop_path_rate) -> backbone
FACTORIES: dict[str, Callable[[BackboneSpec, float], nn.Module]] = {
    "vit": vit,
    "resnet": resnet,
    "timm": timm_backbone,
}


def build_from_spec(spec: BackboneSpec, drop_path_rate: float = 0.0) -> nn.Module:
    """The backbone ``spec`` describes, built by the factory of its architecture's family;
    its features are ``spec.feature_dim`` wide."""
    return FACTORIES[spec.entry.family](spec, drop_path_rate)


def build_backbone(
    arch: str,
    patch_size: int | None = None,
    img_size: int | None = None,
    drop_path_rate: float = 0.0,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    in_chans: int = 3,
) -> nn.Module:
    """A backbone by name (see ``ARCHITECTURES``; an unknown name raises a ValueError that
    lists them).

    ``img_size`` sets the position-embedding grid of a ViT (other sizes are interpolated);
    ``patch_size``, ``img_size``, ``embed_dim``, ``depth`` and ``num_heads`` default to the
    named entry's (16 and 224 for every ViT); ``in_chans`` is the number of image channels.
    """
    spec = BackboneSpec(arch, patch_size, img_size, embed_dim, depth, num_heads, in_chans)
    return build_from_spec(spec, drop_path_rate)


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "BackboneSpec",
    "DINOHead",
    "FACTORIES",
    "MultiCropWrapper",
    "VisionTransformer",
    "WeightNormLinear",
    "WithFeatures",
    "architecture",
    "build_backbone",
    "build_from_spec",
]
