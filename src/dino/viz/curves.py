"""``dino plot``: a run's curves from its ``log.txt`` (one JSON record per epoch), on one
PNG that needs no TensorBoard.

Eight panels, against the epoch: the loss with ln K (a uniform teacher pins it there); each
loss term as computed, before weighting; the teacher's mean per-image entropy and the
entropy of its batch-mean distribution with ln K (DINO section 5.3: collapse to uniform
puts both at ln K, collapse to one dimension puts the first near 0); k-NN top-1 with the
network before training and k-NN on raw pixels as floors; the features' effective rank and
mean cosine (RankMe; 1 and 1.0 mean every image at one point) with their values before
training; the learning rate and the teacher momentum at each epoch's end.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dino.errors import DataError
from dino.viz.figures import new_figure

LOG = "log.txt"
PANELS = (
    "loss",
    "loss terms",
    "teacher entropy",
    "k-NN top-1 (%)",
    "effective rank",
    "mean cosine",
    "learning rate",
    "teacher momentum",
)


def find_log(run: str | Path) -> Path:
    """``run/log.txt`` for a run folder, ``run`` itself for a file."""
    path = Path(run)
    log = path / LOG if path.is_dir() else path
    if not log.is_file():
        raise DataError(f"{run}: no {LOG} (dino train writes it when its first epoch ends)")
    return log


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``dino train`` log, one per epoch in epoch order (of an epoch logged
    twice, the later line). Raises DataError naming the line that is not a record."""
    records: dict[int, dict[str, Any]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {n}: not a JSON record ({e.msg})") from None
        if not isinstance(record, dict) or not all(
            isinstance(record.get(k), int | float) for k in ("epoch", "loss")
        ):
            raise DataError(f"{path} line {n}: not a dino train record (no epoch and loss)")
        records[int(record["epoch"])] = record
    if not records:
        raise DataError(f"{path}: empty; no epoch has finished yet")
    return [records[e] for e in sorted(records)]


def loss_terms(record: dict[str, Any]) -> list[str]:
    """The names of the loss terms: the keys between ``loss`` and ``teacher_entropy``, where
    the trainer puts what ``train_step`` returns (``dino``, ``koleo`` with DINOv2's term)."""
    keys = list(record)
    after = keys[keys.index("loss") + 1 :]
    end = after.index("teacher_entropy") if "teacher_entropy" in after else 0
    return after[:end]


def plot_curves(
    records: Sequence[dict[str, Any]], output: str | Path, title: str
) -> dict[str, list[str]]:
    """Draw ``records`` (``read_log``) as the eight panels of ``PANELS`` on one PNG at
    ``output`` (1600 x 760 px); returns each panel's title and the labels of its lines."""
    fig = new_figure(16, 7.6, "dino plot")
    axes = fig.subplots(2, 4).flatten()
    epochs = [r["epoch"] for r in records]

    def series(key: str) -> tuple[list[int], list[float]]:
        found = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), int | float)]
        return [e for e, _ in found], [float(v) for _, v in found]

    def draw(ax: Any, key: str, label: str | None = None) -> bool:
        x, y = series(key)
        if x:
            ax.plot(x, y, "o-", markersize=3, label=label or key)
        return bool(x)

    def floor(ax: Any, key: str, label: str, style: str = "--") -> None:
        _, y = series(key)
        if y:
            ax.axhline(y[-1], color="grey", linestyle=style, linewidth=1, label=label)

    def missing(ax: Any, why: str) -> None:
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="grey")

    loss, terms, entropy, knn, rank, cosine, lr, momentum = axes
    draw(loss, "loss", "total")
    floor(loss, "ln_K", "ln K")
    for name in loss_terms(records[0]):
        draw(terms, name)
    if not loss_terms(records[0]):
        missing(terms, "no terms logged")
    draw(entropy, "teacher_entropy", "per image")
    draw(entropy, "batch_entropy", "of the batch mean")
    floor(entropy, "ln_K", "ln K")
    if draw(knn, "knn_top1", "teacher"):
        floor(knn, "knn_before", "before training")
        floor(knn, "knn_raw_pixels", "raw pixels", ":")
    else:
        missing(knn, "not measured\n(--val_path, --eval_every; the demo measures it)")
    for ax, key in ((rank, "rank"), (cosine, "mean_cosine")):
        if draw(ax, key, "teacher"):
            floor(ax, f"{key}_before", "before training")
        else:
            missing(ax, "not measured")
    draw(lr, "lr")
    draw(momentum, "momentum")
    from matplotlib.ticker import MaxNLocator

    for ax, name in zip(axes, PANELS, strict=True):
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(fontsize="small")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.suptitle(f"{title}: {len(records)} epoch(s)" + _ln_k_note(records[-1]))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    return {ax.get_title(): ax.get_legend_handles_labels()[1] for ax in axes}


def _ln_k_note(record: dict[str, Any]) -> str:
    ln_k = record.get("ln_K")
    return f", K = {round(math.exp(ln_k))} (ln K = {ln_k:.2f})" if ln_k else ""
