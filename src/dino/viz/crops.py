"""What the multi-crop augmentation makes of a few images: one row per image, the image
then its 2 global and N local crops, each crop drawn in a cell of the same size (nearest
when enlarged, so a 16-px crop shows its 16 pixels), with the crop settings as a caption.
A user sees, before training, whether the crops keep what matters: local crops of a small
digit, for example, are mostly background.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from dino.data.decoded import collate_decoded
from dino.data.device_augment import DeviceMultiCrop
from dino.data.folder import ImageList
from dino.data.images import BadImageError

PAD = 4  # pixels between cells and around the grid
HEADER = 36  # pixels above the cells: a caption line and the column names


@dataclass(frozen=True)
class Views:
    """One image and its crops as the training loader makes them: uint8 (3, s, s) each,
    global crops first."""

    image: Image.Image
    crops: list[Tensor]


def crop_views(images: ImageList, count: int, seed: int) -> list[Views]:
    """The crops of ``count`` images of ``images`` (whose transform is the multi-crop
    augmentation), drawn at random with ``seed``; unreadable files are passed over.

    The global random states are left as they were: the draws happen on forked ones.
    """
    order = random.Random(seed).sample(range(len(images)), len(images))
    views: list[Views] = []
    state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            for i in order:
                try:
                    image = images.load(i)
                except BadImageError:
                    continue
                assert images.transform is not None, "needs the multi-crop transform"
                views.append(Views(image, images.transform(image)))
                if len(views) == count:
                    break
    finally:
        random.setstate(state)
    return views


def device_crop_views(
    images: ImageList, count: int, seed: int, multicrop: DeviceMultiCrop
) -> list[Views]:
    """``crop_views`` for ``--augment_on device``: ``images`` decode only (``decoded.Decode``)
    and ``multicrop`` makes the crops of the ``count`` images as one batch on the CPU, from
    a generator seeded with ``seed`` (the global random states are not touched)."""
    order = random.Random(seed).sample(range(len(images)), len(images))
    chosen: list[tuple[Image.Image, Tensor]] = []
    for i in order:
        try:
            image = images.load(i)
        except BadImageError:
            continue
        assert images.transform is not None, "needs the decoding transform"
        chosen.append((image, images.transform(image)))
        if len(chosen) == count:
            break
    (batch, sizes), _ = collate_decoded([(decoded, -1, 0, []) for _, decoded in chosen])
    groups = multicrop(batch, sizes, torch.Generator().manual_seed(seed))
    b = len(chosen)
    return [
        Views(image, [g[c * b + i] for g in groups for c in range(g.shape[0] // b)])
        for i, (image, _) in enumerate(chosen)
    ]


def grid_size(rows: int, columns: int, cell: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid of ``rows`` x ``columns`` cells of ``cell`` px."""
    return columns * cell + (columns + 1) * PAD, HEADER + rows * cell + (rows + 1) * PAD


def crop_grid(views: Sequence[Views], cell: int, caption: str) -> Image.Image:
    """One row per image: the image (fitted into its cell), global 1, global 2, local 1...;
    ``grid_size(len(views), 1 + crops, cell)`` pixels on white."""
    n_crops = len(views[0].crops)
    names = ["image", "global 1", "global 2"] + [f"local {i}" for i in range(1, n_crops - 1)]
    sizes = [""] + [f" ({c.shape[-1]} px)" for c in views[0].crops]
    grid = Image.new("RGB", grid_size(len(views), len(names), cell), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((PAD, 2), caption, fill="black")
    for c, (name, size) in enumerate(zip(names, sizes, strict=True)):
        draw.text((PAD + c * (cell + PAD), HEADER // 2 + 2), name + size, fill="black")
    for r, view in enumerate(views):
        top = HEADER + PAD + r * (cell + PAD)
        pictures = [_fit(view.image, cell)]
        pictures += [_fit(Image.fromarray(c.permute(1, 2, 0).numpy()), cell) for c in view.crops]
        for c, picture in enumerate(pictures):
            left = PAD + c * (cell + PAD)
            grid.paste(picture, (left + (cell - picture.width) // 2, top))
    return grid


def _fit(image: Image.Image, cell: int) -> Image.Image:
    """``image`` scaled to fit a ``cell`` square (aspect kept): nearest when enlarged, so
    its pixels stay visible, Lanczos when reduced."""
    scale = cell / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    return image.convert("RGB").resize(size, resample)
