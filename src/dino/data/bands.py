"""DINO's augmentations for images that are not RGB: one channel or any number of bands.

Such images arrive as (C, H, W) float tensors in [0, 1] (``images.load_bands``) and keep
their depth. The multi-crop recipe is DINO's (section 3.1, as ``MultiCropAugmentation``
does it for RGB); the colour operations, defined by the paper for RGB, mean here:

- colour jitter (p 0.8): brightness and contrast with the same strengths (0.4, 0.4), in
  random order, contrast around the image's mean over all bands; saturation and hue exist
  only for RGB colour and are left out;
- grayscale (p 0.2): nothing for one channel (it is grey); with several bands every band
  becomes the mean of the bands;
- solarisation (second global crop, p 0.2): values at or above 0.5, half the range, become
  1 - x, as 8-bit solarisation inverts from 128 (a 16-bit image is in [0, 1] from its own
  minimum to its maximum, so this is half of its range);
- Gaussian blur: the same radii, on every band.

Normalisation uses ImageNet's statistics where the filters adapted from RGB weights
expect them (``pretrained.adapt_input_conv``): their means for one channel, RGB channel
i mod 3's for band i.
"""

from __future__ import annotations

import math
import random

import torch
import torchvision.transforms.functional as TF
from torch import Tensor
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BICUBIC = T.InterpolationMode.BICUBIC
SOLARIZE_AT = 0.5  # 128 of 255


def channel_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std for ``channels`` channels (see the module doc)."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    return (
        tuple(IMAGENET_MEAN[i % 3] for i in range(channels)),
        tuple(IMAGENET_STD[i % 3] for i in range(channels)),
    )


class BandJitter:
    """Brightness (x * b) and contrast (mean + (x - mean) * c), b and c uniform in
    [1 - strength, 1 + strength], in random order, with probability ``p``; clipped to [0, 1]."""

    def __init__(self, p: float = 0.8, brightness: float = 0.4, contrast: float = 0.4) -> None:
        self.p, self.brightness, self.contrast = p, brightness, contrast

    def __call__(self, x: Tensor) -> Tensor:
        if torch.rand(1).item() >= self.p:
            return x
        b = 1.0 + self.brightness * (2 * torch.rand(1).item() - 1)
        c = 1.0 + self.contrast * (2 * torch.rand(1).item() - 1)
        for op in torch.randperm(2).tolist():
            x = (x * b) if op == 0 else (x - x.mean()) * c + x.mean()
            x = x.clamp(0.0, 1.0)
        return x


class BandMean:
    """With probability ``p`` every band becomes the mean of the bands (grayscale)."""

    def __init__(self, p: float = 0.2) -> None:
        self.p = p

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[0] == 1 or torch.rand(1).item() >= self.p:
            return x
        return x.mean(dim=0, keepdim=True).expand_as(x).clone()


class BandBlur:
    """Gaussian blur of every band with probability ``p``, std drawn uniformly in [lo, hi]
    pixels (PIL's radius, as ``transforms.GaussianBlur``)."""

    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, x: Tensor) -> Tensor:
        if random.random() >= self.p:
            return x
        sigma = random.uniform(self.radius_min, self.radius_max)
        largest = 2 * (min(x.shape[-2:]) // 2) - 1  # reflect padding must stay inside
        size = min(2 * math.ceil(3 * sigma) + 1, max(largest, 1))
        return TF.gaussian_blur(x, [size, size], [sigma, sigma])


class BandSolarize:
    """With probability ``p``, x -> 1 - x where x >= 0.5."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, x: Tensor) -> Tensor:
        if random.random() >= self.p:
            return x
        return torch.where(x >= SOLARIZE_AT, 1.0 - x, x)


def _clamp(x: Tensor) -> Tensor:
    return x.clamp(0.0, 1.0)  # bicubic resampling overshoots


class MultiBandAugmentation:
    """One (C, H, W) image in [0, 1] -> [global 1, global 2, local 1..N] float crops, each
    (C, size, size) in [0, 1]: ``MultiCropAugmentation``'s recipe with the operations of
    the module doc. Normalised on the device by ``transforms.normalize_batch``."""

    def __init__(
        self,
        global_crops_scale: tuple[float, float] = (0.4, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.4),
        local_crops_number: int = 8,
        global_crop_size: int = 224,
        local_crop_size: int = 96,
    ) -> None:
        flip_and_color = T.Compose([T.RandomHorizontalFlip(p=0.5), BandJitter(), BandMean()])
        r = global_crop_size / 224  # blur radii scale with the crops, as for RGB

        def crop(size: int, scale: tuple[float, float]) -> T.RandomResizedCrop:
            return T.RandomResizedCrop(size, scale=scale, interpolation=BICUBIC, antialias=True)

        def blur(p: float) -> BandBlur:
            return BandBlur(p, 0.1 * r, 2.0 * r)

        global_crop = crop(global_crop_size, global_crops_scale)
        self.global1 = T.Compose([global_crop, _clamp, flip_and_color, blur(1.0)])
        self.global2 = T.Compose(
            [global_crop, _clamp, flip_and_color, blur(0.1), BandSolarize(0.2)]
        )
        self.local = T.Compose(
            [crop(local_crop_size, local_crops_scale), _clamp, flip_and_color, blur(0.5)]
        )
        self.local_crops_number = local_crops_number

    def __call__(self, img: Tensor) -> list[Tensor]:
        crops = [self.global1(img), self.global2(img)]
        crops += [self.local(img) for _ in range(self.local_crops_number)]
        return [_clamp(c) for c in crops]  # a blur or band mean can round 1 up by an ulp


def band_eval_transform(crop_size: int, channels: int) -> T.Compose:
    """``transforms.eval_transform`` for (C, H, W) images in [0, 1]: resize the short side to
    crop_size * 256 / 224, centre-crop, normalise with ``channel_stats``."""
    mean, std = channel_stats(channels)
    return T.Compose(
        [
            T.Resize(round(crop_size * 256 / 224), interpolation=BICUBIC, antialias=True),
            T.CenterCrop(crop_size),
            _clamp,
            T.Normalize(mean, std),
        ]
    )


def band_linear_transform(
    size: int, interpolation: T.InterpolationMode, channels: int
) -> T.Compose:
    """``transforms.linear_train_transform`` for (C, H, W) images in [0, 1]."""
    mean, std = channel_stats(channels)
    return T.Compose(
        [
            T.RandomResizedCrop(size, interpolation=interpolation, antialias=True),
            T.RandomHorizontalFlip(),
            _clamp,
            T.Normalize(mean, std),
        ]
    )
