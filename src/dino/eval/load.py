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

A file is checked before anything is allocated for it, since its shapes alone can ask for
terabytes (a ``blocks.999999.*`` key, a 200,000-wide ``cls_token``): every entry must be a
tensor, the sizes it implies must be within ``architectures.LIMITS``, the network is first
built on the meta device (no memory) and every shape compared, and its size must fit in
memory. Weights holding NaN or infinity are refused, naming the first such tensor.
"""

from __future__ import annotations

import math
import re
import reprlib
from argparse import Namespace
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dino.architectures import (
    ARCHITECTURES,
    NAMES,
    Architecture,
    BackboneSpec,
    architecture,
    canonical,
    check_sizes,
    check_spec,
    is_known,
)
from dino.checkpoint import CheckpointError, backbone_state, check_loadable, load_file
from dino.models import build_from_spec
from dino.models.vit import VisionTransformer

# The ViT weights the architecture is read from, and their dimensions: (1, 1, D), (1, 1 + N, D)
# and (D, C, patch, patch).
VIT_SHAPES = {"cls_token": 3, "pos_embed": 3, "patch_embed.proj.weight": 4}


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
    Raises CheckpointError naming the file and what is wrong: missing / unexpected keys,
    sizes out of bounds, non-finite weights (see the module doc).
    """
    source = str(checkpoint)
    obj = load_file(checkpoint, trust)
    try:
        state = backbone_state(obj, checkpoint_key)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    spec = backbone_spec(state, recorded_args(obj, source), arch, patch_size, source)
    model = build_for_state(spec, state, source)
    if isinstance(model, VisionTransformer):
        model.crop_remainder = True
    return model.eval()


def build_for_state(spec: BackboneSpec, state: Mapping[str, Tensor], source: str) -> nn.Module:
    """The backbone ``spec`` with the weights ``state`` (read from ``source``) loaded strictly,
    allocated only once ``check_loadable`` has passed on a copy built on the meta device."""
    with torch.device("meta"):  # shapes without memory
        shell = build_from_spec(spec)
    what = f"{spec.arch} {describe_backbone(shell)}"
    check_loadable(shell, state, source, what)
    try:
        model = build_from_spec(spec)
    except (MemoryError, RuntimeError) as e:  # the allocator's refusal, under a memory limit
        raise CheckpointError(f"{source}: no memory for its {what} ({e})".splitlines()[0]) from None
    model.load_state_dict(state, strict=True)
    return model


def recorded_args(obj: Any, source: str = "checkpoint") -> dict[str, Any]:
    """The ``args`` a full checkpoint records, as a dict (empty for a bare state dict).

    Raises CheckpointError when ``args`` is neither a mapping nor an argparse.Namespace.
    """
    args = obj.get("args") if isinstance(obj, Mapping) else None
    if isinstance(args, Namespace):
        return vars(args)
    if args is not None and not isinstance(args, Mapping):
        raise CheckpointError(
            f"{source}: its args is a {type(args).__name__}, expected a mapping of options"
        )
    return dict(args or {})


def backbone_spec(
    state: Mapping[str, Tensor],
    args: Mapping[str, Any],
    arch: str | None = None,
    patch_size: int | None = None,
    source: str = "checkpoint",
) -> BackboneSpec:
    """The architecture of ``state`` (backbone keys, prefixes stripped); see the module doc.

    Raises CheckpointError when the shapes or ``args`` are malformed or imply a size outside
    ``architectures.LIMITS``; reads shapes only, allocates nothing.
    """
    for key, ndim in VIT_SHAPES.items():
        if key in state and state[key].ndim != ndim:
            shape = tuple(state[key].shape)
            raise CheckpointError(f"{source}: {key} has shape {shape}, expected {ndim} dimensions")
    given = arch or _text_arg(args, "arch", source) or _infer_family(state, source)
    name = _arch_name(given, source)
    try:
        entry = architecture(name)
    except ValueError as e:  # a timm name that timm does not build
        raise CheckpointError(f"{source}: {e}") from None
    in_chans = _int_arg(args, "in_chans", source) or _channels(state, entry)
    if entry.family == "timm":  # the name fixes the rest; a ViT's grid is in the weights
        grid = state.get("pos_embed") if entry.patched else None
        side = None if grid is None else _grid_side(grid, source) * int(entry.patch_size or 1)
        return _checked(BackboneSpec(name, img_size=side, in_chans=in_chans), source)
    if not entry.patched:
        return _checked(BackboneSpec(name, in_chans=in_chans), source)
    for key in VIT_SHAPES:
        if key not in state:
            raise CheckpointError(f"{source}: {name} needs ViT weights, but there is no {key!r}")
    patch = (
        patch_size
        or _int_arg(args, "patch_size", source)
        or state["patch_embed.proj.weight"].shape[-1]
    )
    img_size = _grid_side(state["pos_embed"], source) * int(patch)
    if arch is not None:  # the user asserts a named size: build exactly it
        named = (entry.embed_dim, entry.depth, entry.num_heads)
        return _checked(BackboneSpec(name, int(patch), img_size, *named, in_chans), source)
    embed_dim, depth = int(state["cls_token"].shape[-1]), _depth(state, source)
    _within_limits(check_sizes, {"embed_dim": embed_dim, "depth": depth}, source)
    heads = _int_arg(args, "num_heads", source) or (entry.num_heads if "arch" in args else None)
    heads = heads or _heads_from_width(embed_dim, source)
    spec = BackboneSpec(name, int(patch), img_size, embed_dim, depth, int(heads), in_chans)
    return _checked(spec, source)


def _checked(spec: BackboneSpec, source: str) -> BackboneSpec:
    _within_limits(check_spec, spec, source)
    return spec


def _within_limits(check: Callable[[Any], None], what: Any, source: str) -> None:
    try:
        check(what)
    except ValueError as e:
        raise CheckpointError(
            f"{source}: refused, its weights describe a backbone with {e}"
        ) from None


def _depth(state: Mapping[str, Tensor], source: str) -> int:
    """1 + the highest N of the ``blocks.N.`` keys (longer numbers stay unexpected keys)."""
    blocks = [int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d{1,9})\.", k))]
    if not blocks:
        raise CheckpointError(f"{source}: a ViT without blocks (no 'blocks.N.' keys)")
    return 1 + max(blocks)


def _text_arg(args: Mapping[str, Any], key: str, source: str) -> str | None:
    value = args.get(key)
    if value is not None and not isinstance(value, str):
        raise CheckpointError(f"{source}: args {key} is {reprlib.repr(value)}, expected a name")
    return value


def _int_arg(args: Mapping[str, Any], key: str, source: str) -> int | None:
    """``args[key]`` as a positive integer; None when absent."""
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise CheckpointError(
            f"{source}: args {key} is {reprlib.repr(value)}, expected a positive integer"
        )
    return int(value)


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
    if pos_embed.ndim != 3:
        raise CheckpointError(f"{source}: pos_embed has shape {tuple(pos_embed.shape)}, not 3-d")
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
