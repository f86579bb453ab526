"""Dashboards of a training run (``--logger tensorboard|csv|none``), beside the JSON
``log.txt`` that every run writes.

The trainer opens one logger per run (``open_logger``), calls ``log_step`` after every
iteration with ``step_scalars`` (the loss and each of its terms, the teacher's entropies
next to ln K, lr, weight decay, teacher momentum and temperature, img/s, peak memory) and
``log_epoch`` after every epoch with the record it appends to ``log.txt`` (k-NN and
feature health with their floors, the network before training and raw pixels; the epoch's
means). Steps are global iteration indices; an epoch's record sits at its last
iteration. Only the main process writes. A resumed run first drops what the interrupted
one logged from the iteration it resumes at (TensorBoard's ``purge_step``; the CSV files
are rewritten without those rows).

- ``tensorboard``: event files in ``OUTPUT_DIR/tensorboard`` (``tensorboard --logdir
  OUTPUT_DIR``), scalars grouped by tag prefix, and charts that draw the loss and the
  entropies on one axis with ln K, and k-NN with its floors (Custom Scalars tab). Needs
  the ``tensorboard`` extra.
- ``csv``: ``OUTPUT_DIR/steps.csv`` (one row per iteration) and ``OUTPUT_DIR/epochs.csv``
  (one row per epoch), a header row and plain numbers, for spreadsheets and pandas.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from dino.config import LOGGERS
from dino.distributed import is_main_process
from dino.errors import ConfigError
from dino.training.plan import Schedules

TENSORBOARD_DIR = "tensorboard"
STEPS_CSV, EPOCHS_CSV = "steps.csv", "epochs.csv"

# TensorBoard tags: the dashboard groups scalars by the part before "/". A step scalar not
# named here is a loss term (loss/<name>); an epoch scalar not named here is epoch/<name>.
STEP_TAGS: dict[str, tuple[str, ...]] = {
    "loss": ("loss/total",),
    "ln_K": ("loss/ln_K", "entropy/ln_K"),  # uniform teacher: loss and entropy sit at ln K
    "teacher_entropy": ("entropy/teacher",),
    "batch_entropy": ("entropy/batch",),
    "lr": ("schedule/lr",),
    "weight_decay": ("schedule/weight_decay",),
    "momentum": ("schedule/momentum",),
    "teacher_temp": ("schedule/teacher_temp",),
    "img_per_s": ("speed/img_per_s",),
    "peak_memory_gib": ("memory/peak_gib",),
}
EPOCH_TAGS: dict[str, str] = {
    "knn_top1": "knn/top1",
    "knn_before": "knn/before",
    "knn_raw_pixels": "knn/raw_pixels",
    "rank": "health/effective_rank",
    "rank_before": "health/effective_rank_before",
    "mean_cosine": "health/mean_cosine",
    "mean_cosine_before": "health/mean_cosine_before",
}
# Multi-line charts of the Custom Scalars tab: what a collapse looks like, on one axis.
CHARTS = {
    "collapse": {
        "loss and ln K": ["Multiline", ["loss/total", "loss/ln_K"]],
        "teacher entropies and ln K": [
            "Multiline",
            ["entropy/teacher", "entropy/batch", "entropy/ln_K"],
        ],
        "k-NN top-1 and its floors": [
            "Multiline",
            ["knn/top1", "knn/before", "knn/raw_pixels"],
        ],
    }
}


class RunLogger(Protocol):
    def log_step(self, epoch: int, step: int, scalars: Mapping[str, float]) -> None: ...

    def log_epoch(self, epoch: int, step: int, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def open_logger(kind: str, output_dir: str | Path, first_step: int) -> RunLogger:
    """The ``kind`` logger of a run writing to ``output_dir`` that starts (or resumes) at
    global iteration ``first_step``; what an earlier attempt logged from there is dropped.
    Other processes than the main one get a logger that writes nothing."""
    if kind not in LOGGERS:
        raise ConfigError(f"logger: expected one of {', '.join(LOGGERS)}, got {kind!r}")
    if kind == "none" or not is_main_process():
        return NullLogger()
    if kind == "csv":
        return CSVLogger(Path(output_dir), first_step)
    return TensorBoardLogger(Path(output_dir) / TENSORBOARD_DIR, first_step)


def step_scalars(
    metrics: Mapping[str, Tensor],
    schedules: Schedules,
    epoch: int,
    step: int,
    out_dim: int,
    images_per_s: float,
) -> dict[str, float]:
    """One iteration's scalars: ``metrics`` (the loss, its terms and the teacher entropies,
    as ``train_step`` returns them, read with one device synchronisation), ln K for
    K = ``out_dim``, the scheduled values at global iteration ``step`` of ``epoch``,
    ``images_per_s`` and the peak memory so far (GiB of the GPU, else of the process)."""
    values = torch.stack([v.detach().float().reshape(()) for v in metrics.values()]).tolist()
    scalars = dict(zip(metrics, values, strict=True))
    scalars.update(
        ln_K=math.log(out_dim),
        lr=float(schedules.lr[step]),
        weight_decay=float(schedules.weight_decay[step]),
        momentum=float(schedules.momentum[step]),
        teacher_temp=float(schedules.teacher_temp[epoch]),
        img_per_s=float(images_per_s),
    )
    device = next(iter(metrics.values())).device if metrics else torch.device("cpu")
    if (memory := peak_memory_gib(device)) is not None:
        scalars["peak_memory_gib"] = memory
    return scalars


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak memory allocated on a CUDA ``device``, else the process's peak resident set
    (None where the platform does not say)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def epoch_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a ``log.txt`` record (not its epoch index, lists or flags)."""
    return {
        name: float(value)
        for name, value in record.items()
        if name != "epoch" and isinstance(value, int | float) and not isinstance(value, bool)
    }


