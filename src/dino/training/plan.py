"""The resolved plan of a run: every value the training code reads, decided once.

``make_plan`` turns what the user asked for (``TrainConfig``, with ``auto`` device,
precision and recipe values) and the size of the data into one immutable record, and
checks it before anything is written: a batch larger than the data stops here, not after
``config.yaml`` exists. This is the only module below ``trainer.train`` that reads a
``TrainConfig``: the plan holds small frozen records of plain values (the networks, the
crops, the loader, the optimisation, the k-NN probe) that the builders, checkpointing and
probes take instead, and the resolved configuration only as the dict that ``config.yaml``
and every checkpoint's ``args`` save.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dino.architectures import BackboneSpec, architecture, canonical
from dino.config import ConfigError, TrainConfig
from dino.hardware import resolve_precision
from dino.loss import teacher_temp_schedule
from dino.recipe import Recipe, RunSize, describe, recipe_of, resolve_recipe
from dino.schedules import cosine_schedule, scaled_lr


@dataclass(frozen=True)
class NetworkSpec:
    """Student and teacher: a backbone with the DINO head on it (DINO section 3.1)."""

    backbone: BackboneSpec  # img_size: the global crop side (a ViT's position grid)
    drop_path_rate: float  # the student's; the teacher has none
    out_dim: int  # K, the head's output dimension
    use_bn_in_head: bool
    norm_last_layer: bool

    @classmethod
    def of(cls, config: TrainConfig) -> NetworkSpec:
        """The networks of a resolved configuration (``out_dim`` set by the recipe)."""
        backbone = BackboneSpec(
            config.arch,
            config.patch_size,
            config.global_crop_size,
            config.embed_dim,
            config.depth,
            config.num_heads,
            config.in_chans,
        )
        return cls(
            backbone,
            config.drop_path_rate,
            recipe_of(config).out_dim,
            config.use_bn_in_head,
            config.norm_last_layer,
        )

    def shape(self) -> dict[str, Any]:
        """The values that fix the weights' shapes, named as a checkpoint's ``args`` names
        them (a resumed checkpoint must agree on each)."""
        b = self.backbone
        return {
            "arch": canonical(b.arch),
            "patch_size": b.patch_size,
            "embed_dim": b.embed_dim,
            "depth": b.depth,
            "num_heads": b.num_heads,
            "in_chans": b.in_chans,
            "out_dim": self.out_dim,
            "use_bn_in_head": self.use_bn_in_head,
        }


@dataclass(frozen=True)
class CropSpec:
    """The multi-crop augmentation (DINO section 3.1): 2 global crops and
    ``local_crops_number`` local ones, each a random crop of a ``*_scale`` share of the
    image's area resized to ``*_size`` pixels."""

    global_crops_scale: tuple[float, float]
    local_crops_scale: tuple[float, float]
    local_crops_number: int
    global_crop_size: int
    local_crop_size: int
    in_chans: int = 3  # image channels: 3 RGB, else the image's own bands (data.bands)
    augment_on: str = "loader"  # device or loader (auto resolved: resolve_augment_on)

    @classmethod
    def of(cls, config: TrainConfig) -> CropSpec:
        return cls(**_fields_of(cls, config))

    @property
    def on_device(self) -> bool:
        """Crops made on the training device (``data.device_augment``): asked for, and RGB
        (other channel counts are augmented by the loader, ``data.bands``)."""
        return self.augment_on == "device" and self.in_chans == 3


# Batched crops on a CPU cost about 0.21 us of CPU per output pixel; PIL's multi-crop about
# 0.09 us per pixel plus 0.4 ms per crop (2 x 32 + 6 x 16 px crops: 0.8 against 3.5 ms per
# image; 2 x 224 + 10 x 96: 40 against 22; one thread of a 2-core Xeon). They break even
# near 3,300 px per crop: 64 x 64 px on average is on the batched side.
CPU_DEVICE_CROP_PIXELS = 64 * 64


def resolve_augment_on(config: TrainConfig, device: torch.device) -> str:
    """``--augment_on auto``: ``device`` for RGB on a GPU, and on a CPU when the crops are
    small enough (``CPU_DEVICE_CROP_PIXELS`` on average) that the batched path costs less
    CPU than PIL's; ``loader`` otherwise. An explicit choice is kept."""
    if config.augment_on != "auto":
        return config.augment_on
    if config.in_chans != 3:
        return "loader"  # the batched crops are RGB only
    if device.type != "cpu":
        return "device"
    n = 2 + config.local_crops_number
    pixels = 2 * config.global_crop_size**2 + config.local_crops_number * config.local_crop_size**2
    return "device" if pixels <= n * CPU_DEVICE_CROP_PIXELS else "loader"


