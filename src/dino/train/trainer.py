"""DINO pretraining: ``train(config)`` reads as the list of steps it takes (DINO Algorithm 1)."""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dino.checkpoint import CheckpointError, load_file, load_strict, save_atomic, strip_prefixes
from dino.config import ConfigError, TrainConfig
from dino.data.demo import demo_splits
from dino.data.folder import ImageList, image_folder, labelled_folder
from dino.data.transforms import MultiCropAugmentation, collate_multicrop, eval_transform
from dino.distributed import get_rank, get_world_size, is_main_process
from dino.eval.features import extract_features
from dino.eval.knn import knn_classify
from dino.hardware import resolve_device, resolve_precision
from dino.loss import DINOLoss, dino_cross_entropy, teacher_temp_schedule
from dino.models import DINOHead, MultiCropWrapper, build_backbone
from dino.train.diagnostics import collapse_warning, teacher_entropies
from dino.train.ema import update_teacher
from dino.train.optim import (
    build_optimizer,
    cancel_last_layer_gradients,
    clip_gradients,
    param_groups,
    set_lr_and_wd,
)
from dino.train.progress import Progress, log, warn
from dino.train.schedules import cosine_schedule, scaled_lr

CHECKPOINT = "checkpoint.pth"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last checkpoint was kept."""


@dataclass
class Schedules:
    lr: np.ndarray  # per iteration
    weight_decay: np.ndarray  # per iteration
    momentum: np.ndarray  # per iteration
    teacher_temp: np.ndarray  # per epoch


@dataclass
class TrainSummary:
    output_dir: Path
    epochs_run: int
    images_per_s: float | None
    knn_before: float | None = None  # demo / --val_path: top-1 k-NN (k=20) of the initial network
    knn_after: float | None = None
    last_stats: dict[str, Any] = field(default_factory=dict)


def train(config: TrainConfig) -> TrainSummary:
    """Pretrain student and teacher as ``config`` says; resume from ``output_dir`` if possible."""
    device = resolve_device(config.device)
    config = replace(
        config, device=device.type, precision=resolve_precision(config.precision, device)
    )
    out = prepare_output_dir(config)
    seed_everything(config.seed + get_rank())
    dataset = build_train_dataset(config)
    loader_batches = len(dataset) // (config.batch_size_per_gpu * get_world_size())
    if loader_batches == 0:
        raise ConfigError(
            f"batch_size_per_gpu: {config.batch_size_per_gpu} x {get_world_size()} process(es) "
            f"is larger than the {len(dataset)} images; lower it"
        )
    student, teacher = build_student_teacher(config)
    student.to(device)
    teacher.to(device)
    loss_fn = DINOLoss(config.out_dim).to(device)
    optimizer = build_optimizer(
        config.optimizer, param_groups(student), fused=device.type == "cuda"
    )
    scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
    schedules = build_schedules(config, loader_batches)
    start_epoch = resume(out / CHECKPOINT, config, student, teacher, loss_fn, optimizer, scaler)
    if start_epoch >= config.epochs:
        log(
            f"{out / CHECKPOINT} has already trained {start_epoch} of {config.epochs} epochs; "
            "raise --epochs to train further"
        )
    log(
        f"training {config.arch} on {len(dataset)} images, {loader_batches} steps per epoch, "
        f"epochs {start_epoch}..{config.epochs - 1}, {device.type} {config.precision}, "
        f"output {out}"
    )

    probe = build_knn_probe(config)
    speeds, stats = [], {}
    for epoch in range(start_epoch, config.epochs):
        loader = build_loader(dataset, config, epoch, device)
        stats = train_one_epoch(
            student, teacher, loss_fn, optimizer, scaler, loader, schedules, epoch, config, device
        )
        speeds.append(stats["img_per_s"])
        if probe is not None and probe.every and (epoch + 1) % probe.every == 0:
            stats["knn_top1"] = probe(teacher.backbone, device, config.precision)
            log(f"epoch {epoch}: k-NN top-1 (k={probe.k}) {stats['knn_top1']:.1f}%")
        save_checkpoint(out, epoch, config, student, teacher, loss_fn, optimizer, scaler)
        append_log(out, stats)
        message = collapse_warning(stats["teacher_entropy"], stats["batch_entropy"], config.out_dim)
        if message and epoch >= 1:
            warn(message)

    summary = TrainSummary(
        out,
        config.epochs - start_epoch,
        float(np.mean(speeds)) if speeds else None,
        last_stats=stats,
    )
    if probe is not None:
        initial = build_student_teacher(config)[1].backbone.to(device)
        summary.knn_before = probe(initial, device, config.precision)
        summary.knn_after = stats.get("knn_top1") or probe(
            teacher.backbone, device, config.precision
        )
        log(
            f"k-NN top-1 (k={probe.k}, T=0.07) on the held-out split: {summary.knn_before:.1f}% at "
            f"initialisation -> {summary.knn_after:.1f}% after training"
        )
    return summary


def prepare_output_dir(config: TrainConfig) -> Path:
    """Create the output folder, check it is writable and save the resolved configuration."""
    out = Path(config.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test_{get_rank()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir: cannot write to {out} ({e.strerror or e})") from None
    if is_main_process():
        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_train_dataset(config: TrainConfig) -> ImageList:
    """The user's folder (or the demo images) with the multi-crop augmentation."""
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
        return image_folder(config.data_path or "", transform=augment)
    except FileNotFoundError as e:
        raise ConfigError(f"data_path: {e}") from None


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
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch * 1009 + get_rank())
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=config.batch_size_per_gpu,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        collate_fn=collate_multicrop,
        generator=generator,
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
    head = DINOHead(embed_dim, config.out_dim, config.use_bn_in_head, config.norm_last_layer)
    return MultiCropWrapper(backbone, head)