class NullLogger:
    """``--logger none``, and every process but the main one."""

    def log_step(self, epoch: int, step: int, scalars: Mapping[str, float]) -> None:
        pass

    def log_epoch(self, epoch: int, step: int, record: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Event files for TensorBoard (tags: ``STEP_TAGS``, ``EPOCH_TAGS``, ``CHARTS``)."""

    def __init__(self, log_dir: Path, first_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "logger: tensorboard needs the tensorboard package; pip install 'dino[tensorboard]'"
            ) from None
        # purge_step: TensorBoard hides what an interrupted attempt logged from first_step on
        self.writer = SummaryWriter(str(log_dir), purge_step=first_step, flush_secs=30)
        self.writer.add_custom_scalars(CHARTS)

    def log_step(self, epoch: int, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            for tag in STEP_TAGS.get(name, (f"loss/{name}",)):
                self.writer.add_scalar(tag, value, step)

    def log_epoch(self, epoch: int, step: int, record: Mapping[str, Any]) -> None:
        for name, value in epoch_scalars(record).items():
            self.writer.add_scalar(EPOCH_TAGS.get(name, f"epoch/{name}"), value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class CSVLogger:
    """``steps.csv`` and ``epochs.csv`` in ``output_dir``."""

    def __init__(self, output_dir: Path, first_step: int) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        self.steps = CSVTable(output_dir / STEPS_CSV, first_step)
        self.epochs = CSVTable(output_dir / EPOCHS_CSV, first_step)

    def log_step(self, epoch: int, step: int, scalars: Mapping[str, float]) -> None:
        self.steps.append({"step": step, "epoch": epoch, **scalars})

    def log_epoch(self, epoch: int, step: int, record: Mapping[str, Any]) -> None:
        self.epochs.append({"step": step, "epoch": epoch, **epoch_scalars(record)})

    def close(self) -> None:
        self.steps.close()
        self.epochs.close()


class CSVTable:
    """A CSV file written a row at a time (flushed, so a crash loses nothing written). Rows
    of an earlier attempt from ``first_step`` on are dropped at opening; a row with a column
    the header lacks (k-NN measured from a later epoch on) rewrites the file with it added,
    earlier rows left empty there."""

    def __init__(self, path: Path, first_step: int) -> None:
        self.path = path
        self.columns: list[str] = []
        rows: list[dict[str, str]] = []
        if path.exists():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                rows = [r for r in reader if r.get("step", "").isdigit()]
            rows = [r for r in rows if int(r["step"]) < first_step]
        self._rewrite(rows)

    def append(self, row: Mapping[str, Any]) -> None:
        new = [name for name in row if name not in self.columns]
        if new:
            self.file.close()
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            self.columns += new
            self._rewrite(rows)
        self.writer.writerow(row)
        self.file.flush()

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        self.file = open(self.path, "w", newline="")  # noqa: SIM115 (kept open, closed in close)
        self.writer = csv.DictWriter(self.file, self.columns, restval="")
        if self.columns:
            self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def close(self) -> None:
        self.file.close()
