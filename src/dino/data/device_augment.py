"""Multi-crop augmentation on the training device, a batch at a time (DINO section 3.1).

``DeviceMultiCrop`` makes from a batch of decoded uint8 images the crops that
``transforms.MultiCropAugmentation`` makes from each PIL image: the same operations in the
same order (random resized crop, flip, colour jitter with p 0.8 in a random order,
grayscale p 0.2, Gaussian blur p 1.0 / 0.1 / 0.5 on global 1 / global 2 / local crops,
solarisation p 0.2 on global 2), with each crop's parameters drawn from the same
distributions (``draw_crops``), and pixels computed as PIL computes them
(``batched_ops``). The draws come from a ``torch.Generator`` on the CPU that the caller
seeds, so they are the same on any device and repeat exactly on a resumed run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dino.data import batched_ops as ops

RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect-ratio range
CROP_TRIES = 10  # RandomResizedCrop's attempts before its centre-crop fallback
JITTER = (0.4, 0.4, 0.2, 0.1)  # ColorJitter(brightness, contrast, saturation, hue)
JITTER_P, GRAY_P, FLIP_P = 0.8, 0.2, 0.5
MATMUL_SIDE = 64  # auto resampling on CPUs: batched products up to this image side


@dataclass(frozen=True)
class CropDraws:
    """The random parameters of N crops, drawn as torchvision's transforms draw them.

    boxes (N, 4): top, left, height, width in the source image (RandomResizedCrop);
    flip (N,): mirrored; jitter (N,): colour jitter applied; order (N, 4): the jitter's
    operations in the order applied (0 brightness, 1 contrast, 2 saturation, 3 hue);
    factors (N, 4): their factors (hue: a shift in [-0.1, 0.1]); gray (N,); blur (N,) and
    sigma (N,); solarize (N,).
    """

    boxes: Tensor
    flip: Tensor
    jitter: Tensor
    order: Tensor
    factors: Tensor
    gray: Tensor
    blur: Tensor
    sigma: Tensor
    solarize: Tensor


def uniform(n: int, lo: float, hi: float, generator: torch.Generator, *shape: int) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, *shape, generator=generator, dtype=torch.float64)


def crop_boxes(sizes: Tensor, scale: tuple[float, float], generator: torch.Generator) -> Tensor:
    """RandomResizedCrop's box for each (height, width) row of ``sizes`` (N, 2): up to 10
    tries of an area share uniform in ``scale`` and a log-uniform aspect ratio in [3/4, 4/3],
    the first that fits is placed uniformly; if none fits, the centre crop of the image
    clipped to that ratio range. Returns (N, 4) int64: top, left, height, width."""
    n = sizes.shape[0]
    height, width = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    area = height * width * uniform(n, *scale, generator, CROP_TRIES)
    ratio = torch.exp(uniform(n, math.log(RATIO[0]), math.log(RATIO[1]), generator, CROP_TRIES))
    w = torch.round(torch.sqrt(area * ratio))
    h = torch.round(torch.sqrt(area / ratio))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (N, tries)
    first = fits.long().argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    height, width = height[:, 0], width[:, 0]
    top = torch.floor(uniform(n, 0, 1, generator) * (height - h + 1))
    left = torch.floor(uniform(n, 0, 1, generator) * (width - w + 1))
    # The fallback: the whole image, narrowed to the nearest allowed aspect ratio.
    in_ratio = width / height
    fw = torch.where(in_ratio > RATIO[1], torch.round(height * RATIO[1]), width)
    fh = torch.where(in_ratio < RATIO[0], torch.round(width / RATIO[0]), height)
    found = fits.any(dim=1)
    h, w = torch.where(found, h, fh), torch.where(found, w, fw)
    top = torch.where(found, top, torch.floor((height - fh) / 2))
    left = torch.where(found, left, torch.floor((width - fw) / 2))
    return torch.stack([top, left, h, w], dim=1).long()


def draw_crops(
    sizes: Tensor,
    scale: tuple[float, float],
    blur_p: Tensor,
    sigma_range: tuple[float, float],
    solarize_p: Tensor,
    generator: torch.Generator,
) -> CropDraws:
    """The parameters of one crop of each image of ``sizes`` (N, 2), with per-crop blur and
    solarisation probabilities ``blur_p`` and ``solarize_p`` (N,)."""
    n = sizes.shape[0]
    boxes = crop_boxes(sizes, scale, generator)
    flip = torch.rand(n, generator=generator) < FLIP_P
    jitter = torch.rand(n, generator=generator) < JITTER_P
    order = torch.rand(n, 4, generator=generator).argsort(dim=1)  # a uniform permutation
    b, c, s, h = JITTER
    factors = torch.stack(
        [
            uniform(n, 1 - b, 1 + b, generator),
            uniform(n, 1 - c, 1 + c, generator),
            uniform(n, 1 - s, 1 + s, generator),
            uniform(n, -h, h, generator),
        ],
        dim=1,
    ).float()
    gray = torch.rand(n, generator=generator) < GRAY_P
    blur = torch.rand(n, generator=generator, dtype=torch.float64) < blur_p
    sigma = uniform(n, *sigma_range, generator).float()
    solarize = torch.rand(n, generator=generator, dtype=torch.float64) < solarize_p
    return CropDraws(boxes, flip, jitter, order, factors, gray, blur, sigma, solarize)


JITTER_OPS = (ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation, ops.adjust_hue)


def apply_colour(x: Tensor, draws: CropDraws) -> Tensor:
    """Colour jitter (each crop's operations in its own order), grayscale, blur, solarisation
    on crops (N, 3, s, s) of 0..255 floats, changed in place. Which crops each operation
    touches is known on the CPU, so selecting them costs the device no synchronisation; an
    operation runs on the crops it changes only."""
    for position in range(4):
        for op_id, op in enumerate(JITTER_OPS):
            chosen = draws.jitter & (draws.order[:, position] == op_id)
            x = _on(chosen, x, op, draws.factors[:, op_id])
    x = _on(draws.gray, x, ops.grayscale)
    x = _on(draws.blur, x, ops.gaussian_blur, draws.sigma)
    return _on(draws.solarize, x, ops.solarize)


def _on(
    chosen: Tensor, x: Tensor, op: Callable[..., Tensor], param: Tensor | None = None
) -> Tensor:
    """``x`` with ``op(x[at], param[at])`` (or ``op(x[at])``) written in place at the crops
    ``chosen`` (a CPU mask; ``param`` a CPU tensor)."""
    at = chosen.nonzero()[:, 0]
    if at.numel() == 0:
        return x
    index = at.to(x.device, non_blocking=True)
    args = [] if param is None else [param[at].to(x.device, non_blocking=True)]
    x[index] = op(x[index], *args)
    return x


class DeviceMultiCrop:
    """A batch of images -> [global crops (2B, 3, G, G), local crops (N*B, 3, L, L)], uint8,
    crop-major (row c*B + b is crop c of image b), as ``collate_multicrop`` stacks the
    loader's crops. The arguments are ``MultiCropAugmentation``'s, and so is the recipe
    (the blur radius scaled by global_crop_size / 224 there too).

    ``resize`` picks the resampling: ``loop`` (one uint8 ``interpolate`` per crop, PIL's
    own kernel), ``matmul`` (two batched products for all crops, whose dense cost grows
    with the images' size), or ``auto``: matmul on GPUs, and on CPUs for images of at most
    MATMUL_SIDE pixels a side. Measured on 2 CPU cores: 32/16-px crops of 32-px images,
    0.14 ms per image by matmul, 0.27 by loop; 224/96-px crops of 355 x 473 images, 26 ms
    by matmul, 3.6 by loop.
    """

    def __init__(
        self,
        global_crops_scale: tuple[float, float] = (0.4, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.4),
        local_crops_number: int = 8,
        global_crop_size: int = 224,
        local_crop_size: int = 96,
        resize: str = "auto",
    ) -> None:
        if resize not in ("auto", "loop", "matmul"):
            raise ValueError(f"resize: expected auto, loop or matmul, got {resize!r}")
        self.global_crops_scale, self.local_crops_scale = global_crops_scale, local_crops_scale
        self.local_crops_number = local_crops_number
        self.global_crop_size, self.local_crop_size = global_crop_size, local_crop_size
        r = global_crop_size / 224
        self.sigma_range = (0.1 * r, 2.0 * r)
        self.resize = resize

    def draw(self, sizes: Tensor, generator: torch.Generator) -> list[CropDraws]:
        """The parameters of every crop of images of ``sizes`` (B, 2): [global crops (2B),
        local crops (N*B)], crop-major like the crops."""
        b = sizes.shape[0]
        # blur and solarisation probabilities: global 1, then global 2, then the locals
        blur_p = torch.tensor([1.0, 0.1], dtype=torch.float64).repeat_interleave(b)
        solarize_p = torch.tensor([0.0, 0.2], dtype=torch.float64).repeat_interleave(b)
        groups = [
            draw_crops(
                sizes.repeat(2, 1),
                self.global_crops_scale,
                blur_p=blur_p,
                sigma_range=self.sigma_range,
                solarize_p=solarize_p,
                generator=generator,
            )
        ]
        if self.local_crops_number:
            n = self.local_crops_number * b
            groups.append(
                draw_crops(
                    sizes.repeat(self.local_crops_number, 1),
                    self.local_crops_scale,
                    blur_p=torch.full((n,), 0.5, dtype=torch.float64),
                    sigma_range=self.sigma_range,
                    solarize_p=torch.zeros(n, dtype=torch.float64),
                    generator=generator,
                )
            )
        return groups

    def __call__(self, images: Tensor, sizes: Tensor, generator: torch.Generator) -> list[Tensor]:
        """``images`` (B, 3, H, W) uint8 on the device, image b in its top-left ``sizes[b]``
        (height, width) corner (a CPU tensor); ``generator`` a CPU generator."""
        crop_sizes = (self.global_crop_size, self.local_crop_size)
        draws = self.draw(sizes, generator)
        return [
            apply_colour(self._resized(images, d, size), d).to(torch.uint8)
            for d, size in zip(draws, crop_sizes, strict=False)
        ]

    def _resized(self, images: Tensor, draws: CropDraws, size: int) -> Tensor:
        """The crops of ``draws`` (crop-major: crop c of image b at row c*B + b)."""
        b = images.shape[0]
        k = draws.boxes.shape[0] // b
        source = torch.arange(b).repeat(k)
        if not self._matmul(images):
            return ops.resized_crops_loop(images, source, draws.boxes, size, draws.flip)
        # matmul groups crops per image: image-major order in, crop-major order back out
        image_major = torch.arange(k * b).view(k, b).t().reshape(-1)
        device = images.device
        out = ops.resized_crops_matmul(
            images,
            source[image_major],
            draws.boxes[image_major].to(device, non_blocking=True),
            size,
            draws.flip[image_major].to(device, non_blocking=True),
        )
        return out.view(b, k, *out.shape[1:]).transpose(0, 1).reshape(out.shape)

    def _matmul(self, images: Tensor) -> bool:
        if self.resize != "auto":
            return self.resize == "matmul"
        return images.device.type != "cpu" or max(images.shape[-2:]) <= MATMUL_SIDE
