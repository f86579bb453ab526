"""The backbone architectures by name, and what each promises, without importing torch.

One registry serves configuration checks (``dino train --arch``, which must answer
``--help`` without torch), ``dino.models.build_backbone`` (which builds an entry with the
factory of its family) and checkpoint loading (``dino.eval.load``). An entry declares
its contract: the width of the features its ``forward`` returns, whether inputs are cut
into patches (and so must be multiples of the patch size), and the input side its
published weights were trained at.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    """A named backbone: ``forward`` maps images (B, 3, H, W) to features (B, embed_dim)."""

    name: str
    family: str  # "vit" or "resnet": which factory of dino.models builds it
    embed_dim: int  # feature width
    depth: int | None = None  # ViT blocks; None where the family has no such knob
    num_heads: int | None = None
    patch_size: int | None = None  # default ViT patch; None: any input side works
    image_size: int = 224  # input side of the published weights (a ViT's position grid)

    @property
    def patched(self) -> bool:
        """Inputs are cut into ``patch_size`` patches (sides must be multiples of it)."""
        return self.patch_size is not None

    def feature_dim(self, embed_dim: int | None = None) -> int:
        """The feature width of this backbone built with a ViT width override ``embed_dim``
        (which the other families ignore)."""
        return (embed_dim or self.embed_dim) if self.patched else self.embed_dim


_ENTRIES = (  # ViT sizes as in DeiT and DINO section 3.2; ResNets as in torchvision
    Architecture("vit_tiny", "vit", 192, depth=12, num_heads=3, patch_size=16),
    Architecture("vit_small", "vit", 384, depth=12, num_heads=6, patch_size=16),
    Architecture("vit_base", "vit", 768, depth=12, num_heads=12, patch_size=16),
    Architecture("resnet18", "resnet", 512),
    Architecture("resnet50", "resnet", 2048),
)
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in _ENTRIES}


def architecture(name: str) -> Architecture:
    """The entry called ``name``; a ValueError lists the valid names."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that fixes a backbone's weights: an architecture name, and for a ViT its
    patch size, position grid (``img_size``) and overrides of the named width, depth and
    heads (None: the entry's). ResNets ignore the ViT fields."""

    arch: str
    patch_size: int | None = None
    img_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None

    @property
    def entry(self) -> Architecture:
        return architecture(self.arch)

    @property
    def feature_dim(self) -> int:
        """Width of the features the built backbone returns."""
        return self.entry.feature_dim(self.embed_dim)
