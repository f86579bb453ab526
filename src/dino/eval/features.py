"""One feature-extraction path for every evaluation protocol (DINO section 4).

A *feature head* maps a batch of images to one vector per image from the backbone's
outputs; ``extract_features`` runs any head over a dataset. The heads:

- ``cls``: the final-norm [CLS] token, ``model(images)`` (B, D); a ResNet's pooled features.
- ``patch_mean``: the average of the last block's patch tokens (B, D).
- ``cls_gem``: [CLS] concatenated with GeM-pooled (p = 4) patch tokens (B, 2D), the copy
  detection descriptor (section 4.2.2).
- ``lastn_cls``: the [CLS] tokens of the last n blocks concatenated, optionally with the
  average-pooled patch tokens of the last block (B, nD [+ D]), the linear probe's input in
  the reference's order (see ``lastn_cls``).
- ``patch``: the last block's final-norm patch tokens on their grid (B, h, w, D), one
  vector per patch (``dino embed --features patch``, ``dino pca``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from dino.config import ConfigError
from dino.data.folder import SkipBadImages
from dino.data.images import BadImageError
from dino.distributed import get_world_size, is_distributed
from dino.errors import NonFiniteFeaturesError
from dino.progress import Progress

FeatureFn = Callable[[Any, Tensor], Tensor]  # (model, images (B, 3, H, W)) -> (B, D')


def cls_features(model: Any, images: Tensor) -> Tensor:
    """The backbone's own output: final-norm [CLS] of a ViT, pooled features of a ResNet."""
    return model(images)


def _vit_layers(model: Any, images: Tensor, n: int, head: str) -> list[Tensor]:
    if not hasattr(model, "get_intermediate_layers"):
        raise ConfigError(
            f"features: {head!r} needs a ViT backbone (patch tokens); a ResNet gives 'cls' only"
        )
    return model.get_intermediate_layers(images, n)  # n x (B, 1 + N, D)


def gem(tokens: Tensor, p: float = 4.0, eps: float = 1e-6) -> Tensor:
    """Generalised-mean pooling over the token axis: (B, N, D) -> (B, D).

    (mean over tokens of max(x, eps)^p)^(1/p); p = 1 is average pooling, p -> inf max pooling
    (Radenović et al. 2018). Values are clamped at ``eps`` so that fractional powers exist.
    """
    return tokens.clamp(min=eps).pow(p).mean(dim=1).pow(1.0 / p)


def patch_mean(model: Any, images: Tensor) -> Tensor:
    tokens = _vit_layers(model, images, 1, "patch_mean")[0]  # (B, 1 + N, D)
    return tokens[:, 1:].mean(dim=1)


def cls_gem(model: Any, images: Tensor, p: float = 4.0) -> Tensor:
    tokens = _vit_layers(model, images, 1, "cls_gem")[0]  # (B, 1 + N, D)
    return torch.cat((tokens[:, 0], gem(tokens[:, 1:].float(), p).to(tokens.dtype)), dim=1)


def lastn_cls(model: Any, images: Tensor, n: int = 4, avgpool: bool = False) -> Tensor:
    """The linear probe's input, in the order of the reference's eval_linear.py, so that its
    published linear heads apply: the [CLS] of the last n blocks concatenated block after
    block (B, n * D); with ``avgpool`` and n = 1 the last [CLS] and the average-pooled patch
    tokens interleaved, [c_0, p_0, c_1, p_1, ...] (B, 2D). The reference cannot pool with
    n > 1; here the pooled tokens then follow the concatenated [CLS] (B, (n + 1) * D)."""
    layers = _vit_layers(model, images, n, "lastn_cls")  # n x (B, 1 + N, D)
    cls = torch.cat([x[:, 0] for x in layers], dim=1)  # (B, n * D)
    if not avgpool:
        return cls
    pooled = layers[-1][:, 1:].mean(dim=1)  # (B, D)
    if n == 1:
        return torch.stack((cls, pooled), dim=-1).flatten(1)  # (B, D, 2) -> (B, 2D)
    return torch.cat((cls, pooled), dim=1)


