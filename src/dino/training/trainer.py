"""DINO pretraining: ``train(config)`` reads as the list of steps it takes (DINO Algorithm 1)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from dino.checkpoint import load_file
from dino.config import TrainConfig
from dino.data.transforms import normalize_batch
from dino.distributed import (
    all_reduce_mean,
    all_reduce_sum,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
    local_device,
)
from dino.errors import NonFiniteLossError, StoppedBySignal
from dino.hardware import autocast_dtype, resolve_device
from dino.loss import DINOLoss
from dino.models import MultiCropWrapper, WithFeatures
from dino.progress import Progress, log, warn
from dino.recipe import short_run_warning
from dino.training.builders import (
    build_student_teacher,
    build_train_images,
    check_output_dir,
    has_batchnorm,
    save_config,
    seed_everything,
)
from dino.training.checkpointing import (
    CHECKPOINT,
    Within,
    append_log,
    remove_partial_writes,
    resume,
    save_checkpoint,
    saved_recipe,
    truncate_log,
)
from dino.training.diagnostics import entropy
from dino.training.ema import update_teacher
from dino.training.feed import Augmenter, ToDevice, build_feed
from dino.training.guard import BEST, BestEpoch
from dino.training.interrupts import Interrupts, requeue_slurm_job
from dino.training.loggers import NullLogger, RunLogger, open_logger, step_scalars
from dino.training.micro import join_micro, micro_batches, micro_rows
from dino.training.optim import (
    build_optimizer,
    cancel_last_layer_gradients,
    clip_gradients,
    param_groups,
    set_lr_and_wd,
)
from dino.training.outdir import RunLock, check_no_links
from dino.training.plan import CropSpec, Plan, make_plan, resolve_augment_on
from dino.training.pretrained import load_pretrained, starting_backbone
from dino.training.probes import build_knn_probe
from dino.training.report import Monitor

MAX_LISTED_SKIPS = 50  # skipped files named per epoch in log.txt


@dataclass
class TrainState:
    """Everything that changes during training and must survive a restart."""

    student: MultiCropWrapper
    teacher: MultiCropWrapper
    loss_fn: DINOLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    # What forward passes run through: the student as (features, logits) (models.WithFeatures)
    # and the teacher, each maybe wrapped by DistributedDataParallel and/or torch.compile
    # (checkpoints and the EMA always use the plain modules above).
    train_student: nn.Module
    run_teacher: nn.Module


@dataclass
class TrainSummary:
    output_dir: Path
    epochs_run: int
    images_per_s: float | None
    knn_before: float | None = None  # top-1 k-NN of the initial network (demo / --val_path)
    knn_after: float | None = None
    knn_raw_pixels: float | None = None  # the same k-NN on the images' pixels
    last_stats: dict[str, Any] = field(default_factory=dict)
    best: BestEpoch | None = None  # the epoch whose weights checkpoint_best.pth holds


def train(config: TrainConfig) -> TrainSummary:
    """Pretrain student and teacher as ``config`` says; resume from ``output_dir`` if possible.

    ``config`` is read here only: what the run needs before its data is counted, then the
    plan (``make_plan``), whose records every later step takes.
    """
    device = resolve_device(config.device)
    init_distributed(device.type)
    device = local_device(device.type)
    out = check_output_dir(Path(config.output_dir))
    lock = RunLock(out) if is_main_process() else None  # one run per folder
    try:
        return _train(config, device, out)
    finally:
        if lock is not None:
            lock.release()


def _train(config: TrainConfig, device: torch.device, out: Path) -> TrainSummary:
    check_no_links(out)
    # Read once: a resume keeps the recipe values its run started with, then restores it.
    saved = load_file(out / CHECKPOINT) if (out / CHECKPOINT).exists() else None
    config = saved_recipe(saved, config)
    config = dataclasses.replace(config, augment_on=resolve_augment_on(config, device))
    seed_everything(config.seed + get_rank())
    images = build_train_images(config.data_path, CropSpec.of(config), config.follow_links)
    plan = make_plan(config, device, len(images), get_world_size())
    log(plan.description)
    if (short := short_run_warning(plan.size)) is not None:
        warn(short)
    state = build_state(plan)
    remove_partial_writes(out)
    point = resume(
        out / CHECKPOINT, state, plan.network, plan.args, plan.control.allow_change, saved
    )
    save_config(out, plan.args)  # after the resume checks: a refused resume writes nothing
    start_epoch, fresh = point.epoch, point.epoch == 0 and point.within is None
    if plan.start is not None and fresh:
        load_pretrained(plan.start, state.student, state.teacher)
    truncate_log(out, start_epoch)
    first_step = start_epoch * plan.steps + (point.within.step if point.within else 0)
    logger = open_logger(config.logger, out, first_step=first_step)
    announce(plan, len(images), start_epoch, point.within)
    monitor = Monitor.start(
        starting_backbone(plan, state.teacher, resumed=not fresh),
        images,
        build_knn_probe(plan.probe),
        plan.crops.global_crop_size,
        plan.recipe,
        plan.size.iterations,
        device,
        plan.optim.precision,
        point.best,
        "untrained" if plan.start is None else "pretrained",
    )
    keep_best = plan.control.keep_best
    if fresh and keep_best:  # until an epoch does better, the untrained weights are the best
        save_checkpoint(out, state, -1, 0, plan.args, monitor.best.to_dict(), names=(BEST,))

    def save_within(epoch: int, iteration: int, within: Within) -> None:
        save_checkpoint(
            out, state, epoch, iteration, plan.args, monitor.best.to_dict(),
            within=within.to_dict(),
        )  # fmt: skip

    feed = build_feed(images, plan.crops, plan.loader, plan.seed, device)
    interrupts = Interrupts(plan.control.checkpoint_every_minutes)
    speeds, stats = [], {}
    try:
        for epoch in range(start_epoch, plan.optim.epochs):
            within = point.within if epoch == start_epoch and point.within else Within()
            loader = feed.loader(epoch, within.step)
            stats = train_one_epoch(
                state, loader, plan, epoch, logger, within, interrupts, save_within, feed.augment
            )
            speeds.append(stats["img_per_s"])
            last = epoch + 1 == plan.optim.epochs
            is_best = monitor.after_epoch(epoch, state.teacher.backbone, stats, last) and keep_best
            append_log(out, stats)  # before the checkpoint: a resume drops lines of re-run epochs
            logger.log_epoch(epoch, (epoch + 1) * plan.steps - 1, stats)
            save_checkpoint(
                out,
                state,
                epoch,
                (epoch + 1) * plan.steps,
                plan.args,
                monitor.best.to_dict(),
                names=(CHECKPOINT, BEST) if is_best else (CHECKPOINT,),
                keep_every=plan.saveckp_freq,
            )
            interrupts.saved()
            # A signal during the epoch's last step, its probes or its checkpoint.
            if (poll := interrupts.poll(device)).stop and epoch + 1 < plan.optim.epochs:
                raise stopped(poll.signum, out, epoch + 1, 0)
    except StoppedBySignal:
        if plan.control.requeue:
            requeue_slurm_job()
        raise
    finally:
        interrupts.close()
        logger.close()
    return summarize(plan, monitor, state, stats, speeds, start_epoch)


def stopped(signum: int, out: Path, epoch: int, step: int) -> StoppedBySignal:
    """The error that ends a run stopped by ``signum`` after its checkpoint at ``epoch``,
    ``step``."""
    import signal

    name = signal.Signals(signum).name if signum else "a signal"
    return StoppedBySignal(
        signum,
        f"stopped by {name}: {out / CHECKPOINT} holds epoch {epoch}, step {step}; the same "
        "command resumes from there",
    )


def announce(plan: Plan, images: int, start_epoch: int, within: Within | None) -> None:
    """Say what the run will do: resumed or not, how much is left, where it writes."""
    epochs, out = plan.optim.epochs, plan.output_dir
    if start_epoch or within:
        step = f", step {within.step} of {plan.steps}" if within else ""
        log(f"resumed from {out / CHECKPOINT} at epoch {start_epoch}{step}")
        if plan.start is not None:
            log(
                f"--pretrained_weights {plan.start.path} not loaded: resuming wins (another "
                "--output_dir starts from the file)"
            )
    if start_epoch >= epochs:
        log(
            f"{out / CHECKPOINT} has already trained {start_epoch} of {epochs} epochs; "
            "raise --epochs to train further"
        )
    log(
        f"training {plan.network.backbone.arch} on {images} images, {plan.steps} steps per "
        f"epoch, epochs {start_epoch}..{epochs - 1}, {plan.device.type} {plan.optim.precision}, "
        f"output {out}"
    )


def summarize(
    plan: Plan,
    monitor: Monitor,
    state: TrainState,
    stats: dict[str, Any],
    speeds: list[float],
    start_epoch: int,
) -> TrainSummary:
    """The run's summary, said: k-NN against its floors, and where the best weights are."""
    epochs, out, best = plan.optim.epochs, plan.output_dir, monitor.best
    summary = TrainSummary(
        out,
        epochs - start_epoch,
        float(np.mean(speeds)) if speeds else None,
        last_stats=stats,
        best=best,
    )
    probe = monitor.knn_probe
    if probe is not None:
        summary.knn_before, summary.knn_raw_pixels = monitor.knn_before, monitor.raw_pixels
        summary.knn_after = stats.get("knn_top1") or probe(
            state.teacher.backbone, plan.device, plan.optim.precision
        )
        log(
            f"k-NN top-1 (k={probe.k}, T=0.07) on the held-out split: "
            f"{summary.knn_before:.1f}% "
            f"{'from --pretrained_weights' if plan.start else 'at initialisation'} -> "
            f"{summary.knn_after:.1f}% after training"
            + (
                f" (raw pixels: {monitor.raw_pixels:.1f}%)"
                if monitor.raw_pixels is not None
                else ""
            )
        )
    if best.epoch != epochs - 1 and (out / BEST).exists():  # (older runs: none)
        warn(
            f"the last epoch's features are not the best this run made: {out / BEST} holds "
            f"{best.describe()}; use it for evaluation"
        )
    return summary