@dataclass(frozen=True)
class LoaderSpec:
    """The training loader: images per process and micro-batch, micro-batches per optimizer
    step (gradient accumulation), loading processes per process, memory for decoded images."""

    batch_size_per_gpu: int
    num_workers: int
    grad_accum_steps: int = 1
    decoded_cache_gib: float = 0.0  # decoded images kept between epochs (device augmentation)

    @property
    def images_per_step(self) -> int:
        """Images one process loads for one optimizer step."""
        return self.batch_size_per_gpu * self.grad_accum_steps

    @classmethod
    def of(cls, config: TrainConfig) -> LoaderSpec:
        return cls(**_fields_of(cls, config))


@dataclass(frozen=True)
class OptimSpec:
    """How the student is optimised: for how long, in which precision, with what."""

    epochs: int
    precision: str  # fp32, bf16 or fp16, resolved for the device
    optimizer: str  # adamw, sgd or lars
    clip_grad: float  # per-parameter gradient norm clip; 0: none
    compile: bool  # torch.compile the networks
    min_lr: float  # at the end of the cosine schedule
    weight_decay: float  # at the start of its cosine schedule
    weight_decay_end: float

    @classmethod
    def of(cls, config: TrainConfig) -> OptimSpec:
        return cls(**_fields_of(cls, config))


@dataclass(frozen=True)
class RunControl:
    """What a long run does besides training: when it checkpoints, what a scheduler's
    signal does, whether the best epoch's weights are kept."""

    checkpoint_every_minutes: float  # mid-epoch checkpoints; 0: at epoch ends only
    requeue: bool  # on SIGTERM / SIGUSR1 under SLURM: scontrol requeue after the checkpoint
    keep_best: bool  # checkpoint_best.pth
    allow_change: tuple[str, ...] = ()  # options a resume may change

    @classmethod
    def of(cls, config: TrainConfig) -> RunControl:
        return cls(
            config.checkpoint_every_minutes,
            config.requeue,
            config.keep_best,
            config.changes_allowed,
        )


@dataclass(frozen=True)
class ProbeSpec:
    """Where the k-NN probe during training finds its labelled images (see
    ``probes.build_knn_probe``); no ``data_path`` means the demo."""

    data_path: str | None
    val_path: str | None
    knn_train_path: str | None
    eval_every: int  # epochs between measurements; 0: before and after training only
    image_size: int  # side of the centre crop the backbone sees (the global crop size)
    in_chans: int = 3  # image channels, as the training images are read
    follow_links: bool = False  # follow links to folders outside the labelled folders

    @classmethod
    def of(cls, config: TrainConfig) -> ProbeSpec:
        return cls(
            config.data_path,
            config.val_path,
            config.knn_train_path,
            config.eval_every,
            config.global_crop_size,
            config.in_chans,
            config.follow_links,
        )


@dataclass(frozen=True)
class StartSpec:
    """Continued pretraining: the checkpoint whose ``checkpoint_key`` network (teacher or
    student of a full checkpoint; a backbone-only file as it is) both networks start from."""

    path: Path
    checkpoint_key: str

    @classmethod
    def of(cls, config: TrainConfig) -> StartSpec | None:
        if config.pretrained_weights is None:
            return None
        path = Path(config.pretrained_weights)
        if not path.is_file():
            raise ConfigError(f"pretrained_weights: no such file {path}")
        return cls(path, config.checkpoint_key)


