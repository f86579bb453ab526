"""Training images decoded once, for augmentation on the device (``device_augment``).

The loader of ``--augment_on device`` only reads and decodes: ``Decode`` turns an RGB PIL
image into a uint8 (3, H, W) tensor whose short side is at most ``cache_side`` (a global
crop of the smallest scale is then still not enlarged), ``DecodedCache`` keeps those
tensors in memory when the data set fits a budget, so that later epochs decode nothing,
and ``collate_decoded`` pads a batch into one tensor for a single transfer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from dino.data.images import BadImageError

SAMPLE = 64  # images decoded to estimate whether the whole data set fits the cache


def cache_side(global_crop_size: int, global_crops_scale: tuple[float, float]) -> int:
    """The short side images are kept at: a square global crop of the smallest area share
    ``global_crops_scale[0]`` then has at least ``global_crop_size`` pixels a side
    (224 / sqrt(0.4): 355 px for the reference crops)."""
    return math.ceil(global_crop_size / math.sqrt(global_crops_scale[0]))


class Decode:
    """RGB PIL image -> uint8 (3, H, W) tensor, shrunk (bicubic, aspect kept) when its short
    side is above ``max_side``; smaller images are kept exactly."""

    def __init__(self, max_side: int) -> None:
        self.max_side = max_side

    def __call__(self, img: Image.Image) -> Tensor:
        short = min(img.size)
        if short > self.max_side:
            scale = self.max_side / short
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.Resampling.BICUBIC)
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class DecodedCache(Dataset):
    """``images`` (a dataset of ``(uint8 tensor, label)`` items, e.g. an ImageList with
    ``Decode``) with the items of ``fill`` kept in memory; an unreadable file raises its
    BadImageError again from the cache. Worker processes share the kept tensors (fork)."""

    def __init__(self, images: Dataset) -> None:
        self.images = images
        self.kept: list[tuple[Tensor, int] | str | None] = [None] * len(images)  # type: ignore[arg-type]
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        item = self.kept[index]
        if item is None:
            return self.images[index]
        if isinstance(item, str):
            raise BadImageError(item)
        return item

    @property
    def complete(self) -> bool:
        return all(item is not None for item in self.kept)

    def fill(self, budget_bytes: int, threads: int = 1) -> bool:
        """Decode and keep every image if the estimate from the first SAMPLE says they fit
        in ``budget_bytes`` (decoding stops at the budget if the estimate was low); True
        when all are kept. ``threads``: decoding threads (PIL releases the GIL)."""
        n = len(self.kept)
        if budget_bytes <= 0 or n == 0:
            return False
        head = min(n, SAMPLE)
        self._keep(range(head), threads)
        if self.bytes / head * n > budget_bytes:
            self.kept, self.bytes = [None] * n, 0
            return False
        for start in range(head, n, 1024):
            if self.bytes > budget_bytes:
                break
            self._keep(range(start, min(n, start + 1024)), threads)
        return self.complete

    def _keep(self, indices: Sequence[int], threads: int) -> None:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for i, item in zip(indices, pool.map(self._decoded, indices), strict=True):
                self.kept[i] = item
                if not isinstance(item, str):
                    self.bytes += item[0].numel()

    def _decoded(self, index: int) -> tuple[Tensor, int] | str:
        try:
            return self.images[index]
        except BadImageError as e:
            return str(e)


def collate_decoded(
    batch: Sequence[tuple[Tensor, int, int, list[str]]],
) -> tuple[tuple[Tensor, Tensor], list[str]]:
    """SkipBadImages items of decoded images -> ((images, sizes), skipped files).

    images (B, 3, H, W) uint8: image b in its top-left corner, zeros to the right and below
    (H, W the largest in the batch); sizes (B, 2): each image's (height, width).
    """
    images = [image for image, *_ in batch]
    sizes = torch.tensor([image.shape[1:] for image in images], dtype=torch.long)
    skipped = [path for *_, skipped in batch for path in skipped]
    if bool((sizes == sizes[0]).all()):
        return (torch.stack(images), sizes), skipped
    height, width = (int(v) for v in sizes.max(dim=0).values)
    out = torch.zeros(len(images), 3, height, width, dtype=torch.uint8)
    for b, image in enumerate(images):
        out[b, :, : image.shape[1], : image.shape[2]] = image
    return (out, sizes), skipped