def build_state(plan: Plan) -> TrainState:
    """Networks, loss and optimizer on the plan's device, wrapped for data parallelism when
    several processes run (and compiled when asked)."""
    optim, device, recipe = plan.optim, plan.device, plan.recipe
    student, teacher = build_student_teacher(plan.network, plan.seed)
    if is_distributed() and has_batchnorm(student):
        if device.type == "cuda":
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
        else:
            warn("BatchNorm statistics are per process on CPUs (SyncBatchNorm needs CUDA)")
    student.to(device)
    teacher.to(device)
    optimizer = build_optimizer(optim.optimizer, param_groups(student), fused=device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda") if optim.precision == "fp16" else None
    student_forward: nn.Module = WithFeatures(student)
    teacher_forward: nn.Module = teacher
    if is_distributed():
        student_forward = DistributedDataParallel(
            student_forward, device_ids=[device.index] if device.type == "cuda" else None
        )
    if optim.compile:
        student_forward = torch.compile(student_forward)  # type: ignore[assignment]
        teacher_forward = torch.compile(teacher)  # type: ignore[assignment]
    loss_fn = DINOLoss(recipe.out_dim, centering=recipe.centering, koleo_weight=recipe.koleo_weight)
    return TrainState(
        student, teacher, loss_fn.to(device), optimizer, scaler, student_forward, teacher_forward
    )


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    dtype = autocast_dtype(precision)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def train_one_epoch(
    state: TrainState,
    loader: DataLoader,
    plan: Plan,
    epoch: int,
    logger: RunLogger,
    within: Within | None = None,
    interrupts: Interrupts | None = None,
    save_within: Callable[[int, int, Within], None] | None = None,
    augment: Augmenter | None = None,
) -> dict[str, Any]:
    """One pass over the data from step ``within.step`` on (the sums of the steps before it
    in ``within``); logs each step's scalars to ``logger`` and returns the epoch's averaged
    metrics for log.txt. After each step ``interrupts`` says whether to save a mid-epoch
    checkpoint (through ``save_within``) and whether to stop (StoppedBySignal). ``augment``
    turns each loader batch into the step's crops on the device (default: the batch is
    the crops, ``feed.ToDevice``)."""
    schedules, device = plan.schedules, plan.device
    state.student.train()
    state.teacher.train()
    done = within or Within()
    iters, first = plan.steps, done.step
    totals: dict[str, Tensor | float] = dict(done.sums or {})  # sums of each step metric
    skipped: dict[str, None] = dict.fromkeys(done.skipped_files or [])
    n_skipped, images = done.skipped, done.images
    start = time.perf_counter() - done.seconds
    augment = augment or ToDevice(device)
    progress: Progress[tuple[Any, list[str]]] = Progress(
        loader, iters - first, f"epoch {epoch}/{plan.optim.epochs}"
    )
    it = epoch * iters + first
    for i, (batch, bad_files) in enumerate(progress, start=first):
        it = epoch * iters + i
        crops = [normalize_batch(c) for c in augment(batch, epoch, it)]
        metrics = train_step(state, crops, plan, epoch, it)
        check_finite(metrics["loss"], epoch, i)
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + value
        images += crops[0].shape[0] // 2
        n_skipped += len(bad_files)
        skipped.update(dict.fromkeys(bad_files))
        img_s = images * get_world_size() / (time.perf_counter() - start)
        if not isinstance(logger, NullLogger):  # no per-step scalars read when none are kept
            scalars = step_scalars(metrics, schedules, epoch, it, plan.recipe.out_dim, img_s)
            logger.log_step(epoch, it, scalars)
        if i % 10 == 0:
            progress.set(loss=metrics["loss"].item(), lr=float(schedules.lr[it]), img_s=img_s)
        if interrupts is None or i + 1 == iters:  # the epoch's end writes its own checkpoint
            continue
        poll = interrupts.poll(device)
        if poll.save and save_within is not None:
            sums = {name: float(total) for name, total in totals.items()}
            seconds = time.perf_counter() - start
            save_within(
                epoch, it + 1, Within(i + 1, sums, images, n_skipped, list(skipped), seconds)
            )
            interrupts.saved()
        if poll.stop:
            raise stopped(poll.signum, plan.output_dir, epoch, i + 1)
    elapsed = time.perf_counter() - start
    mean = {name: float(total) / max(iters, 1) for name, total in totals.items()}
    return {
        "epoch": epoch,
        **mean,
        "lr": float(schedules.lr[it]),
        "weight_decay": float(schedules.weight_decay[it]),
        "teacher_temp": float(schedules.teacher_temp[epoch]),
        "momentum": float(schedules.momentum[it]),
        "img_per_s": images * get_world_size() / elapsed,
        "ln_K": math.log(state.loss_fn.center.shape[-1]),
        "epoch_time_s": elapsed,
        "skipped_images": int(all_reduce_sum(torch.tensor(n_skipped)).item()),
        "skipped_files": list(skipped)[:MAX_LISTED_SKIPS],
    }


def train_step(
    state: TrainState,
    crops: list[Tensor],
    plan: Plan,
    epoch: int,
    it: int,
) -> dict[str, Tensor]:
    """One DINO iteration (Algorithm 1) on this process's crops.

    ``crops`` is [global crops (2B, 3, H, W), local crops (N*B, 3, h, w)], crop-major.
    With gradient accumulation (``grad_accum_steps`` n > 1) the teacher's distributions are
    computed over all B images first (so that centering, Sinkhorn-Knopp included, and the
    center update see the whole batch), then the student runs on n micro-batches of B / n
    images, each back-propagating its share of the loss, and the weights change once: n
    micro-batches give the step of one batch of B (KoLeo, a nearest-neighbour term, is
    taken within each micro-batch, as DINOv2 takes it within each GPU's batch).
    Returns the step's metrics averaged over all processes (the same on every rank): the
    total loss ``loss``, each loss term, the mean teacher entropy ``teacher_entropy`` and the
    entropy of the batch-mean teacher distribution ``batch_entropy``. A non-finite loss
    returns before any weight changes.
    """
    schedules, n = plan.schedules, plan.loader.grad_accum_steps
    set_lr_and_wd(state.optimizer, float(schedules.lr[it]), float(schedules.weight_decay[it]))
    micro = micro_batches(crops, n)
    with autocast(crops[0].device, plan.optim.precision):
        teacher_logits = join_micro([state.run_teacher(m[0]) for m in micro], 2)
    probs = state.loss_fn.teacher_probs(teacher_logits, float(schedules.teacher_temp[epoch]))
    state.optimizer.zero_grad(set_to_none=True)
    total: Tensor | float = 0.0
    terms: dict[str, Tensor | float] = {}
    for j, m in enumerate(micro):
        with sync_gradients(state.train_student, j == n - 1):
            with autocast(crops[0].device, plan.optim.precision):
                student_features, student_logits = state.train_student(m)
            loss, parts = state.loss_fn.objective(
                student_logits, micro_rows(probs, j, n, 2), student_features[: m[0].shape[0]]
            )
            backward(loss / n if n > 1 else loss, state.scaler)
        total = total + loss.detach() / n if n > 1 else loss.detach()
        for name, value in parts.items():
            terms[name] = terms.get(name, 0.0) + (value.detach() / n if n > 1 else value.detach())
    state.loss_fn.update_center(teacher_logits)
    names = ["loss", *terms, "teacher_entropy"]
    values = [total, *terms.values(), entropy(probs).mean()]
    reduced = all_reduce_mean(torch.stack([torch.as_tensor(v).float() for v in values]))
    batch_mean = all_reduce_mean(probs.mean(dim=0))
    metrics = dict(zip(names, reduced, strict=True))
    metrics["batch_entropy"] = entropy(batch_mean)
    if not torch.isfinite(metrics["loss"]):
        return metrics
    optimizer_step(state, epoch, plan.optim.clip_grad, plan.recipe.freeze_last_layer)
    update_teacher(state.teacher, state.student, float(schedules.momentum[it]))
    return metrics


def sync_gradients(model: nn.Module, sync: bool) -> AbstractContextManager[Any]:
    """DistributedDataParallel's ``no_sync`` unless ``sync``: gradients of all but the last
    micro-batch stay local (one all-reduce per step, not per micro-batch)."""
    ddp = getattr(model, "_orig_mod", model)  # under torch.compile
    if sync or not isinstance(ddp, DistributedDataParallel):
        return nullcontext()
    return ddp.no_sync()


def check_finite(loss: Tensor, epoch: int, iteration: int) -> None:
    """Stop on a NaN or infinite loss (every rank sees the same averaged value)."""
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"loss is {value} at epoch {epoch}, iteration {iteration}; training stopped and the "
            "last checkpoint is kept. Try --precision bf16 or fp32 instead of fp16, a lower --lr, "
            "or gradient clipping (--clip_grad 3.0)"
        )


def backward(loss: Tensor, scaler: torch.amp.GradScaler | None) -> None:
    """Gradients of ``loss`` added to the parameters' (scaled under fp16)."""
    (loss if scaler is None else scaler.scale(loss)).backward()


def optimizer_step(state: TrainState, epoch: int, clip_grad: float, freeze_epochs: int) -> None:
    """Per-parameter clipping (``clip_grad`` > 0), no update of the head's last layer during
    the first ``freeze_epochs`` epochs, then the update (the gradients are there)."""
    student, optimizer, scaler = state.train_student, state.optimizer, state.scaler
    if scaler is not None and clip_grad:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if clip_grad:
        clip_gradients(student, clip_grad)
    cancel_last_layer_gradients(student, epoch, freeze_epochs)
    if scaler is None:
        optimizer.step()
        return
    scaler.step(optimizer)
    scaler.update()