def build_schedules(config: TrainConfig, iters_per_epoch: int) -> Schedules:
    total_batch = config.batch_size_per_gpu * get_world_size()
    return Schedules(
        lr=cosine_schedule(
            scaled_lr(config.lr, total_batch),
            config.min_lr,
            config.epochs,
            iters_per_epoch,
            config.warmup_epochs,
        ),
        weight_decay=cosine_schedule(
            config.weight_decay, config.weight_decay_end, config.epochs, iters_per_epoch
        ),
        momentum=cosine_schedule(config.momentum_teacher, 1.0, config.epochs, iters_per_epoch),
        teacher_temp=teacher_temp_schedule(
            config.warmup_teacher_temp,
            config.teacher_temp,
            config.warmup_teacher_temp_epochs,
            config.epochs,
        ),
    )


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def train_one_epoch(
    student: nn.Module,
    teacher: nn.Module,
    loss_fn: DINOLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    loader: DataLoader,
    schedules: Schedules,
    epoch: int,
    config: TrainConfig,
    device: torch.device,
) -> dict[str, Any]:
    """One pass over the data; returns the epoch's averaged metrics for log.txt."""
    student.train()
    teacher.train()
    iters = len(loader)
    temp = float(schedules.teacher_temp[epoch])
    totals = torch.zeros(3, device=device)  # loss, teacher entropy, batch-mean entropy
    start, images = time.perf_counter(), 0
    progress: Progress[list[Tensor]] = Progress(loader, iters, f"epoch {epoch}/{config.epochs}")
    it = epoch * iters
    for i, crops in enumerate(progress):
        it = epoch * iters + i
        set_lr_and_wd(optimizer, float(schedules.lr[it]), float(schedules.weight_decay[it]))
        crops = [c.to(device, non_blocking=True) for c in crops]
        with autocast(device, config.precision):
            teacher_logits = teacher(crops[0])  # the 2 global crops only
            student_logits = student(crops)
        probs = loss_fn.teacher_probs(teacher_logits, temp)
        loss = dino_cross_entropy(student_logits, probs, loss_fn.student_temp)
        if not math.isfinite(loss.item()):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at epoch {epoch}, iteration {i}; training stopped and the "
                "last checkpoint is kept. Try --precision fp32 or bf16 instead of fp16, a lower "
                "--lr, or --clip_grad 3.0"
            )
        loss_fn.update_center(teacher_logits)
        optimizer.zero_grad(set_to_none=True)
        optimizer_step(loss, student, optimizer, scaler, epoch, config)
        update_teacher(teacher, student, float(schedules.momentum[it]))

        with torch.no_grad():
            totals += torch.cat((loss.detach().view(1), teacher_entropies(probs)))
        images += crops[0].shape[0] // 2
        if i % 10 == 0:
            progress.set(
                loss=loss.item(),
                lr=float(schedules.lr[it]),
                img_s=images * get_world_size() / (time.perf_counter() - start),
            )
    elapsed = time.perf_counter() - start
    mean = (totals / max(iters, 1)).tolist()
    return {
        "epoch": epoch,
        "loss": mean[0],
        "lr": float(schedules.lr[it]),
        "weight_decay": float(schedules.weight_decay[it]),
        "teacher_temp": temp,
        "momentum": float(schedules.momentum[it]),
        "img_per_s": images * get_world_size() / elapsed,
        "teacher_entropy": mean[1],
        "batch_entropy": mean[2],
        "ln_K": math.log(config.out_dim),
        "epoch_time_s": elapsed,
    }


