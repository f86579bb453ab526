"""What a training run is built from: networks, data, loader, schedules, the output folder.

Each builder takes the run's configuration and returns one piece; ``trainer.train`` puts
them together and runs the loop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dino.config import ConfigError, TrainConfig
from dino.data.demo import demo_splits
from dino.data.folder import ImageList, first_readable, image_folder
from dino.data.images import BadImageError
from dino.data.transforms import MultiCropAugmentation, collate_multicrop
from dino.distributed import epoch_generator, get_rank, get_world_size, is_main_process
from dino.loss import teacher_temp_schedule
from dino.models import DINOHead, MultiCropWrapper, build_backbone
from dino.recipe import Recipe, recipe_of
from dino.schedules import cosine_schedule, scaled_lr


@dataclass
class Schedules:
    lr: np.ndarray  # per iteration
    weight_decay: np.ndarray  # per iteration
    momentum: np.ndarray  # per iteration
    teacher_temp: np.ndarray  # per epoch


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_output_dir(config: TrainConfig) -> Path:
    """Create the output folder and check that it is writable, before any work."""
    out = Path(config.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test_{get_rank()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir: cannot write to {out} ({e.strerror or e})") from None
    return out


def save_config(out: Path, config: TrainConfig) -> None:
    """The resolved configuration (device, precision and recipe values filled in)."""
    if is_main_process():
        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_train_images(config: TrainConfig) -> ImageList:
    """The user's folder (or the demo images) with the multi-crop augmentation.

    A folder with no image, or with no readable one, stops here with a one-line error.
    """
    augment = MultiCropAugmentation(
        config.global_crops_scale,
        config.local_crops_scale,
        config.local_crops_number,
        config.global_crop_size,
        config.local_crop_size,
    )
    if config.is_demo:
        return ImageList(demo_splits(seed=0).train, transform=augment)
    try:
        images = image_folder(config.data_path or "", transform=augment)
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
    dataset: Dataset, config: TrainConfig, epoch: int, device: torch.device
) -> DataLoader:
    """A loader whose order and augmentations depend only on (seed, epoch, rank)."""
    sampler: DistributedSampler = DistributedSampler(
        dataset,
        num_replicas=get_world_size(),
        rank=get_rank(),
        shuffle=True,
        seed=config.seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=config.batch_size_per_gpu,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        collate_fn=collate_train,
        generator=epoch_generator(config.seed, epoch),
    )


def build_student_teacher(config: TrainConfig) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (with drop path) and teacher (same weights, no drop path, no gradients).

    The weights depend on ``config.seed`` only, so every process builds the same network and
    the global random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        student = _dino_network(config, config.drop_path_rate)
    teacher = _dino_network(config, 0.0)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def _dino_network(config: TrainConfig, drop_path_rate: float) -> MultiCropWrapper:
    backbone = build_backbone(
        config.arch,
        config.patch_size,
        config.global_crop_size,
        drop_path_rate,
        config.embed_dim,
        config.depth,
        config.num_heads,
    )
    embed_dim = int(backbone.embed_dim)  # type: ignore[arg-type]
    out_dim = recipe_of(config).out_dim
    head = DINOHead(embed_dim, out_dim, config.use_bn_in_head, config.norm_last_layer)
    return MultiCropWrapper(backbone, head)


def build_schedules(recipe: Recipe, config: TrainConfig, steps: int, total_batch: int) -> Schedules:
    """lr, weight decay and teacher momentum per iteration, teacher temperature per epoch, for
    ``steps`` iterations per epoch at ``total_batch`` images per iteration (all processes)."""
    epochs = config.epochs
    return Schedules(
        lr=cosine_schedule(
            scaled_lr(recipe.lr, total_batch), config.min_lr, epochs, steps, recipe.warmup_epochs
        ),
        weight_decay=cosine_schedule(config.weight_decay, config.weight_decay_end, epochs, steps),
        momentum=cosine_schedule(recipe.momentum_teacher, 1.0, epochs, steps),
        teacher_temp=teacher_temp_schedule(
            recipe.warmup_teacher_temp,
            recipe.teacher_temp,
            recipe.warmup_teacher_temp_epochs,
            epochs,
        ),
    )
