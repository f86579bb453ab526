"""Video object segmentation by label propagation (DINO section 4.2.3; the reference's
``eval_video_segmentation.py``, after Jabri et al. 2020).

The first frame's mask is given. Every later frame gets its labels from a context: the first
frame (its true mask, one-hot) and the last ``n_last_frames`` frames (their propagated soft
labels). Each patch of the new frame looks at the context patches within
``size_mask_neighborhood`` patches of its own position (a square window, in every context
frame), keeps the ``topk`` most similar by the cosine of L2-normalised last-block features,
weights them exp(cos / 0.1) normalised to sum 1, and averages their labels. The soft label
map is upsampled bilinearly to the frame, each label's map is stretched to [0, 1], and the
argmax is the segmentation, resized (nearest) to the frame's original size.

Frames are resized as the reference does: the short side to ``short_side`` (480) and the
long side in proportion, rounded down to a multiple of 64; bilinear without antialiasing
(OpenCV's resize), ImageNet mean and the reference's std (0.228, 0.224, 0.225).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from dino.data.davis import VOID_LABEL
from dino.data.images import load_rgb
from dino.errors import ConfigError, DataError
from dino.models import VisionTransformer

MEAN = (0.485, 0.456, 0.406)
STD = (0.228, 0.224, 0.225)  # the reference's eval_video_segmentation.py (0.228, not 0.229)
TEMPERATURE = 0.1
LONG_SIDE_MULTIPLE = 64

FrameFeatures = Callable[[Tensor], Tensor]  # frame (3, H, W) -> patch features (h, w, D)


def frame_size(
    height: int, width: int, short_side: int = 480, patch_size: int = 16
) -> tuple[int, int]:
    """(H, W) a frame is resized to: the short side ``short_side`` (rounded down to a multiple
    of the patch), the long side in proportion rounded down to a multiple of 64 (of the patch
    where that leaves less than 64), as the reference's ``read_frame``. A square frame counts
    as landscape, as there."""
    short = max(patch_size, short_side // patch_size * patch_size)
    exact = short * max(height, width) / min(height, width)
    multiple = LONG_SIDE_MULTIPLE if exact >= LONG_SIDE_MULTIPLE else patch_size
    long = max(patch_size, int(exact // multiple * multiple) // patch_size * patch_size)
    return (long, short) if height > width else (short, long)


def frame_tensor(image: Image.Image, size: tuple[int, int]) -> Tensor:
    """``image`` resized to ``size`` (H, W) bilinearly without antialiasing and normalised:
    (3, H, W) float32."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
    if tuple(x.shape[1:]) != size:
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (x / 255 - mean) / std


def first_frame_labels(mask: np.ndarray, grid: tuple[int, int]) -> Tensor:
    """One-hot labels (C, h, w) of the first frame's mask (H, W) resized nearest to the patch
    grid; C = the largest id + 1 (void, 255, counts as background)."""
    mask = np.where(mask == VOID_LABEL, 0, mask).astype(np.uint8)
    small = np.asarray(Image.fromarray(mask).resize(grid[::-1], Image.Resampling.NEAREST))
    ids = torch.from_numpy(small.astype(np.int64))
    return F.one_hot(ids, int(mask.max()) + 1).permute(2, 0, 1).float()  # (h, w, C) -> (C, h, w)


