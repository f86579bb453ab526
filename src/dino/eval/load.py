"""A backbone from any checkpoint: ours, a published DINO full checkpoint, or a bare state dict.

The architecture comes from what the file records and what its weights show:

- the family and name from ``--arch``, else the checkpoint's ``args`` (our configuration
  dict, or the ``argparse.Namespace`` of published full checkpoints), else the keys
  (``cls_token``: a ViT; ``layer1.0.conv3``: a ResNet-50; ``layer1.0.conv1``: a ResNet-18);
- a ViT's width from ``cls_token``, depth from the ``blocks.N`` keys, patch size from
  ``patch_embed.proj.weight`` (``--patch_size`` and ``args.patch_size`` take precedence),
  position grid from ``pos_embed``, heads from ``args`` or the named size, else width / 64
  (the DINO sizes: tiny 3, small 6, base 12).

``--arch`` is an assertion: it builds exactly that named size, so weights of another size
fail to load with the differing keys named. Loading is strict (``load_strict``).
"""

from __future__ import annotations

import math
import re
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from dino.architectures import (
    ARCHITECTURES,
    NAMES,
    Architecture,
    BackboneSpec,
    architecture,
    canonical,
    is_known,
)
from dino.checkpoint import CheckpointError, backbone_state, load_file, load_strict
from dino.models import build_from_spec
from dino.models.vit import VisionTransformer


def load_backbone(
    checkpoint: str | Path,
    checkpoint_key: str = "teacher",
    arch: str | None = None,
    patch_size: int | None = None,
    trust: bool = False,
) -> nn.Module:
    """The backbone stored in ``checkpoint`` (under ``checkpoint_key`` if it is a full one).

    Returns the network in eval mode on the CPU; ``describe_backbone`` says what was built.
    A ViT drops the partial patches of inputs whose sides are not multiples of its patch
    size, as the reference ViT does in its evaluation protocols (``crop_remainder``).
    Raises CheckpointError naming missing / unexpected keys when the weights do not fit.
    """
    obj = load_file(checkpoint, trust)
    state = backbone_state(obj, checkpoint_key)
    spec = backbone_spec(state, recorded_args(obj), arch, patch_size, str(checkpoint))
    model = build_from_spec(spec)
    load_strict(model, state, f"{spec.arch} {describe_backbone(model)} built for {checkpoint}")
    if isinstance(model, VisionTransformer):
        model.crop_remainder = True
    return model.eval()


def recorded_args(obj: Any) -> dict[str, Any]:
    """The ``args`` a full checkpoint records, as a dict (empty for a bare state dict)."""
    args = obj.get("args") if isinstance(obj, Mapping) else None
    if isinstance(args, Namespace):
        return vars(args)
    return dict(args) if isinstance(args, Mapping) else {}


def backbone_spec(
    state: Mapping[str, Tensor],
    args: Mapping[str, Any],
    arch: str | None = None,
    patch_size: int | None = None,
    source: str = "checkpoint",
) -> BackboneSpec:
    """The architecture of ``state`` (backbone keys, prefixes stripped); see the module doc."""
    name = _arch_name(arch or args.get("arch") or _infer_family(state, source), source)
    try:
        entry = architecture(name)
    except ValueError as e:  # a timm name that timm does not build
        raise CheckpointError(f"{source}: {e}") from None
    in_chans = int(args.get("in_chans") or _channels(state, entry))
    if entry.family == "timm":  # the name fixes the rest; a ViT's grid is in the weights
        grid = state.get("pos_embed") if entry.patched else None
        side = None if grid is None else _grid_side(grid, source) * int(entry.patch_size or 1)
        return BackboneSpec(name, img_size=side, in_chans=in_chans)
    if not entry.patched:
        return BackboneSpec(name, in_chans=in_chans)
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state:
            raise CheckpointError(f"{source}: {name} needs ViT weights, but there is no {key!r}")
    patch = patch_size or args.get("patch_size") or state["patch_embed.proj.weight"].shape[-1]
    img_size = _grid_side(state["pos_embed"], source) * int(patch)
    if arch is not None:  # the user asserts a named size: build exactly it
        named = (entry.embed_dim, entry.depth, entry.num_heads)
        return BackboneSpec(name, int(patch), img_size, *named, in_chans)
    embed_dim = int(state["cls_token"].shape[-1])
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    heads = args.get("num_heads") or (entry.num_heads if "arch" in args else None)
    heads = heads or _heads_from_width(embed_dim, source)
    return BackboneSpec(name, int(patch), img_size, embed_dim, depth, int(heads), in_chans)


def _arch_name(name: str, source: str) -> str:
    if not is_known(name):
        raise CheckpointError(
            f"{source}: architecture {name!r} is not one this package builds; "
            f"valid: {', '.join(NAMES)}"
        )
    return canonical(name)


def _channels(state: Mapping[str, Tensor], entry: Architecture) -> int:
    """The image channels the weights take: the input width of the first convolution."""
    weight = state.get(f"{entry.first_conv}.weight")
    return int(weight.shape[1]) if weight is not None and weight.ndim == 4 else 3


def _infer_family(state: Mapping[str, Tensor], source: str) -> str:
    if "cls_token" in state:
        width = int(state["cls_token"].shape[-1])
        named = [a.name for a in ARCHITECTURES.values() if a.patched and a.embed_dim == width]
        return named[0] if named else "vit_small"  # the width itself comes from the weights
    if "layer1.0.conv3.weight" in state:
        return "resnet50"
    if "layer1.0.conv1.weight" in state:
        return "resnet18"
    keys = ", ".join(list(state)[:4]) or "none"
    raise CheckpointError(
        f"{source}: cannot tell the architecture from its keys ({keys}, ...); pass --arch"
    )


def _grid_side(pos_embed: Tensor, source: str) -> int:
    n = pos_embed.shape[1] - 1  # (1, 1 + side * side, D)
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(f"{source}: pos_embed holds {n} patches, not a square grid")
    return side


def _heads_from_width(embed_dim: int, source: str) -> int:
    if embed_dim % 64:
        raise CheckpointError(
            f"{source}: a {embed_dim}-dim ViT does not record its number of heads and is not a "
            "multiple of DINO's 64-dim heads; save it with args={'num_heads': ...}"
        )
    return embed_dim // 64


def native_image_size(model: nn.Module) -> int:
    """The input side a backbone was trained at: a ViT's position grid times its patch size.

    ResNets have no such grid; 224, the size of the DINO evaluations, is returned for them.
    """
    pos_embed = getattr(model, "pos_embed", None)
    if isinstance(pos_embed, Tensor):
        return math.isqrt(pos_embed.shape[1] - 1) * int(model.patch_size)  # type: ignore[arg-type]
    return 224


def input_channels(model: nn.Module) -> int:
    """The image channels a backbone takes: the input width of its first convolution."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return 3 if conv is None else int(conv.in_channels)


def patch_multiple(model: nn.Module) -> int:
    """Input sides must be multiples of this: a ViT's patch size, 1 for a ResNet."""
    return int(getattr(model, "patch_size", 1))


def describe_backbone(model: nn.Module) -> str:
    """Width, depth, heads and training size: "ViT/16 (384 dims, 12 blocks, 6 heads, 224 px)"."""
    width = getattr(model, "embed_dim", "?")
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return f"ResNet ({width} dims)"
    heads = getattr(model, "num_heads", "?")
    size, patch = native_image_size(model), patch_multiple(model)
    return f"ViT/{patch} ({width} dims, {len(blocks)} blocks, {heads} heads, {size} px)"
