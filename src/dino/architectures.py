"""The backbone architectures by name, and what each promises, without importing torch.

One registry serves configuration checks (``dino train --arch``, which must answer
``--help`` without torch), ``dino.models.build_backbone`` (which builds an entry with the
factory of its family) and checkpoint loading (``dino.eval.load``). An entry declares
its contract: the width of the features its ``forward`` returns, whether inputs are cut
into patches (and so must be multiples of the patch size), and the input side its
published weights were trained at.

Besides the fixed entries: DeiT's names of the same ViTs (``deit_small``: the published
files are ``dino_deitsmall16_*``), and ``timm:NAME`` for any model timm builds, whose entry
is read from the model itself when it is first asked for (timm and torch are imported
then, not before).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Architecture:
    """A named backbone: ``forward`` maps images (B, C, H, W) to features (B, embed_dim)."""

    name: str
    family: str  # "vit", "resnet" or "timm": which factory of dino.models builds it
    embed_dim: int  # feature width
    depth: int | None = None  # ViT blocks; None where the family has no such knob
    num_heads: int | None = None
    patch_size: int | None = None  # default ViT patch; None: any input side works
    image_size: int = 224  # input side of the published weights (a ViT's position grid)
    first_conv: str = "patch_embed.proj"  # the layer that sees the image's channels

    @property
    def patched(self) -> bool:
        """Inputs are cut into ``patch_size`` patches (sides must be multiples of it)."""
        return self.patch_size is not None

    def feature_dim(self, embed_dim: int | None = None) -> int:
        """The feature width of this backbone built with a ViT width override ``embed_dim``
        (which the other families ignore)."""
        return (embed_dim or self.embed_dim) if self.family == "vit" else self.embed_dim


_ENTRIES = (  # ViT sizes as in DeiT and DINO section 3.2; ResNets as in torchvision
    Architecture("vit_tiny", "vit", 192, depth=12, num_heads=3, patch_size=16),
    Architecture("vit_small", "vit", 384, depth=12, num_heads=6, patch_size=16),
    Architecture("vit_base", "vit", 768, depth=12, num_heads=12, patch_size=16),
    Architecture("resnet18", "resnet", 512, first_conv="conv1"),
    Architecture("resnet50", "resnet", 2048, first_conv="conv1"),
)
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in _ENTRIES}
# Other names of the same networks: DeiT's (the reference's main_dino also takes them).
ALIASES = {"deit_tiny": "vit_tiny", "deit_small": "vit_small", "deit_base": "vit_base"}
TIMM_PREFIX = "timm:"  # timm:NAME is any model timm builds (timm.list_models())
NAMES = (*ARCHITECTURES, *ALIASES, f"{TIMM_PREFIX}NAME")  # what --arch takes, for messages


def canonical(name: str) -> str:
    """The registry name of ``name`` (an alias resolved; other names as they are)."""
    return ALIASES.get(name, name)


def is_timm(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def is_known(name: str) -> bool:
    """Whether ``--arch`` takes ``name``, without importing torch (a timm name's model is
    looked up only when it is built)."""
    return canonical(name) in ARCHITECTURES or (is_timm(name) and len(name) > len(TIMM_PREFIX))


def architecture(name: str) -> Architecture:
    """The entry called ``name``; a ValueError lists the valid names."""
    if is_timm(name):
        return timm_architecture(name)
    if canonical(name) not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(NAMES)}")
    return ARCHITECTURES[canonical(name)]


@cache
def timm_architecture(name: str) -> Architecture:
    """The entry of ``timm:NAME``, read from the model timm builds on the meta device (no
    memory, no weights): the feature width is its ``num_features``; a model with a patch
    embedding (ViTs) takes inputs in multiples of its patch size."""
    model_name = name[len(TIMM_PREFIX) :]
    try:
        import timm
        import torch
    except ImportError:
        raise ValueError(f"{name} needs timm: pip install timm") from None
    if not timm.is_model(model_name):
        raise ValueError(f"timm has no model {model_name!r} (see timm.list_models())")
    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch_size = int(patch[0] if isinstance(patch, tuple | list) else patch) if patch else None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return Architecture(
        name,
        "timm",
        int(getattr(model, "num_features")),  # noqa: B009 (a Module attribute to mypy)
        patch_size=patch_size,
        image_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        first_conv=str(cfg.get("first_conv") or "patch_embed.proj"),
    )


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that fixes a backbone's weights: an architecture name, and for a ViT its
    patch size, position grid (``img_size``) and overrides of the named width, depth and
    heads (None: the entry's); the image channels ``in_chans``. ResNets ignore the ViT
    fields, timm models all but ``img_size`` (their name fixes the rest)."""

    arch: str
    patch_size: int | None = None
    img_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    in_chans: int = 3

    @property
    def entry(self) -> Architecture:
        return architecture(self.arch)

    @property
    def feature_dim(self) -> int:
        """Width of the features the built backbone returns."""
        return self.entry.feature_dim(self.embed_dim)


# The largest sizes built, beyond every published ViT (ViT-22B: 48 blocks, 6144 wide, 48
# heads; DINOv2's giant: 40 blocks, 1536 wide), so that a malformed file or option cannot
# ask for terabytes. "grid" is the side of the position grid, in patches (512: 8192 px
# at patch 16).
LIMITS = {"embed_dim": 8192, "depth": 64, "num_heads": 128, "patch_size": 64, "grid": 512,
          "in_chans": 1024}  # fmt: skip


def check_sizes(sizes: dict[str, int | None]) -> None:
    """Raise a ValueError naming the first size (a key of ``LIMITS``) outside its bounds."""
    for name, value in sizes.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} {value}, less than 1")
        if value is not None and value > LIMITS[name]:
            raise ValueError(f"{name} {value}, more than the {LIMITS[name]} built here")


def check_spec(spec: BackboneSpec) -> None:
    """Raise a ValueError naming the field when ``spec`` asks for a size outside ``LIMITS``
    or for a ViT whose width its heads do not divide. Needs no torch (but a ``timm:`` name
    is looked up in timm)."""
    entry = spec.entry
    patch = spec.patch_size or entry.patch_size
    check_sizes(
        {
            "embed_dim": spec.embed_dim,
            "depth": spec.depth,
            "num_heads": spec.num_heads,
            "patch_size": spec.patch_size,
            "grid": spec.img_size // patch if spec.img_size is not None and patch else None,
            "in_chans": spec.in_chans,
        }
    )
    width, heads = spec.embed_dim or entry.embed_dim, spec.num_heads or entry.num_heads
    if entry.family == "vit" and heads and width % heads:
        raise ValueError(f"embed_dim {width}, which num_heads {heads} does not divide")
