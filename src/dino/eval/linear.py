"""Linear probe on frozen features (DINO section 4.1 and appendix B).

One linear layer on the frozen backbone's features (by default the [CLS] tokens of the last
4 blocks, ``lastn_cls``), trained with SGD (momentum 0.9, no weight decay, lr 0.001 x
batch / 256, cosine to 0, stepped once per epoch as the reference's CosineAnnealingLR, or
every iteration) on RandomResizedCrop + flip views; validation features are
computed once (the backbone is frozen and the validation transform fixed). ``linear.pth``
in the output folder holds the classifier after every epoch; running again resumes.
``load_linear_head`` reads it, or a linear head published with the reference weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dino.checkpoint import (
    CheckpointError,
    check_loadable,
    load_file,
    load_strict,
    save_atomic,
    strip_prefixes,
    tensor_state,
)
from dino.data.folder import SkipBadImages
from dino.distributed import (
    epoch_generator,
    get_rank,
    get_world_size,
    is_distributed,
    is_main_process,
)
from dino.eval.features import FeatureFn, extract_features
from dino.eval.metrics import topk_accuracy
from dino.progress import Progress, append_json_line, log
from dino.schedules import cosine_schedule, scaled_lr

CHECKPOINT = "linear.pth"
LR_SCHEDULES = ("epoch", "iteration")


def linear_lr_schedule(
    lr: float, epochs: int, iters_per_epoch: int, step: str = "epoch"
) -> np.ndarray:
    """The probe's learning rate at every iteration: a cosine from ``lr`` to 0 over training.

    ``epoch`` (the reference: torch's CosineAnnealingLR(T_max=epochs, eta_min=0) stepped
    after each epoch): lr (1 + cos(pi e / epochs)) / 2 for the whole of epoch e.
    ``iteration``: the same curve evaluated at every iteration.
    """
    if step not in LR_SCHEDULES:
        raise ValueError(f"lr schedule: unknown {step!r}; valid: {', '.join(LR_SCHEDULES)}")
    if step == "iteration":
        return cosine_schedule(lr, 0.0, epochs, iters_per_epoch)
    return np.repeat(cosine_schedule(lr, 0.0, epochs, 1), iters_per_epoch)


class LinearClassifier(nn.Module):
    """(B, D) features -> (B, C) logits; weights N(0, 0.01), bias 0."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


@dataclass(frozen=True)
class LinearResult:
    top1: float  # percent, after the last epoch
    top5: float | None  # percent; None with 5 classes or fewer
    best_top1: float
    epochs_run: int
    output_dir: Path


def train_linear(
    backbone: nn.Module,
    features: FeatureFn,
    train_set: Dataset,
    val_set: Dataset,
    *,
    num_classes: int,
    output_dir: str | Path,
    epochs: int = 100,
    lr: float = 0.001,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    num_workers: int = 0,
    seed: int = 0,
    run_info: dict[str, Any] | None = None,
    lr_schedule: str = "epoch",
) -> LinearResult:
    """Train the probe for ``epochs`` (resuming from ``output_dir``); report top-1 / top-5.

    ``batch_size`` is per process (the reference's 128 per GPU); the peak lr is ``lr`` x
    total batch / 256; ``lr_schedule`` as ``linear_lr_schedule``.

    ``run_info`` (plain values: feature head, class names, ...) is saved with the classifier
    and must match on resume. Prints one line per epoch; appends it to ``log.txt``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    backbone.to(device).eval()
    val = extract_features(
        backbone, val_set, device, batch_size, num_workers, dtype, features, "val features"
    )
    if val.skipped:
        log(f"val features: left out {len(val.skipped)} unreadable image(s): {val.skipped[0]} ...")
    val_x, val_y = val.features, val.labels
    classifier = LinearClassifier(val_x.shape[1], num_classes).to(device)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.0, momentum=0.9, weight_decay=0.0)
    info = {**(run_info or {}), "dim": val_x.shape[1], "num_classes": num_classes}
    start, best = resume_linear(out / CHECKPOINT, classifier, optimizer, info)
    world = get_world_size()
    iters = math.ceil(len(train_set) / (batch_size * world))  # type: ignore[arg-type]
    lrs = linear_lr_schedule(scaled_lr(lr, batch_size * world), epochs, iters, lr_schedule)
    # Under torchrun each process trains on its share; gradients are averaged (DDP).
    trained = DistributedDataParallel(classifier) if is_distributed() else classifier
    top1, top5 = evaluate_linear(classifier, val_x, val_y)
    if start >= epochs:
        log(f"{out / CHECKPOINT} has already trained {start} of {epochs} epochs")
    for epoch in range(start, epochs):
        images = SkipBadImages(train_set)  # an unreadable image is replaced by another one
        sampler: DistributedSampler = DistributedSampler(
            images, get_world_size(), get_rank(), seed=seed
        )
        sampler.set_epoch(epoch)
        loader = DataLoader(
            images,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            generator=epoch_generator(seed, epoch),
            collate_fn=_drop_skip_lists,
        )
        loss = train_linear_epoch(
            backbone, features, trained, optimizer, loader, lrs, epoch, epochs, device, dtype
        )
        top1, top5 = evaluate_linear(classifier, val_x, val_y)
        best = max(best, top1)
        args = {**info, "epochs": epochs, "lr": lr, "batch_size": batch_size}
        save_linear(out, classifier, optimizer, epoch, best, args)
        stats = {"epoch": epoch, "loss": loss, "lr": float(lrs[(epoch + 1) * iters - 1])}
        append_log(out, {**stats, "top1": top1, "top5": top5})
        five = f"  top-5 {top5:.1f}%" if top5 is not None else ""
        log(f"linear epoch {epoch}: loss {loss:.4f}  top-1 {top1:.1f}%{five}")
    return LinearResult(top1, top5, max(best, top1), max(epochs - start, 0), out)


def _drop_skip_lists(batch: list[tuple[Tensor, int, int, list[str]]]) -> tuple[Tensor, Tensor]:
    return torch.stack([x for x, *_ in batch]), torch.as_tensor([y for _, y, *_ in batch])


def save_linear(
    out: Path,
    classifier: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    best_top1: float,
    args: dict[str, Any],
) -> None:
    """``linear.pth``: classifier, optimizer, next epoch, best top-1 and the run's values."""
    if not is_main_process():
        return
    state = {
        "linear": classifier.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch + 1,
        "best_top1": best_top1,
        "args": args,
    }
    save_atomic(state, out / CHECKPOINT)


