"""Per-iteration schedules (DINO section 3.2): lr, weight decay, teacher momentum."""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    base: float,
    final: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: int = 0,
    warmup_start: float = 0.0,
) -> np.ndarray:
    """One value per iteration: linear warm-up from ``warmup_start`` to ``base`` over
    ``warmup_epochs``, then a half cosine from ``base`` down (or up) to ``final``.

    Closed form after the warm-up, with T = total - warmup iterations and t counted from 0:
    final + (base - final) * (1 + cos(pi * t / T)) / 2.
    """
    total = epochs * iters_per_epoch
    warmup_iters = min(warmup_epochs * iters_per_epoch, total)
    warmup = np.linspace(warmup_start, base, warmup_iters)
    t = np.arange(total - warmup_iters)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t / max(len(t), 1)))
    return np.concatenate((warmup, cosine))


def scaled_lr(lr: float, total_batch: int) -> float:
    """The linear scaling rule: lr = base lr * total batch / 256."""
    return lr * total_batch / 256.0
