"""What the trainer measures and says around the epochs: the untrained network's floors,
feature health and k-NN after each epoch, skipped files, signs of collapse, and which
epoch's weights are the best so far (``checkpoint_best.pth``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dino.data.folder import ImageList
from dino.progress import log, warn
from dino.recipe import Recipe
from dino.training.diagnostics import diagnose_collapse
from dino.training.guard import BEST, BestEpoch, better_epoch, feature_collapse, initial_best
from dino.training.probes import FeatureHealth, HealthProbe, KNNProbe, build_health_probe

LEARNING_GAIN = 3.0  # k-NN points over the untrained network that count as learning


def report_epoch(
    stats: dict[str, Any],
    recipe: Recipe,
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
        stats["teacher_entropy"], stats["batch_entropy"], recipe, iterations, images
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


@dataclass
class Monitor:
    """The measurements of one run: built on the untrained network, updated after each epoch."""

    health_probe: HealthProbe
    knn_probe: KNNProbe | None
    recipe: Recipe
    iterations: int  # of the whole run
    images: int
    device: torch.device
    precision: str
    health_before: FeatureHealth
    knn_before: float | None
    raw_pixels: float | None
    best: BestEpoch
    advised: set[str] = field(default_factory=set)  # kinds of collapse already explained
    start_label: str = "untrained"  # the network before training: untrained or pretrained

    @classmethod
    def start(
        cls,
        untrained: nn.Module,
        images: ImageList,
        knn_probe: KNNProbe | None,
        crop_size: int,
        recipe: Recipe,
        iterations: int,
        device: torch.device,
        precision: str,
        saved_best: Any = None,
        start: str = "untrained",
    ) -> Monitor:
        """Measure the ``untrained`` backbone (the floor every later figure is read against;
        ``start`` names it: "pretrained" in continued pretraining); ``saved_best`` is a
        resumed run's record of its best epoch."""
        health_probe = build_health_probe(images, crop_size)
        with torch.random.fork_rng(devices=[]):  # training draws what it drew without it
            knn_before = knn_probe(untrained, device, precision) if knn_probe else None
            health_before = health_probe(untrained, device, precision)
        raw_pixels = knn_probe.raw_pixels() if knn_probe else None
        log(
            f"{start} network: {health_before.describe()}"
            + (f", k-NN top-1 {knn_before:.1f}%" if knn_before is not None else "")
            + (f" (raw pixels {raw_pixels:.1f}%)" if raw_pixels is not None else "")
        )
        best = BestEpoch.from_dict(saved_best) or initial_best(knn_before)
        return cls(
            health_probe, knn_probe, recipe, iterations, len(images), device, precision,
            health_before, knn_before, raw_pixels, best, start_label=start,
        )  # fmt: skip

    def after_epoch(
        self, epoch: int, teacher: nn.Module, stats: dict[str, Any], last: bool = False
    ) -> bool:
        """Measure the teacher's backbone after ``epoch``, add the figures to ``stats``, say
        what is wrong; True when these weights are the new best. The k-NN probe runs every
        ``probe.every`` epochs and after the ``last``, so the final weights always compete
        for the best by the same measure as the others."""
        health = self.health_probe(teacher, self.device, self.precision)
        stats.update(rank=health.rank, mean_cosine=health.mean_cosine)
        floors = {"rank_before": self.health_before.rank, "knn_before": self.knn_before,
                  "mean_cosine_before": self.health_before.mean_cosine,
                  "knn_raw_pixels": self.raw_pixels}  # fmt: skip
        stats.update({k: v for k, v in floors.items() if v is not None})  # for dino plot
        knn = None
        probe = self.knn_probe
        if probe is not None and (last or probe.every and (epoch + 1) % probe.every == 0):
            knn = stats["knn_top1"] = probe(teacher, self.device, self.precision)
        log(
            f"epoch {epoch}: {health.describe()}"
            + (
                f"; k-NN top-1 {knn:.1f}% ({self.start_label} {self.knn_before:.1f}%)"
                if knn is not None
                else ""
            )
        )
        gain = None if knn is None or self.knn_before is None else knn - self.knn_before
        report_epoch(stats, self.recipe, self.iterations, self.images, self.advised, gain)
        collapse = feature_collapse(health, self.health_before, knn, self.knn_before, self.recipe)
        if collapse is not None:
            warn(f"epoch {epoch}: {collapse}; {BEST} keeps {self.best.describe()}")
        new_best = better_epoch(self.best, epoch, health, knn)
        self.best = new_best or self.best
        return new_best is not None