def append_log(out: Path, stats: dict[str, Any]) -> None:
    append_json_line(out / "log.txt", stats)


def train_linear_epoch(
    backbone: nn.Module,
    features: FeatureFn,
    classifier: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    lrs: Any,
    epoch: int,
    epochs: int,
    device: torch.device,
    dtype: torch.dtype | None,
) -> float:
    """One pass of SGD over augmented views; the backbone stays frozen. Returns mean loss."""
    classifier.train()
    total, batches = 0.0, 0
    progress: Progress[Any] = Progress(loader, len(loader), f"linear epoch {epoch}/{epochs}")
    for i, (images, target) in enumerate(progress):
        for group in optimizer.param_groups:
            group["lr"] = float(lrs[epoch * len(loader) + i])
        images, target = images.to(device, non_blocking=True), target.to(device)
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            x = features(backbone, images).float()  # (B, D)
        loss = F.cross_entropy(classifier(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, batches = total + loss.item(), batches + 1
        if i % 10 == 0:
            progress.set(loss=loss.item())
    return total / max(batches, 1)


@torch.no_grad()
def linear_scores(classifier: nn.Module, x: Tensor) -> Tensor:
    """The classifier's logits (N, C) on the CPU for features x (N, D), 4096 rows at a time."""
    classifier.eval()
    device = next(classifier.parameters()).device
    return torch.cat([classifier(b.to(device)).float().cpu() for b in x.split(4096)])


def evaluate_linear(classifier: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float | None]:
    """Top-1 and top-5 accuracy (percent) on features x (N, D) with labels y (N,).

    Top-5 is None with 5 classes or fewer, where it would always be 100 %.
    """
    scores = linear_scores(classifier, x)  # (N, C)
    top1, top5 = topk_accuracy(scores, y, (1, 5))
    return top1, top5 if scores.shape[1] > 5 else None


@dataclass(frozen=True)
class LinearHead:
    """A trained linear classifier read from a file, and what the file says about it."""

    classifier: LinearClassifier  # in eval mode, on the CPU
    classes: list[str] | None  # class names in output order, where the file records them
    info: dict[str, Any]  # the run's values recorded by dino linear; empty for the reference's


def load_linear_head(path: str | Path, trust: bool = False) -> LinearHead:
    """The linear classifier stored in ``path``, loaded strictly.

    Reads the reference's ``*_linearweights.pth`` (eval_linear.py's checkpoint: the weights
    under ``state_dict``, as ``module.linear.weight`` / ``module.linear.bias`` of its
    DistributedDataParallel-wrapped classifier), a ``linear.pth`` written by ``dino linear``
    (``linear`` and the run's ``args``, class names included) or a bare state dict.
    """
    obj = load_file(path, trust)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    info: dict[str, Any] = {}
    state = obj
    if isinstance(obj.get("state_dict"), Mapping):  # the reference's
        state = obj["state_dict"]
    elif isinstance(obj.get("linear"), Mapping):  # ours
        state, info = obj["linear"], dict(obj.get("args") or {})
    try:
        state = strip_prefixes(tensor_state(state), ("module.",))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    weight = state.get("linear.weight")
    if weight is None or weight.ndim != 2:
        keys = ", ".join(list(state)[:4]) or "none"
        raise CheckpointError(f"{path}: no linear classifier (linear.weight) in it; keys: {keys}")
    with torch.device("meta"):  # shapes without memory, checked before allocating
        shell = LinearClassifier(weight.shape[1], weight.shape[0])
    check_loadable(shell, state, str(path), "linear classifier")
    classifier = LinearClassifier(weight.shape[1], weight.shape[0])
    classifier.load_state_dict(state, strict=True)
    classes = info.get("classes")
    return LinearHead(classifier.eval(), list(classes) if classes else None, info)


def resume_linear(
    path: Path, classifier: nn.Module, optimizer: torch.optim.Optimizer, info: dict[str, Any]
) -> tuple[int, float]:
    """Restore classifier and optimizer from ``path`` if it exists: (next epoch, best top-1).

    A probe saved for other features or classes is refused, naming the differing field.
    """
    if not path.exists():
        return 0, 0.0
    ckpt = load_file(path)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("linear"), Mapping):
        raise CheckpointError(f"{path}: not a linear probe written by dino linear (no 'linear')")
    saved = ckpt.get("args")
    saved = saved if isinstance(saved, Mapping) else {}
    for key, value in info.items():
        if key in saved and saved[key] != value:
            raise CheckpointError(
                f"{path}: was trained with {key}={saved[key]!r}, this run has {key}={value!r}; "
                "use another --output_dir"
            )
    load_strict(classifier, tensor_state(ckpt["linear"]), f"linear classifier of {path}")
    optimizer.load_state_dict(ckpt["optimizer"])
    log(f"resumed the linear probe from {path} at epoch {ckpt['epoch']}")
    return int(ckpt["epoch"]), float(ckpt.get("best_top1", 0.0))