def patch_tokens(model: Any, images: Tensor) -> Tensor:
    """The last block's final-norm patch tokens on the patch grid: (B, 3, H, W) ->
    (B, H // patch, W // patch, D)."""
    tokens = _vit_layers(model, images, 1, "patch")[0][:, 1:]  # (B, h * w, D)
    h, w = (side // int(model.patch_size) for side in images.shape[-2:])
    return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1])  # (B, h, w, D)


FEATURE_HEADS: dict[str, FeatureFn] = {
    "cls": cls_features,
    "patch_mean": patch_mean,
    "cls_gem": cls_gem,
    "lastn_cls": lastn_cls,
    "patch": patch_tokens,
}


def feature_head(
    name: str, n_last_blocks: int = 4, avgpool: bool = False, gem_p: float = 4.0
) -> FeatureFn:
    """The head called ``name``; the options apply to ``lastn_cls`` and ``cls_gem``."""
    if name not in FEATURE_HEADS:
        raise ConfigError(f"features: unknown {name!r}; valid: {', '.join(FEATURE_HEADS)}")
    if name == "lastn_cls":
        return partial(lastn_cls, n=n_last_blocks, avgpool=avgpool)
    if name == "cls_gem":
        return partial(cls_gem, p=gem_p)
    return FEATURE_HEADS[name]


MULTISCALE_SIZES = ("factor", "patch")


