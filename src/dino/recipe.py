"""Training recipes: the paper's ImageNet values, or values scaled to the run (``--recipe auto``).

DINO's published hyper-parameters were tuned for ImageNet: 1.28 M images, total batch 1024,
100 epochs, about 125k iterations. Several of them are really statements about the length
of training or the size of the data: the teacher's EMA horizon (1 / (1 - momentum) = 250
iterations, 0.2% of training), the warm-ups (10% of training), the frozen last layer (the
first 1%; both capped at the paper's epochs for longer runs), and K = 65536 output
prototypes (about one per 20 images). On a few thousand images and a few hundred iterations
the same numbers leave the teacher lagging most of the run behind the student and the
prototypes outnumbering the images, and the loss sits at ln K. ``auto`` keeps those ratios
instead of the raw numbers (with floors measured on small data, see
benchmarks/bench_small_data.py) and equals ``reference`` at ImageNet scale. On data sets
smaller than ImageNet it also turns on DINOv2's anti-collapse terms (Sinkhorn-Knopp
centering and KoLeo), without which small real data ends with every image at one point.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from dino.config import RECIPE_FIELDS, ConfigError, TrainConfig


@dataclass(frozen=True)
class Recipe:
    """The resolved values of the options that a recipe decides (see config.RECIPE_FIELDS)."""

    out_dim: int
    momentum_teacher: float
    teacher_temp: float
    warmup_teacher_temp: float
    warmup_teacher_temp_epochs: int
    lr: float
    warmup_epochs: int
    freeze_last_layer: int
    centering: str
    koleo_weight: float


@dataclass(frozen=True)
class RunSize:
    images: int
    batch: int  # total over all processes
    epochs: int

    @classmethod
    def of(cls, config: TrainConfig, images: int, world_size: int = 1) -> RunSize:
        """The size of training ``config`` on ``images`` images over ``world_size`` processes."""
        per_process = config.batch_size_per_gpu * config.grad_accum_steps
        return cls(images, per_process * world_size, config.epochs)

    @property
    def steps(self) -> int:
        """Iterations per epoch (full batches only; 0 when the batch exceeds the data)."""
        return self.images // self.batch

    @property
    def iterations(self) -> int:
        return self.epochs * self.steps


REFERENCE = Recipe(
    out_dim=65536,
    momentum_teacher=0.996,
    teacher_temp=0.04,
    warmup_teacher_temp=0.04,
    warmup_teacher_temp_epochs=0,
    lr=0.0005,
    warmup_epochs=10,
    freeze_last_layer=1,
    centering="center",
    koleo_weight=0.0,
)
IMAGENET = RunSize(images=1_281_167, batch=1024, epochs=100)
IMAGES_PER_PROTOTYPE = 20  # ImageNet: 1.28 M images / 65536 prototypes
# Fewer prototypes dip less at the start: the demo at batch 128 (190 iterations), k-NN after
# training (untrained 30.4%): K = 256 26.5%, K = 128 33.1%, K = 64 32.5%. At 624 iterations
# (the demo) K = 128 and 256 end alike: 42.9% and 43.6%.
MIN_OUT_DIM = 64
# Iterations. The loss center averages the last 1 / (1 - 0.9) = 10 batches; a teacher that
# averages fewer than ~5x as many chases the center: measured on the demo with 20 (momentum
# 0.95), the loss swung between one dimension winning (0.9) and uniform (ln K) and k-NN
# ended at 43%, 41% or fell to 21%; with 50 (0.98) it rose steadily to 43.6% in two runs.
MIN_EMA_HORIZON = 50.0
# No recipe value made a shorter run learn. On the demo data 624 iterations at batch 32 took
# k-NN from 31.5% to 43.6% (K = 256); the same run squeezed into 4 epochs (312 iterations)
# ended where it began (30.4% -> 30.1%). At batch 128 (190 iterations) it ended at most 3
# points above the untrained network with K 64 or 128, lr x 0.5, x 1 or x 4, momentum 0.95
# or 0.98, teacher temperature 0.02 or 0.04, 1 or 3 warm-up epochs, a free last layer.
MIN_ITERATIONS = 500  # between 312 (did not learn) and 624 (did)
# DINOv2's anti-collapse terms, on for any data set smaller than ImageNet. The paper's
# recipe pins small data at ln K and can destroy the features: scikit-learn's digits (1437
# training images, batch 32, 352 iterations) ended at k-NN 49.2% from 51.1% untrained with
# Sinkhorn-Knopp alone (every image at one point: rank 1.6 of 192, mean cosine 0.996), at
# 66.9% with Sinkhorn-Knopp and KoLeo 0.1 (rank 49, mean cosine 0.15).
DINOV2_KOLEO_WEIGHT = 0.1
# Teacher temperature under Sinkhorn-Knopp (small data). With the running center a sharper
# teacher lets one dimension win (see above: 0.02 did no better); Sinkhorn-Knopp's equal
# prototype usage rules that out, and a sharper teacher then ends the uniform plateau (the
# `dino` term at ln K) sooner. scikit-learn's digits, batch 32, 30 epochs: with 0.04 the
# term leaves ln K after ~400 iterations and k-NN is 68.1% at epoch 8 (396 iterations),
# 71.7% at epoch 12; with 0.02 it leaves ln K after ~200 and k-NN is 78.9% at epoch 8.
# 8 epochs (352 iterations): 68.3% against 66.9%; the demo (624 iterations): 47.7% against
# 49.4% (one run each; untrained 51.1% and 30.5%).
SINKHORN_TEACHER_TEMP = 0.02


def auto_recipe(size: RunSize) -> Recipe:
    """Reference values, rescaled to the number of images and iterations of ``size``."""
    fraction = min(size.iterations / IMAGENET.iterations, 1.0)
    small_data = size.images < IMAGENET.images
    ref_horizon = 1.0 / (1.0 - REFERENCE.momentum_teacher)
    horizon = max(ref_horizon * fraction, MIN_EMA_HORIZON)
    return Recipe(
        out_dim=auto_out_dim(size.images),
        momentum_teacher=round(1.0 - 1.0 / horizon, 6),
        teacher_temp=SINKHORN_TEACHER_TEMP if small_data else REFERENCE.teacher_temp,
        warmup_teacher_temp=SINKHORN_TEACHER_TEMP if small_data else REFERENCE.warmup_teacher_temp,
        warmup_teacher_temp_epochs=REFERENCE.warmup_teacher_temp_epochs,
        lr=auto_lr(size.batch),
        warmup_epochs=min(
            _epochs(size.epochs, REFERENCE.warmup_epochs / IMAGENET.epochs, minimum=1),
            REFERENCE.warmup_epochs,
        ),
        freeze_last_layer=min(
            _epochs(size.epochs, REFERENCE.freeze_last_layer / IMAGENET.epochs),
            REFERENCE.freeze_last_layer,
        ),
        centering="sinkhorn" if small_data else REFERENCE.centering,
        koleo_weight=DINOV2_KOLEO_WEIGHT if small_data else REFERENCE.koleo_weight,
    )


def auto_out_dim(images: int) -> int:
    """K for ``images`` images: a power of 2 near one prototype per 20, in [64, 65536]."""
    k = 2 ** round(math.log2(max(images / IMAGES_PER_PROTOTYPE, 1.0)))
    return int(min(max(k, MIN_OUT_DIM), REFERENCE.out_dim))


def auto_lr(total_batch: int) -> float:
    """Base lr (per 256 images): the reference's linear rule down to batch 1024, then square-root.

    Linear scaling from the reference's batch 1024 would give a batch of 64 a peak lr of
    1.25e-4, too small to learn anything in a short run; below 1024 the peak follows
    sqrt(batch / 1024) instead (Krizhevsky 2014; Malladi et al. 2022 for Adam).
    """
    ref_peak = REFERENCE.lr * IMAGENET.batch / 256
    if total_batch >= IMAGENET.batch:
        return REFERENCE.lr
    peak = ref_peak * math.sqrt(total_batch / IMAGENET.batch)
    return round(peak * 256 / total_batch, 8)


def short_run_warning(size: RunSize) -> str | None:
    """Advice for a run too short for DINO to learn in; None for a long enough one."""
    if size.iterations >= MIN_ITERATIONS:
        return None
    tips = [f"--epochs {math.ceil(MIN_ITERATIONS / size.steps)}"]
    batch = size.images * size.epochs // MIN_ITERATIONS
    if batch >= 8:
        tips.append(f"a total batch of {batch} or less (now {size.batch})")
    return (
        f"{size.iterations} iterations ({size.epochs} epochs x {size.steps} steps) is short for "
        f"DINO: on small data k-NN accuracy first falls below the untrained network's and "
        f"rises only after a few hundred iterations; for {MIN_ITERATIONS} or more use "
        + " or ".join(tips)
    )


def _epochs(epochs: int, fraction: float, minimum: int = 0) -> int:
    """``fraction`` of ``epochs``, rounded, at least ``minimum`` (and never all of training)."""
    return min(max(round(epochs * fraction), minimum), max(epochs - 1, 0))


def resolve_recipe(config: TrainConfig, images: int, world_size: int = 1) -> TrainConfig:
    """``config`` with every recipe option it leaves unset (None) filled in."""
    size = RunSize.of(config, images, world_size)
    values = REFERENCE if config.recipe == "reference" else auto_recipe(size)
    filled = {
        name: getattr(values, name) for name in RECIPE_FIELDS if getattr(config, name) is None
    }
    return dataclasses.replace(config, **filled)


def recipe_of(config: TrainConfig) -> Recipe:
    """The recipe values of a resolved config; an unresolved one is a programming error."""
    missing = [name for name in RECIPE_FIELDS if getattr(config, name) is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)}: not resolved; call resolve_recipe first")
    return Recipe(**{name: getattr(config, name) for name in RECIPE_FIELDS})


def describe(config: TrainConfig, images: int, world_size: int = 1) -> str:
    """One line: the recipe, the run size and every value of a resolved config."""
    size = RunSize.of(config, images, world_size)
    values = ", ".join(f"{name}={getattr(config, name)}" for name in RECIPE_FIELDS)
    return (
        f"recipe {config.recipe} for {images} images x {config.epochs} epochs at total "
        f"batch {size.batch} ({size.iterations} iterations): {values}"
    )
