"""What a training run is built from: networks, data, loader, the output folder.

Each builder takes the plain values or the records of the plan (``plan.Plan``) it needs
and returns one piece; ``trainer.train`` puts them together and runs the loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dino.config import ConfigError
from dino.data.bands import MultiBandAugmentation
from dino.data.decoded import Decode, cache_side
from dino.data.demo import demo_splits
from dino.data.folder import ImageList, first_readable, image_folder
from dino.data.images import BadImageError
from dino.data.transforms import MultiCropAugmentation, collate_multicrop
from dino.distributed import epoch_generator, get_rank, get_world_size, is_main_process
from dino.models import DINOHead, MultiCropWrapper, build_from_spec
from dino.progress import log
from dino.training.plan import CropSpec, LoaderSpec, NetworkSpec


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_output_dir(out: Path) -> Path:
    """Create the output folder and check that it is writable, before any work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test_{get_rank()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir: cannot write to {out} ({e.strerror or e})") from None
    return out


def save_config(out: Path, args: dict[str, Any]) -> None:
    """``config.yaml``: the resolved configuration (device, precision and recipe values filled
    in), as ``Plan.args`` holds it."""
    if is_main_process():
        (out / "config.yaml").write_text(yaml.safe_dump(args, sort_keys=False))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_train_images(
    data_path: str | None, crops: CropSpec, follow_links: bool = False
) -> ImageList:
    """The folder ``data_path`` (None: the demo images) with the multi-crop augmentation,
    or, when the crops are made on the device (``crops.on_device``), decoding only; links
    to folders outside it are followed only with ``follow_links``.

    A folder with no image, or with no readable one, stops here with a one-line error.
    """
    augment: Callable[[Any], Any]
    if crops.on_device:
        augment = Decode(cache_side(crops.global_crop_size, crops.global_crops_scale))
    else:
        if crops.augment_on == "device":
            log(
                f"--in_chans {crops.in_chans}: the crops are made by the loader "
                "(--augment_on device makes RGB crops only)"
            )
        recipe = MultiCropAugmentation if crops.in_chans == 3 else MultiBandAugmentation
        augment = recipe(
            crops.global_crops_scale,
            crops.local_crops_scale,
            crops.local_crops_number,
            crops.global_crop_size,
            crops.local_crop_size,
        )
    if data_path is None:
        return ImageList(demo_splits(seed=0).train, transform=augment, channels=crops.in_chans)
    try:
        images = image_folder(data_path, augment, crops.in_chans, follow_links)
        first_readable(images)
    except (FileNotFoundError, BadImageError) as e:
        raise ConfigError(f"data_path: {e}") from None
    return images


def collate_train(
    batch: list[tuple[list[Tensor], int, int, list[str]]],
) -> tuple[list[Tensor], list[str]]:
    """SkipBadImages items -> multi-crop tensors per resolution (see collate_multicrop) and
    the files skipped for them."""
    crops = collate_multicrop([(c, label) for c, label, _, _ in batch])
    return crops, [path for *_, skipped in batch for path in skipped]


def build_loader(
    dataset: Dataset,
    loader: LoaderSpec,
    seed: int,
    epoch: int,
    device: torch.device,
    skip_steps: int = 0,
    collate: Callable[[list[Any]], Any] = collate_train,
) -> DataLoader:
    """A loader of ``loader.images_per_step`` images per step whose order depends only on
    (seed, epoch, rank) (draws per item: ``data.seeding``), starting after the first
    ``skip_steps`` steps of the epoch (a mid-epoch resume)."""
    sampler: DistributedSampler = DistributedSampler(
        dataset,
        num_replicas=get_world_size(),
        rank=get_rank(),
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    batch = loader.images_per_step
    return DataLoader(
        dataset,
        sampler=list(sampler)[skip_steps * batch :],
        batch_size=batch,
        num_workers=loader.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        collate_fn=collate,
        generator=epoch_generator(seed, epoch),
    )


def build_student_teacher(
    network: NetworkSpec, seed: int
) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (with drop path) and teacher (same weights, no drop path, no gradients).

    The weights depend on ``seed`` only, so every process builds the same network and the
    global random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = _dino_network(network, network.drop_path_rate)
    teacher = _dino_network(network, 0.0)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def _dino_network(network: NetworkSpec, drop_path_rate: float) -> MultiCropWrapper:
    backbone = build_from_spec(network.backbone, drop_path_rate)
    head = DINOHead(
        network.backbone.feature_dim,
        network.out_dim,
        network.use_bn_in_head,
        network.norm_last_layer,
    )
    return MultiCropWrapper(backbone, head)