def _fields_of(record: type, config: TrainConfig) -> dict[str, Any]:
    """The values of ``config``'s fields that ``record`` (a dataclass) names."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(record)}


# The schedules hold a float64 per iteration: three of this length take 2.4 GB. (ImageNet
# for 800 epochs at a total batch of 64 is 16 million iterations.)
MAX_ITERATIONS = 100_000_000


@dataclass
class Schedules:
    lr: np.ndarray  # per iteration
    weight_decay: np.ndarray  # per iteration
    momentum: np.ndarray  # per iteration
    teacher_temp: np.ndarray  # per epoch


def build_schedules(recipe: Recipe, optim: OptimSpec, steps: int, total_batch: int) -> Schedules:
    """lr, weight decay and teacher momentum per iteration, teacher temperature per epoch, for
    ``steps`` iterations per epoch at ``total_batch`` images per iteration (all processes)."""
    epochs = optim.epochs
    return Schedules(
        lr=cosine_schedule(
            scaled_lr(recipe.lr, total_batch), optim.min_lr, epochs, steps, recipe.warmup_epochs
        ),
        weight_decay=cosine_schedule(optim.weight_decay, optim.weight_decay_end, epochs, steps),
        momentum=cosine_schedule(recipe.momentum_teacher, 1.0, epochs, steps),
        teacher_temp=teacher_temp_schedule(
            recipe.warmup_teacher_temp,
            recipe.teacher_temp,
            recipe.warmup_teacher_temp_epochs,
            epochs,
        ),
    )


@dataclass(frozen=True)
class Plan:
    """What a run does, decided once: the records the training code reads, and the
    resolved configuration as saved."""

    device: torch.device
    network: NetworkSpec
    crops: CropSpec
    loader: LoaderSpec
    optim: OptimSpec
    probe: ProbeSpec
    start: StartSpec | None  # weights to start from (continued pretraining); None: random
    seed: int  # the networks' initial weights and the data order depend on it only
    output_dir: Path
    saveckp_freq: int  # also keep checkpoint{epoch:04}.pth every this many epochs
    control: RunControl
    recipe: Recipe
    size: RunSize  # total batch over all processes
    schedules: Schedules
    # The resolved configuration (device, precision and recipe values filled in), as
    # config.yaml and each checkpoint's "args" save it; written, never read back.
    args: dict[str, Any]
    description: str  # one line: the recipe, the run size and every recipe value

    @property
    def steps(self) -> int:
        """Iterations per epoch (on every process)."""
        return self.size.steps


def check_backbone(config: TrainConfig) -> None:
    """What configuration checks cannot see without building: that timm has the model of a
    ``timm:NAME`` architecture, and that the crops are multiples of its patch size."""
    try:
        entry = architecture(config.arch)
    except ValueError as e:
        raise ConfigError(f"arch: {e}") from None
    if entry.family == "timm" and entry.patch_size:
        for name in ("global_crop_size", "local_crop_size"):
            size = getattr(config, name)
            if size % entry.patch_size:
                raise ConfigError(
                    f"{name}: expected a multiple of {config.arch}'s patch size "
                    f"{entry.patch_size}, got {size}"
                )


def make_plan(config: TrainConfig, device: torch.device, images: int, world_size: int = 1) -> Plan:
    """The plan of training ``config`` on ``images`` images over ``world_size`` processes on
    ``device``; a ConfigError names the field when the run cannot be done."""
    size = RunSize.of(config, images, world_size)
    if size.steps == 0:
        raise ConfigError(
            f"batch_size_per_gpu: {config.batch_size_per_gpu} x {config.grad_accum_steps} "
            f"micro-batch(es) x {world_size} process(es) is more than the {images} images; "
            "lower it"
        )
    if size.iterations > MAX_ITERATIONS:
        raise ConfigError(
            f"epochs: {size.epochs} epochs x {size.steps} steps is {size.iterations:,} "
            f"iterations, more than {MAX_ITERATIONS:,}; lower it or raise batch_size_per_gpu"
        )
    check_backbone(config)
    precision = resolve_precision(config.precision, device)
    augment_on = resolve_augment_on(config, device)
    resolved = resolve_recipe(
        dataclasses.replace(config, device=device.type, precision=precision, augment_on=augment_on),
        images,
        world_size,
    )
    recipe = recipe_of(resolved)
    optim = OptimSpec.of(resolved)
    return Plan(
        device=device,
        network=NetworkSpec.of(resolved),
        crops=CropSpec.of(resolved),
        loader=LoaderSpec.of(resolved),
        optim=optim,
        probe=ProbeSpec.of(resolved),
        start=StartSpec.of(resolved),
        seed=resolved.seed,
        output_dir=Path(resolved.output_dir),
        saveckp_freq=resolved.saveckp_freq,
        control=RunControl.of(resolved),
        recipe=recipe,
        size=size,
        schedules=build_schedules(recipe, optim, size.steps, size.batch),
        args=resolved.to_dict(),
        description=describe(resolved, images, world_size),
    )
