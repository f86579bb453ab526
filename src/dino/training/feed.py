"""What feeds the training step: each epoch's loader, and the augmentation that turns one
of its batches into the step's crops on the device.

Two paths (``--augment_on``). ``loader``: the loader processes run torchvision's PIL
multi-crop on every image, each drawn from (seed, epoch, index) (``data.seeding``), and the
step only moves the uint8 crops to the device.
``device``: the loader only decodes (once, when the data set fits the decoded-image
cache, and then runs in the training process), and ``data.device_augment`` makes the
crops of the whole batch on the training device, with draws that depend only on (seed,
epoch, iteration, rank).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dino.data.decoded import DecodedCache, collate_decoded
from dino.data.device_augment import DeviceMultiCrop
from dino.data.folder import ImageList, SkipBadImages
from dino.data.seeding import SeededItems
from dino.distributed import step_generator
from dino.progress import log
from dino.training.builders import build_loader, collate_train
from dino.training.plan import CropSpec, LoaderSpec


class Augmenter(Protocol):
    def __call__(self, batch: Any, epoch: int, iteration: int) -> list[Tensor]:
        """One loader batch -> the step's uint8 crops on the device, one tensor per
        resolution, crop-major: [global (2B, 3, G, G), local (N*B, 3, L, L)]."""
        ...


@dataclass(frozen=True)
class ToDevice:
    """The loader path: its batches are already the crops."""

    device: torch.device

    def __call__(self, batch: list[Tensor], epoch: int, iteration: int) -> list[Tensor]:
        return [c.to(self.device, non_blocking=True) for c in batch]


@dataclass(frozen=True)
class OnDevice:
    """The device path: decoded images (``collate_decoded``) -> ``multicrop``'s crops,
    drawn from ``step_generator(seed, epoch, iteration)``."""

    multicrop: DeviceMultiCrop
    seed: int
    device: torch.device

    def __call__(self, batch: tuple[Tensor, Tensor], epoch: int, iteration: int) -> list[Tensor]:
        images, sizes = batch
        generator = step_generator(self.seed, epoch, iteration)
        return self.multicrop(images.to(self.device, non_blocking=True), sizes, generator)


@dataclass(frozen=True)
class TrainFeed:
    """The items of the training images, how a batch of them is collated, and the
    augmentation that makes the step's crops of such a batch."""

    dataset: Dataset
    loader_spec: LoaderSpec
    collate: Callable[[list[Any]], Any]
    augment: Augmenter
    seed: int
    device: torch.device

    def loader(self, epoch: int, skip_steps: int = 0) -> DataLoader:
        """The loader of ``epoch`` from step ``skip_steps`` on (order depends only on seed,
        epoch and rank)."""
        if isinstance(self.dataset, SeededItems):
            self.dataset.set_epoch(epoch)
        return build_loader(
            self.dataset, self.loader_spec, self.seed, epoch, self.device, skip_steps, self.collate
        )


def build_feed(
    images: ImageList, crops: CropSpec, loader: LoaderSpec, seed: int, device: torch.device
) -> TrainFeed:
    """The feed of ``images`` (from ``build_train_images(crops)``): unreadable files are
    replaced by other readable ones (``SkipBadImages``); on the device path the decoded
    images are cached when they fit ``loader.decoded_cache_gib``."""
    if not crops.on_device:
        # An unreadable file is replaced by another; each image drawn from (seed, epoch, index).
        items = SeededItems(SkipBadImages(images), seed)
        where = f"{loader.num_workers} loader process(es)" if loader.num_workers else "this process"
        log(f"augment with PIL in {where} (--augment_on loader)")
        return TrainFeed(items, loader, collate_train, ToDevice(device), seed, device)
    cache = DecodedCache(images)
    if cache.fill(int(loader.decoded_cache_gib * 2**30), threads=max(1, loader.num_workers)):
        log(
            f"augment on {device.type}: {len(cache)} decoded images kept in memory "
            f"({cache.bytes / 2**20:.1f} MiB); the loader runs in this process"
        )
        loader = dataclasses.replace(loader, num_workers=0)
    else:
        log(
            f"augment on {device.type}: the loader decodes every epoch (the decoded images "
            f"need more than --decoded_cache_gib {loader.decoded_cache_gib:g})"
        )
    multicrop = DeviceMultiCrop(
        crops.global_crops_scale,
        crops.local_crops_scale,
        crops.local_crops_number,
        crops.global_crop_size,
        crops.local_crop_size,
    )
    augment = OnDevice(multicrop, seed, device)
    return TrainFeed(SkipBadImages(cache), loader, collate_decoded, augment, seed, device)
