"""Collapse diagnostics (DINO section 5.3): the teacher's entropies next to ln K.

Two failure modes: a uniform teacher (each image's distribution has entropy near ln K and
the loss sits at ln K) and a dominant dimension (the batch-mean distribution has entropy
near 0: every image puts its mass on the same few outputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from dino.recipe import MIN_EMA_HORIZON, MIN_ITERATIONS, Recipe, auto_out_dim


def entropy(probs: Tensor) -> Tensor:
    """Shannon entropy in nats along the last dimension."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)


@dataclass(frozen=True)
class Collapse:
    """A kind of collapse, what was measured, and the flags to change (with values)."""

    kind: str  # "uniform collapse" or "dominant-dimension collapse"
    finding: str
    advice: str

    @property
    def message(self) -> str:
        return f"{self.kind}: {self.finding}. {self.advice}"


def diagnose_collapse(
    teacher_entropy: float,
    batch_entropy: float,
    recipe: Recipe,
    iterations: int,
    images: int,
) -> Collapse | None:
    """Which collapse training shows and which flags to change; None if it looks healthy.

    ``recipe`` holds the run's resolved values, ``iterations`` the length of the whole run and
    ``images`` the size of the data, so that the advice fits this run: a teacher that lags
    the run, too many prototypes for the data, a temperature that cannot sharpen.
    """
    ln_k = math.log(recipe.out_dim)
    horizon = 1.0 / max(1.0 - recipe.momentum_teacher, 1e-9)  # the teacher's EMA window
    tips = []
    if teacher_entropy > 0.9 * ln_k:
        # No sharper teacher: --teacher_temp 0.02 made it worse in every small run measured
        # (the demo at batch 128: 31.1% after one epoch, 22.4% after ten; untrained 30.4%).
        suggested = max(0.1 * iterations, MIN_EMA_HORIZON)  # 10% of the run, not under 50
        if horizon > 2 * suggested:
            momentum = 1 - 1 / suggested
            tips.append(
                f"--momentum_teacher {momentum:.4g} (the teacher averages {horizon:.0f} "
                f"iterations of a {iterations}-iteration run and lags the student)"
            )
        k = auto_out_dim(images)
        if recipe.out_dim > 2 * k:
            tips.append(f"--out_dim {k} ({recipe.out_dim} prototypes for {images} images)")
        if iterations < MIN_ITERATIONS:
            tips.append(
                f"at least {MIN_ITERATIONS} iterations (this run has {iterations}): "
                "more epochs or a smaller batch"
            )
        return Collapse(
            "uniform collapse",
            f"the teacher's per-image entropy is {teacher_entropy:.2f} of ln K = {ln_k:.2f}, "
            "so the loss stays near ln K",
            (f"Try {'; '.join(tips)}. " if tips else "")
            + "The loss can stay near ln K while the features improve: judge by the k-NN "
            "accuracy (--val_path with class subfolders).",
        )
    if batch_entropy < 0.5 * math.log(2) or batch_entropy < 0.1 * ln_k:
        if horizon < 40:  # well under the auto recipe's floor of 50
            tips.append(
                f"--momentum_teacher 0.99 (the teacher follows the student within "
                f"{horizon:.0f} iterations)"
            )
        if recipe.teacher_temp < 0.04:
            tips.append("--teacher_temp 0.04")
        else:
            tips.append(f"--warmup_teacher_temp_epochs {max(recipe.warmup_epochs, 1)}")
        tips.append(f"--lr {recipe.lr / 2:g}")
        return Collapse(
            "dominant-dimension collapse",
            f"the batch-mean teacher distribution has entropy {batch_entropy:.2f} "
            f"(ln K = {ln_k:.2f}); every image maps to the same outputs",
            f"Try {'; '.join(tips)}, and check that the images are not near-duplicates.",
        )
    return None
