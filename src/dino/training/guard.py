"""The guard against destroyed features: which epoch's weights are the best so far, and a plain
warning when the features collapse (every image at nearly one point, or k-NN below the
untrained network).

The best epoch is chosen by k-NN accuracy where a probe runs (``--val_path`` or the demo),
by the effective rank of the teacher's features otherwise (RankMe: higher ranks go with
better downstream accuracy, Garrido et al. 2023); a collapsed epoch is never chosen. Until
an epoch qualifies, the untrained network is the best: ``checkpoint_best.pth`` never holds
weights worse than those training started from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dino.recipe import Recipe
from dino.training.probes import FeatureHealth

BEST = "checkpoint_best.pth"
KNN_DROP = 3.0  # k-NN points below the untrained network that count as destroying features


@dataclass(frozen=True)
class BestEpoch:
    """The epoch whose weights ``checkpoint_best.pth`` holds (-1: the untrained network)."""

    epoch: int
    by: str  # "knn_top1" or "rank"
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: Any) -> BestEpoch | None:
        if not isinstance(saved, dict):
            return None
        try:
            return cls(int(saved["epoch"]), str(saved["by"]), float(saved["score"]))
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        what = "the untrained network" if self.epoch < 0 else f"epoch {self.epoch}"
        score = f"k-NN {self.score:.1f}%" if self.by == "knn_top1" else f"rank {self.score:.1f}"
        return f"{what} ({score})"


def initial_best(knn_before: float | None) -> BestEpoch:
    """The untrained network, scored by k-NN when measured; by rank it loses to any healthy
    trained epoch (a random network's features are spread but say little)."""
    if knn_before is not None:
        return BestEpoch(-1, "knn_top1", knn_before)
    return BestEpoch(-1, "rank", float("-inf"))


def better_epoch(
    best: BestEpoch, epoch: int, health: FeatureHealth, knn_top1: float | None
) -> BestEpoch | None:
    """The new best if epoch ``epoch`` beats ``best``, else None. Under k-NN selection the
    accuracy decides (an epoch without a measurement does not compete); without labels a
    collapsed epoch never wins."""
    if best.by == "rank" and health.collapsed:
        return None
    score = knn_top1 if best.by == "knn_top1" else health.rank
    if score is None or score < best.score:  # a tie goes to the later, longer-trained epoch
        return None
    return BestEpoch(epoch, best.by, score)


def feature_collapse(
    health: FeatureHealth,
    health_before: FeatureHealth | None,
    knn_top1: float | None,
    knn_before: float | None,
    recipe: Recipe,
) -> str | None:
    """What is wrong with the features and which flags to change; None when they look alive."""
    if health.collapsed:
        finding = (
            f"feature collapse: the teacher maps every image to nearly one point "
            f"({health.describe()}"
            + (f"; untrained {health_before.describe()}" if health_before else "")
            + ")"
        )
        if knn_top1 is not None and knn_before is not None and knn_top1 >= knn_before:
            finding += (
                f"; k-NN ({knn_top1:.1f}%, untrained {knn_before:.1f}%) still reads classes "
                "in what little spread is left"
            )
    elif knn_top1 is not None and knn_before is not None and knn_top1 < knn_before - KNN_DROP:
        finding = (
            f"training is destroying the features: k-NN {knn_top1:.1f}% is below the untrained "
            f"network's {knn_before:.1f}% ({health.describe()})"
        )
    else:
        return None
    tips = []
    if recipe.centering != "sinkhorn":
        tips.append("--centering sinkhorn")
    if recipe.koleo_weight < 0.1:
        tips.append("--koleo_weight 0.1")
    tips.append(f"--lr {recipe.lr / 2:g}")
    return f"{finding}. Try {' '.join(tips)}"