def multiscale(
    features: FeatureFn,
    scales: Sequence[float] = (1.0, 2**-0.5, 0.5),
    multiple: int = 1,
    sizes: str = "factor",
) -> FeatureFn:
    """``features`` averaged over rescaled copies of the images, then L2-normalised (B, D):
    the DINO retrieval protocol at scales 1, 1/sqrt(2), 1/2 (bilinear).

    ``factor`` (the reference's ``multi_scale``): each copy is interpolated by the scale
    factor itself, sides floor(side x s) (224 px -> 158 and 112), and the ViT drops the last
    partial patch (158 px: 9 patches of 16, the last 14 px unused). ``patch``: sides rounded
    to the nearest multiple of ``multiple`` (a ViT's patch size: 224 -> 160 and 112), so the
    whole image is seen at every scale.
    """
    if sizes not in MULTISCALE_SIZES:
        raise ConfigError(f"multiscale: unknown sizes {sizes!r}; valid: factor, patch")

    def averaged(model: Any, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        total: Tensor | None = None
        for s in scales:
            x = images
            if s != 1 and sizes == "factor":
                x = F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
            elif s != 1:
                size = (_round_to(h * s, multiple), _round_to(w * s, multiple))
                x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            out = features(model, x).float()
            total = out if total is None else total + out
        assert total is not None, "multiscale needs at least one scale"
        return F.normalize(total / len(scales), dim=1)

    return averaged


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def run_head(features: FeatureFn, model: Any, images: Tensor | list[Tensor]) -> Tensor:
    """``features`` of a batch (B, 3, H, W), or of a list of images of different sizes (each
    (3, H_i, W_i)), which run in groups of one size and come back in list order (B, D)."""
    if isinstance(images, Tensor):
        return features(model, images)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    out: Tensor | None = None
    for rows in groups.values():
        part = features(model, torch.stack([images[i] for i in rows]))
        if out is None:
            out = part.new_empty((len(images), *part.shape[1:]))
        out[rows] = part
    assert out is not None, "an empty batch"
    return out


@dataclass
class Features:
    """Features of the images of a dataset that could be read, in dataset order."""

    features: Tensor  # (M, D) float32 on the CPU
    labels: Tensor  # (M,) int64; -1 where unlabelled
    index: Tensor  # (M,) int64: position of each row in the dataset
    skipped: list[str] = field(default_factory=list)  # "path: reason" of unreadable images


def _collate(
    items: list[tuple[Any, int, int, list[str]]],
) -> tuple[Tensor | list[Tensor] | None, Tensor, Tensor, list[str]]:
    """SkipBadImages items (fill=False) -> the readable images (B, 3, H, W), a list of them
    when their sizes differ, or None; their labels and dataset indices; and the
    "path: reason" of the unreadable ones."""
    good = [it for it in items if it[0] is not None]
    shapes = {tuple(it[0].shape) for it in good}
    images: Tensor | list[Tensor] | None = None
    if good:
        images = torch.stack([it[0] for it in good]) if len(shapes) == 1 else [it[0] for it in good]
    labels = torch.as_tensor([it[1] for it in good], dtype=torch.long)
    index = torch.as_tensor([it[2] for it in good], dtype=torch.long)
    return images, labels, index, [reason for it in items for reason in it[3]]


@torch.no_grad()
def extract_features(
    model: nn.Module | Callable[[Tensor], Tensor],
    dataset: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    num_workers: int = 0,
    dtype: torch.dtype | None = None,
    features: FeatureFn = cls_features,
    desc: str | None = None,
) -> Features:
    """Features of every readable item of ``dataset`` (which yields ``(image tensor, label)``).

    ``features`` is the head (default: ``cls``); ``dtype`` runs the model under autocast
    (e.g. torch.bfloat16); ``desc`` shows a progress bar with that title. Images that fail
    to decode are left out and listed in ``skipped``. Under torchrun each process extracts
    its share and every process receives the whole result.
    """
    device = torch.device(device)
    if isinstance(model, nn.Module):
        model.eval()
    sampler: DistributedSampler | None = None
    if is_distributed():
        sampler = DistributedSampler(dataset, shuffle=False, drop_last=False)
    loader = DataLoader(
        SkipBadImages(dataset, fill=False),  # an unreadable image is left out
        batch_size=batch_size,
        num_workers=num_workers,
        sampler=sampler,
        pin_memory=device.type == "cuda",
        collate_fn=_collate,
    )
    batches = loader if desc is None else Progress(loader, len(loader), desc)
    feats, labels, index, skipped = [], [], [], []
    for images, target, idx, bad in batches:
        skipped += bad
        if images is None:
            continue
        if isinstance(images, Tensor):
            images = images.to(device, non_blocking=True)
        else:
            images = [x.to(device, non_blocking=True) for x in images]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = run_head(features, model, images)
        feats.append(_finite(out.float().cpu(), dataset, idx, dtype))
        labels.append(target)
        index.append(idx)
    if not feats:
        raise BadImageError(f"none of the {len(dataset)} images could be read")  # type: ignore[arg-type]
    result = Features(torch.cat(feats), torch.cat(labels), torch.cat(index), skipped)
    return _gathered(result) if is_distributed() else result


def _finite(x: Tensor, dataset: Dataset, index: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``x`` (B, ...), the features of the dataset items ``index``; NonFiniteFeaturesError
    names the first item whose features hold NaN or infinity (chance results otherwise)."""
    finite = torch.isfinite(x.flatten(1)).all(dim=1)  # (B,)
    if bool(finite.all()):
        return x
    name = _item_name(dataset, int(index[int((~finite).nonzero()[0])]))
    why = f"computed in {dtype}, try --precision fp32" if dtype else "the weights overflow on it"
    raise NonFiniteFeaturesError(f"{name}: the backbone's features are NaN or infinite ({why})")


def _item_name(dataset: Dataset, i: int) -> str:
    """The file of item ``i`` of ``dataset`` (through Subsets), else "item i"."""
    while isinstance(dataset, Subset):
        i = int(dataset.indices[i])
        dataset = dataset.dataset
    images = getattr(dataset, "images", None)
    if isinstance(images, Sequence) and isinstance(images[i], str | Path):
        return str(images[i])
    return f"item {i}"


def _gathered(part: Features) -> Features:
    """Every process's share, in dataset order, without the sampler's padding duplicates."""
    parts: list[Any] = [None] * get_world_size()
    torch.distributed.all_gather_object(parts, part)
    index = torch.cat([p.index for p in parts])
    order = torch.argsort(index, stable=True)
    keep = torch.ones_like(order, dtype=torch.bool)
    sorted_index = index[order]
    keep[1:] = sorted_index[1:] != sorted_index[:-1]
    rows = order[keep]
    skipped = sorted({s for p in parts for s in p.skipped})
    return Features(
        torch.cat([p.features for p in parts])[rows],
        torch.cat([p.labels for p in parts])[rows],
        index[rows],
        skipped,
    )