@torch.no_grad()
def vit_patch_features(
    model: nn.Module,
    frame: Tensor,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The last block's normalised patch tokens of one frame: (3, H, W) -> (h, w, D) float32.

    ``dtype`` runs the network under autocast; the affinities are computed in float32.
    """
    if not isinstance(model, VisionTransformer):
        raise ConfigError("video segmentation: needs a ViT backbone (patch tokens)")
    device = device or torch.device("cpu")
    h, w = frame.shape[1] // model.patch_size, frame.shape[2] // model.patch_size
    x = frame[None].to(device)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        tokens = model.get_intermediate_layers(x, 1)[0]  # (1, 1 + h * w, D)
    return tokens[0, 1:].float().reshape(h, w, -1)


def vit_features(
    model: nn.Module, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> FrameFeatures:
    """``vit_patch_features`` of ``model`` as a frame -> features function."""
    return partial(vit_patch_features, model, device=device, dtype=dtype)


def pixel_features(frame: Tensor, patch_size: int) -> Tensor:
    """A baseline without a network: each patch's normalised pixel values, (h, w, 3 p^2)."""
    c, H, W = frame.shape
    p = patch_size
    patches = frame[:, : H // p * p, : W // p * p].reshape(c, H // p, p, W // p, p)
    return patches.permute(1, 3, 0, 2, 4).reshape(H // p, W // p, c * p * p)


def propagate_labels(
    features: Iterable[Tensor],
    first_labels: Tensor,
    n_last_frames: int = 7,
    size_mask_neighborhood: int = 12,
    topk: int = 5,
    temperature: float = TEMPERATURE,
) -> Iterator[Tensor]:
    """Soft labels (C, h, w) of every frame after the first, one per frame as it arrives.

    ``features``: the patch features (h, w, D) of frame 0, 1, 2, ...; ``first_labels``: frame
    0's labels (C, h, w), e.g. one-hot. Frame t is labelled from frame 0 and frames
    max(1, t - n_last_frames) .. t - 1; ``size_mask_neighborhood`` 0 means no window.
    """
    if n_last_frames < 0 or size_mask_neighborhood < 0 or topk < 1:
        raise ConfigError("n_last_frames and size_mask_neighborhood must be >= 0, topk >= 1")
    frames = iter(features)
    first = F.normalize(next(frames).float(), dim=-1)
    first_labels = first_labels.to(first.device)
    if first.shape[:2] != first_labels.shape[1:]:
        raise ConfigError(
            f"labels {tuple(first_labels.shape)} do not fit features {tuple(first.shape)}"
        )
    recent: deque[tuple[Tensor, Tensor]] = deque(maxlen=n_last_frames or None)
    for feats in frames:
        target = F.normalize(feats.float(), dim=-1)
        context = [(first, first_labels), *recent] if n_last_frames else [(first, first_labels)]
        keys = torch.stack([f for f, _ in context])  # (n, h, w, D)
        values = torch.stack([v for _, v in context])  # (n, C, h, w)
        labels = propagate_step(target, keys, values, size_mask_neighborhood, topk, temperature)
        if n_last_frames:
            recent.append((target, labels))
        yield labels


def propagate_step(
    target: Tensor,
    keys: Tensor,
    values: Tensor,
    radius: int,
    topk: int,
    temperature: float = TEMPERATURE,
    tile: int = 8,
) -> Tensor:
    """Labels (C, h, w) of one frame from its context.

    ``target`` (h, w, D) and ``keys`` (n, h, w, D): L2-normalised features of the frame and of
    n context frames; ``values`` (n, C, h, w): the context's labels. A target patch (i, j)
    sees the context patches (p, q) with |p - i| <= radius and |q - j| <= radius (all when
    radius is 0); of these, over all n frames together, it keeps those at least as similar as
    the ``topk``-th (ties kept, as the reference's threshold does), weights exp(cos / T)
    normalised to sum 1. Target patches go in ``tile`` x ``tile`` tiles, each compared with
    the part of the context its windows reach, never with the whole frame.
    """
    h, w, dim = target.shape
    n, c = values.shape[:2]
    labels = values.permute(0, 2, 3, 1)  # (n, h, w, C)
    out = target.new_empty(h, w, c)
    for r0 in range(0, h, tile):
        rows = _reach(r0, min(h, r0 + tile), h, radius, target.device)
        for c0 in range(0, w, tile):
            cols = _reach(c0, min(w, c0 + tile), w, radius, target.device)
            q = target[rows.target, cols.target].reshape(-1, dim)  # (Bt, D)
            k = keys[:, rows.source, cols.source].reshape(n, -1, dim)  # (n, Bs, D)
            cos = torch.einsum("qd,nsd->qns", q, k)  # (Bt, n, Bs)
            window = rows.ok[:, None, :, None] & cols.ok[None, :, None, :]  # (tr, tc, sr, sc)
            cos = cos.masked_fill(~window.reshape(len(q), 1, -1), float("-inf"))
            cos = cos.reshape(len(q), -1)  # (Bt, n * Bs)
            kth = cos.topk(min(topk, cos.shape[1]), dim=1).values[:, -1:]
            weight = torch.exp((cos - cos.amax(dim=1, keepdim=True)) / temperature)
            weight = torch.where(cos >= kth, weight, torch.zeros_like(weight))
            weight = weight / weight.sum(dim=1, keepdim=True)
            v = labels[:, rows.source, cols.source].reshape(-1, c)  # (n * Bs, C)
            out[rows.target, cols.target] = (weight @ v).reshape(*window.shape[:2], c)
    return out.permute(2, 0, 1)  # (C, h, w)


@dataclass(frozen=True)
class _Span:
    target: slice  # target positions along one axis
    source: slice  # context positions their windows reach
    ok: Tensor  # (targets, sources) bool: within the window


def _reach(t0: int, t1: int, size: int, radius: int, device: torch.device) -> _Span:
    """Along one axis: targets t0..t1-1, the context positions within ``radius`` of any of
    them (all when radius is 0), and which target sees which."""
    s0, s1 = (max(0, t0 - radius), min(size, t1 + radius)) if radius > 0 else (0, size)
    dist = torch.arange(t0, t1, device=device)[:, None] - torch.arange(s0, s1, device=device)
    ok = dist.abs() <= radius if radius > 0 else torch.ones_like(dist, dtype=torch.bool)
    return _Span(slice(t0, t1), slice(s0, s1), ok)


def label_map(soft: Tensor, frame_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Segmentation (H0, W0) uint8 from soft labels (C, h, w): bilinear upsampling to the
    resized frame ``frame_hw``, each label's map with a positive maximum stretched to [0, 1]
    (a constant positive map wins everywhere, as the NaN it gives the reference does), argmax,
    nearest resize to the original ``out_hw``."""
    up = F.interpolate(soft[None].float(), size=frame_hw, mode="bilinear", align_corners=False)[0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    span = hi - lo
    stretched = (up - lo) / torch.where(span > 0, span, torch.ones_like(span))
    constant = torch.where(hi > 0, torch.full_like(up, float("inf")), up)
    up = torch.where(hi > 0, torch.where(span > 0, stretched, constant), up)
    seg = up.max(dim=0).indices.to(torch.uint8).cpu().numpy()
    resized = Image.fromarray(seg).resize(out_hw[::-1], Image.Resampling.NEAREST)
    return np.asarray(resized)


def segment_frames(
    frames: Sequence[str | Path | Image.Image],
    first_mask: np.ndarray,
    features: FrameFeatures,
    patch_size: int,
    short_side: int = 480,
    n_last_frames: int = 7,
    size_mask_neighborhood: int = 12,
    topk: int = 5,
) -> Iterator[np.ndarray]:
    """Segmentations (H0, W0) uint8 of frames 1, 2, ... of a video whose frame 0 has
    ``first_mask`` (H0, W0), computed one frame at a time (the module doc says how)."""
    images = (f if isinstance(f, Image.Image) else load_rgb(f) for f in frames)
    first = next(images)
    out_hw = (first.height, first.width)
    if first_mask.shape != out_hw:
        raise DataError(f"first mask {first_mask.shape} does not fit its frame {out_hw}")
    size = frame_size(*out_hw, short_side, patch_size)
    grid = (size[0] // patch_size, size[1] // patch_size)
    labels = first_frame_labels(first_mask, grid)

    def frame_features() -> Iterator[Tensor]:
        yield features(frame_tensor(first, size))
        for image in images:
            if (image.height, image.width) != out_hw:
                raise DataError(
                    f"frames of one video differ in size: {out_hw} and "
                    f"{(image.height, image.width)}"
                )
            yield features(frame_tensor(image, size))

    for soft in propagate_labels(
        frame_features(), labels, n_last_frames, size_mask_neighborhood, topk
    ):
        yield label_map(soft, size, out_hw)
