"""Self-attention maps of the [CLS] token in the last block (DINO section 4, figures 1 and 3).

Each head's attention from [CLS] to the patches is a map over the patch grid; a threshold
t keeps, per map, the smallest set of patches holding a fraction t of its mass. Maps and
masks are upsampled to the image's own size and written as PNG overlays (PIL only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision import transforms as T

from dino.config import ConfigError
from dino.data.transforms import BICUBIC, IMAGENET_MEAN, IMAGENET_STD


def attention_input(image: Image.Image, patch_size: int, short_side: int | None = None) -> Tensor:
    """The image as a normalised batch (1, 3, H, W) with H and W multiples of ``patch_size``.

    ``short_side`` first rescales the image so that its shorter side has that length; each
    side is then rounded down to a multiple of the patch size (one patch at least).
    """
    w, h = image.size
    scale = short_side / min(w, h) if short_side else 1.0
    size = [max(patch_size, int(s * scale) // patch_size * patch_size) for s in (h, w)]
    to_tensor = T.Compose(
        [
            T.Resize(size, interpolation=BICUBIC),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return to_tensor(image).unsqueeze(0)


@torch.no_grad()
def cls_attention(model: Any, images: Tensor) -> Tensor:
    """Last-block attention of [CLS] to each patch, per head: (1, 3, H, W) -> (heads, h, w).

    h = H / patch and w = W / patch; each map sums to the [CLS] row's mass on the patches.
    """
    if not hasattr(model, "get_last_selfattention"):
        raise ConfigError(
            f"attention: needs a ViT backbone; {type(model).__name__} has no attention maps"
        )
    patch = model.patch_size
    attn = model.get_last_selfattention(images)  # (1, heads, 1 + N, 1 + N)
    rows = attn[0, :, 0, 1:].float()  # (heads, N)
    return rows.reshape(rows.shape[0], images.shape[-2] // patch, images.shape[-1] // patch)


def mass_masks(maps: Tensor, threshold: float) -> Tensor:
    """Per map (M, h, w), the smallest set of cells holding ``threshold`` of its mass (bool).

    Cells are taken from the largest down until the cumulative share reaches the threshold.
    """
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold: expected a number in (0, 1], got {threshold}")
    flat = maps.flatten(1).float()  # (M, h * w)
    share = flat / flat.sum(dim=1, keepdim=True)
    ordered, order = share.sort(dim=1, descending=True)
    before = ordered.cumsum(dim=1) - ordered  # mass of the cells ranked above each one
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep.scatter_(1, order, before < threshold)
    return keep.view_as(maps)


def upsample(maps: Tensor, size: tuple[int, int], mode: str = "nearest") -> Tensor:
    """Maps (M, h, w) resized to ``size`` = (H, W) with ``nearest`` or ``bilinear``."""
    if mode not in ("nearest", "bilinear"):
        raise ConfigError(f"interpolation: expected nearest or bilinear, got {mode!r}")
    extra = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(maps[None].float(), size=size, mode=mode, **extra)[0]


# Anchors of a dark-to-bright colour map (black, purple, red, orange, pale yellow).
_COLOURS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64
)


def heatmap_overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """``heat`` (H, W), stretched to [0, 1] (min to max), coloured and blended over ``image``."""
    span = heat.max() - heat.min()
    x = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    grid = np.linspace(0, 1, len(_COLOURS))
    colour = np.stack([np.interp(x, grid, _COLOURS[:, c]) for c in range(3)], axis=-1)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    return Image.fromarray(((1 - alpha) * rgb + alpha * colour).round().astype(np.uint8))


def mask_overlay(image: Image.Image, mask: np.ndarray, dim: float = 0.25) -> Image.Image:
    """``image`` with the pixels outside ``mask`` (H, W) darkened to ``dim`` of their value."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    out = np.where(mask[..., None], rgb, rgb * dim)
    return Image.fromarray(out.round().astype(np.uint8))


def attention_overlays(
    image: Image.Image,
    maps: Tensor,
    threshold: float = 0.6,
    interpolation: str = "bilinear",
) -> dict[str, Image.Image]:
    """``attn-head{i}``, ``mask-head{i}``, ..., ``attn-mean``, ``mask-mean``: pictures of
    ``image``'s size, heatmaps and masks of each head's map and of their mean.

    ``maps`` (heads, h, w) from ``cls_attention``. Heatmaps use ``interpolation``; masks are
    computed on the patch grid and upsampled nearest.
    """
    size = (image.height, image.width)
    names = [f"head{i}" for i in range(maps.shape[0])] + ["mean"]
    all_maps = torch.cat((maps, maps.mean(dim=0, keepdim=True)))  # (heads + 1, h, w)
    heat = upsample(all_maps, size, interpolation).numpy()
    masks = upsample(mass_masks(all_maps, threshold).float(), size, "nearest").numpy() > 0.5
    pictures = {}
    for name, h, m in zip(names, heat, masks, strict=True):
        pictures[f"attn-{name}"] = heatmap_overlay(image, h)
        pictures[f"mask-{name}"] = mask_overlay(image, m)
    return pictures


def save_attention_maps(
    image: Image.Image,
    maps: Tensor,
    out_dir: str | Path,
    threshold: float = 0.6,
    interpolation: str = "bilinear",
) -> list[Path]:
    """Write ``attn-head{i}.png``, ``attn-mean.png``, ``mask-head{i}.png``, ``mask-mean.png``
    (``attention_overlays``), every file of ``image``'s size."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, picture in attention_overlays(image, maps, threshold, interpolation).items():
        path = out / f"{name}.png"
        picture.save(path)
        written.append(path)
    return written
