"""Multi-crop augmentation (DINO section 3.1 and appendix) and the evaluation transform."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor
from torchvision import transforms as T

from dino.data.bands import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    band_eval_transform,
    band_linear_transform,
    channel_stats,
)

BICUBIC = T.InterpolationMode.BICUBIC


class GaussianBlur:
    """PIL Gaussian blur with probability ``p`` and a radius drawn uniformly in [lo, hi]."""

    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        return img.filter(
            ImageFilter.GaussianBlur(random.uniform(self.radius_min, self.radius_max))
        )


class Solarization:
    """Invert pixels above 128 with probability ``p``."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


def _normalize() -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def normalize_batch(images: Tensor) -> Tensor:
    """uint8 crops (B, 3, H, W) -> float32 with ImageNet mean and std, where they will be used.

    Training crops leave the data loader as uint8: 4x less to copy between processes and to
    the GPU, and one vectorised conversion instead of one per crop. Equal to ToTensor +
    Normalize up to float rounding. Crops of other channel counts (B, C, H, W) come as
    floats in [0, 1] (``bands.MultiBandAugmentation``), normalised with ``channel_stats(C)``.
    """
    mean, std = channel_stats(images.shape[1])
    scale = 255 if images.dtype == torch.uint8 else 1
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * scale
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * scale
    return (images.float() - mean_t) / std_t


class MultiCropAugmentation:
    """One image -> [global 1, global 2, local 1..N] uint8 tensors, each (3, size, size).

    Global crops: RandomResizedCrop(global_size, global_scale), flip, colour jitter (p 0.8),
    grayscale (p 0.2); blur always on the first, p 0.1 on the second, which is also
    solarised with p 0.2. Local crops: RandomResizedCrop(local_size, local_scale), the same
    flip and colour ops, blur p 0.5.

    The blur radius is drawn in [0.1, 2.0] pixels for 224-px global crops, as in the paper,
    and scaled by global_size / 224 otherwise: a 2-px blur on a 32-px crop would erase what
    it blurs only slightly at 224 px.
    """

    def __init__(
        self,
        global_crops_scale: tuple[float, float] = (0.4, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.4),
        local_crops_number: int = 8,
        global_crop_size: int = 224,
        local_crop_size: int = 96,
    ) -> None:
        flip_and_color = T.Compose(
            [
                T.RandomHorizontalFlip(p=0.5),
                T.RandomApply(
                    [T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8
                ),
                T.RandomGrayscale(p=0.2),
            ]
        )
        global_crop = T.RandomResizedCrop(
            global_crop_size, scale=global_crops_scale, interpolation=BICUBIC
        )
        r = global_crop_size / 224  # blur radii in pixels of the crops, see above

        def blur(p: float) -> GaussianBlur:
            return GaussianBlur(p, 0.1 * r, 2.0 * r)

        to_uint8 = T.PILToTensor()  # normalised on the device: see normalize_batch
        self.global1 = T.Compose([global_crop, flip_and_color, blur(1.0), to_uint8])
        self.global2 = T.Compose(
            [global_crop, flip_and_color, blur(0.1), Solarization(0.2), to_uint8]
        )
        self.local = T.Compose(
            [
                T.RandomResizedCrop(
                    local_crop_size, scale=local_crops_scale, interpolation=BICUBIC
                ),
                flip_and_color,
                blur(0.5),
                to_uint8,
            ]
        )
        self.local_crops_number = local_crops_number

    def __call__(self, img: Image.Image) -> list[Tensor]:
        crops = [self.global1(img), self.global2(img)]
        crops += [self.local(img) for _ in range(self.local_crops_number)]
        return crops


def collate_multicrop(batch: Sequence[tuple[list[Tensor], int]]) -> list[Tensor]:
    """(crop list, label) pairs -> one tensor per resolution, crop-major; labels are dropped.

    [((g1, g2, l1..lN), label) for each of B images] -> [globals (2B, 3, H, W), locals
    (N*B, 3, h, w)]; row c*B + b of a group is crop c of image b, the layout the loss expects.
    """
    crop_lists = [crops for crops, _ in batch]
    n_crops = len(crop_lists[0])
    groups = [range(0, 2), range(2, n_crops)] if n_crops > 2 else [range(n_crops)]
    return [torch.stack([crops[c] for c in group for crops in crop_lists]) for group in groups]


def eval_transform(crop_size: int = 224, channels: int = 3) -> Callable[[Any], Tensor]:
    """Resize the short side to crop_size * 256 / 224, centre-crop ``crop_size``, normalise
    (RGB PIL images; other ``channels``: (C, H, W) tensors, ``bands.band_eval_transform``)."""
    if channels != 3:
        return band_eval_transform(crop_size, channels)
    return T.Compose(
        [
            T.Resize(round(crop_size * 256 / 224), interpolation=BICUBIC),
            T.CenterCrop(crop_size),
            _normalize(),
        ]
    )


def whole_image_transform(size: int) -> Callable[[Image.Image], Tensor]:
    """Resize the whole image to ``size`` x ``size`` (aspect not kept, nothing cropped), normalise.

    For retrieval and copy detection, where a centre crop could cut away what matches.
    """
    return T.Compose([T.Resize((size, size), interpolation=BICUBIC), _normalize()])


class Thumbnail:
    """PIL's ``thumbnail``: shrink (never enlarge) so that the long side is at most ``size``,
    keeping the aspect ratio (Lanczos filter, sides rounded as PIL rounds them)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        img = img.copy()
        img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        return img


def thumbnail_transform(size: int) -> Callable[[Image.Image], Tensor]:
    """The reference's retrieval input: a thumbnail of long side ``size`` (aspect kept;
    sides need not be multiples of the patch size: the ViT drops the last partial patch),
    normalised. Images of one batch may then differ in size."""
    return T.Compose([Thumbnail(size), _normalize()])


LINEAR_INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": BICUBIC}


def linear_train_transform(
    size: int, interpolation: str = "bilinear", channels: int = 3
) -> Callable[[Any], Tensor]:
    """The linear probe's training augmentation: RandomResizedCrop(size) and a flip (p 0.5).

    ``bilinear`` is the reference's (torchvision's default); ``bicubic`` as in pretraining.
    Other ``channels`` than 3: the same on (C, H, W) tensors in [0, 1] (``bands``).
    """
    mode = LINEAR_INTERPOLATIONS[interpolation]
    if channels != 3:
        return band_linear_transform(size, mode, channels)
    return T.Compose(
        [T.RandomResizedCrop(size, interpolation=mode), T.RandomHorizontalFlip(), _normalize()]
    )
