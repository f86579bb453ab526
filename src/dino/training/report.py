"""What the trainer says after each epoch: skipped files and the teacher's signs of collapse."""

from __future__ import annotations

from typing import Any

from dino.config import TrainConfig
from dino.progress import log, warn
from dino.recipe import recipe_of
from dino.training.diagnostics import diagnose_collapse

LEARNING_GAIN = 3.0  # k-NN points over the untrained network that count as learning


def report_epoch(
    stats: dict[str, Any],
    config: TrainConfig,
    iterations: int,
    images: int,
    advised: set[str],
    knn_gain: float | None = None,
) -> None:
    """Warn about skipped files and, after the first epoch, about signs of collapse, with
    advice for a run of ``iterations`` iterations over ``images`` images the first time a
    kind of collapse shows (``advised`` records those), one short line after that.

    ``knn_gain`` is the latest k-NN accuracy minus the untrained network's, where a probe
    runs. A near-uniform teacher is normal on small data while the features improve (the
    small-data bench: entropy 0.96 ln K while k-NN rose from 24% to 40%), so once k-NN is
    clearly up that is said once instead of a warning."""
    if stats["skipped_images"]:
        listed = stats["skipped_files"]
        more = stats["skipped_images"] - len(listed)
        warn(
            f"epoch {stats['epoch']}: skipped {stats['skipped_images']} unreadable image(s): "
            + "; ".join(listed[:5])
            + (f" (+{more} more, see log.txt)" if more or len(listed) > 5 else "")
        )
    found = diagnose_collapse(
        stats["teacher_entropy"], stats["batch_entropy"], recipe_of(config), iterations, images
    )
    if found and found.kind == "uniform collapse" and (knn_gain or 0.0) >= LEARNING_GAIN:
        if "learning" not in advised:
            advised.add("learning")
            log(
                f"epoch {stats['epoch']}: the teacher is near uniform ({found.finding}), but "
                f"k-NN is {knn_gain:.1f} points above the untrained network: it is learning"
            )
    elif found and stats["epoch"] >= 1:
        if found.kind in advised:
            warn(f"epoch {stats['epoch']}: still {found.kind}: {found.finding}")
        else:
            advised.add(found.kind)
            warn(found.message)