def optimizer_step(
    loss: Tensor,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    config: TrainConfig,
) -> None:
    """Backward, per-parameter clipping, the frozen last layer, then the update."""
    if scaler is None:
        loss.backward()
        if config.clip_grad:
            clip_gradients(student, config.clip_grad)
        cancel_last_layer_gradients(student, epoch, config.freeze_last_layer)
        optimizer.step()
        return
    scaler.scale(loss).backward()
    if config.clip_grad:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        clip_gradients(student, config.clip_grad)
    cancel_last_layer_gradients(student, epoch, config.freeze_last_layer)
    scaler.step(optimizer)
    scaler.update()


def save_checkpoint(
    out: Path,
    epoch: int,
    config: TrainConfig,
    student: nn.Module,
    teacher: nn.Module,
    loss_fn: DINOLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """``checkpoint.pth`` every epoch; ``checkpoint{epoch:04}.pth`` every saveckp_freq epochs."""
    if not is_main_process():
        return
    state = {
        "student": student.state_dict(),
        "teacher": teacher.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch + 1,
        "args": config.to_dict(),
        "dino_loss": loss_fn.state_dict(),
    }
    if scaler is not None:
        state["fp16_scaler"] = scaler.state_dict()
    save_atomic(state, out / CHECKPOINT)
    if config.saveckp_freq and epoch % config.saveckp_freq == 0:
        save_atomic(state, out / f"checkpoint{epoch:04}.pth")


def resume(
    path: Path,
    config: TrainConfig,
    student: nn.Module,
    teacher: nn.Module,
    loss_fn: DINOLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> int:
    """Restore everything from ``path`` if it exists; returns the epoch to start from."""
    if not path.exists():
        return 0
    ckpt = load_file(path)
    saved = ckpt.get("args") or {}
    for key in (
        "arch",
        "patch_size",
        "out_dim",
        "embed_dim",
        "depth",
        "num_heads",
        "use_bn_in_head",
    ):
        theirs = saved.get(key) if isinstance(saved, dict) else getattr(saved, key, None)
        if theirs is not None and theirs != getattr(config, key):
            raise CheckpointError(
                f"{path}: was trained with {key}={theirs}, but this run asks for "
                f"{key}={getattr(config, key)}; use another --output_dir or the same {key}"
            )
    load_strict(student, strip_prefixes(ckpt["student"], ("module.",)), f"student ({config.arch})")
    load_strict(teacher, strip_prefixes(ckpt["teacher"], ("module.",)), f"teacher ({config.arch})")
    loss_fn.load_state_dict(ckpt["dino_loss"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and "fp16_scaler" in ckpt:
        scaler.load_state_dict(ckpt["fp16_scaler"])
    epoch = int(ckpt["epoch"])
    log(f"resumed from {path} at epoch {epoch}")
    return epoch


def append_log(out: Path, stats: dict[str, Any]) -> None:
    if is_main_process():
        with open(out / "log.txt", "a") as f:
            f.write(json.dumps(stats) + "\n")


@dataclass
class KNNProbe:
    """Weighted k-NN accuracy (T = 0.07) of a backbone: labelled bank -> held-out queries."""

    bank: Dataset
    queries: Dataset
    k: int = 20
    every: int = 1  # epochs between measurements; 0: only before / after training

    def __call__(self, backbone: nn.Module, device: torch.device, precision: str) -> float:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        was_training = backbone.training
        bank_f, bank_y = extract_features(backbone, self.bank, device, dtype=dtype)
        query_f, query_y = extract_features(backbone, self.queries, device, dtype=dtype)
        backbone.train(was_training)
        return knn_classify(bank_f, bank_y, query_f, query_y, ks=(self.k,))[0].top1


def build_knn_probe(config: TrainConfig) -> KNNProbe | None:
    """k-NN on ``val_path`` queries against ``knn_train_path`` (or a labelled ``data_path``);
    else the demo's labelled splits (its labels were kept aside); else None.
    """
    if not is_main_process():
        return None
    transform = eval_transform(config.global_crop_size)
    if config.val_path is not None:
        bank_path = config.knn_train_path or config.data_path
        bank_flag = "knn_train_path" if config.knn_train_path else "data_path"
        if bank_path is None:
            raise ConfigError("val_path: needs knn_train_path or data_path as the k-NN bank")
        try:
            bank = labelled_folder(bank_path, transform)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"{bank_flag}: the k-NN bank needs class subfolders; {e}") from None
        try:
            queries = labelled_folder(config.val_path, transform, bank.classes)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"val_path: {e}") from None
        return KNNProbe(bank, queries, every=config.eval_every or 1)
    if not config.is_demo:
        return None
    splits = demo_splits(seed=0)
    return KNNProbe(
        ImageList(splits.train, splits.train_labels, transform),
        ImageList(splits.val, splits.val_labels, transform),
        every=config.eval_every,
    )
