"""Training dashboards: TensorBoard event files read back by TensorBoard's own reader, CSV
files read back by the csv module, and resumes that drop what an interrupted run logged."""

import csv
import math

import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN_FLAGS, run_cli, write_images
from dino.config import TrainConfig
from dino.errors import ConfigError
from dino.training import loggers
from dino.training.loggers import (
    CSVLogger,
    NullLogger,
    epoch_scalars,
    open_logger,
    step_scalars,
)
from dino.training.plan import Schedules

STEPS_PER_EPOCH = 3
OUT_DIM = 64


def schedules(epochs: int = 2) -> Schedules:
    n = epochs * STEPS_PER_EPOCH
    return Schedules(
        lr=np.linspace(0.0, 1e-3, n),
        weight_decay=np.linspace(0.04, 0.4, n),
        momentum=np.linspace(0.996, 1.0, n),
        teacher_temp=np.array([0.04, 0.07][:epochs]),
    )


def metrics(step: int) -> dict[str, torch.Tensor]:
    """What train_step returns: the loss, its terms, the teacher entropies (0-d tensors)."""
    return {
        "loss": torch.tensor(4.0 - 0.1 * step),
        "dino": torch.tensor(3.9 - 0.1 * step),
        "koleo": torch.tensor(1.0),
        "teacher_entropy": torch.tensor(4.1),
        "batch_entropy": torch.tensor(4.15),
    }


def record(epoch: int, knn: bool) -> dict:
    """A log.txt record as the trainer writes it (k-NN only in some epochs)."""
    out = {
        "epoch": epoch,
        "loss": 4.0,
        "dino": 3.9,
        "koleo": 1.0,
        "img_per_s": 50.0,
        "rank": 10.0 + epoch,
        "mean_cosine": 0.5,
        "rank_before": 5.0,
        "mean_cosine_before": 0.9,
        "skipped_images": 0,
        "skipped_files": [],
    }
    if knn:
        out.update(knn_top1=40.0 + epoch, knn_before=30.0, knn_raw_pixels=70.0)
    return out


def run_epochs(logger, epochs: range) -> None:
    plan = schedules()
    for epoch in epochs:
        for i in range(STEPS_PER_EPOCH):
            step = epoch * STEPS_PER_EPOCH + i
            scalars = step_scalars(metrics(step), plan, epoch, step, OUT_DIM, images_per_s=50.0)
            logger.log_step(epoch, step, scalars)
        logger.log_epoch(epoch, (epoch + 1) * STEPS_PER_EPOCH - 1, record(epoch, knn=epoch == 1))
    logger.close()


def test_step_scalars_hold_the_loss_terms_entropies_schedules_speed_and_memory():
    plan = schedules()
    s = step_scalars(metrics(4), plan, 1, 4, OUT_DIM, images_per_s=12.5)
    assert s["loss"] == pytest.approx(3.6) and s["dino"] == pytest.approx(3.5)
    assert s["koleo"] == 1.0 and s["teacher_entropy"] == pytest.approx(4.1)
    assert s["ln_K"] == pytest.approx(math.log(64))
    assert s["lr"] == plan.lr[4] and s["weight_decay"] == plan.weight_decay[4]
    assert s["momentum"] == plan.momentum[4] and s["teacher_temp"] == 0.07
    assert s["img_per_s"] == 12.5 and s["peak_memory_gib"] > 0
    assert all(isinstance(v, float) for v in s.values())


def test_epoch_scalars_keep_the_numbers_only():
    assert epoch_scalars({"epoch": 3, "loss": 1, "skipped_files": ["a"], "flag": True}) == {
        "loss": 1.0
    }


def test_an_unknown_logger_is_refused_with_the_valid_names(tmp_path):
    with pytest.raises(ConfigError, match="logger: expected one of none, csv, tensorboard"):
        open_logger("wandb", tmp_path, 0)


def test_none_and_other_processes_write_nothing(tmp_path, monkeypatch):
    assert isinstance(open_logger("none", tmp_path, 0), NullLogger)
    monkeypatch.setattr(loggers, "is_main_process", lambda: False)
    assert isinstance(open_logger("csv", tmp_path, 0), NullLogger)
    assert list(tmp_path.iterdir()) == []


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logs_open_as_tables_and_grow_a_column_when_knn_starts(tmp_path):
    run_epochs(open_logger("csv", tmp_path, 0), range(2))
    steps = read_csv(tmp_path / "steps.csv")
    assert [int(r["step"]) for r in steps] == list(range(6))
    assert [int(r["epoch"]) for r in steps] == [0, 0, 0, 1, 1, 1]
    assert float(steps[4]["loss"]) == pytest.approx(3.6)
    assert {
        "dino",
        "koleo",
        "lr",
        "weight_decay",
        "momentum",
        "teacher_temp",
        "ln_K",
        "teacher_entropy",
        "batch_entropy",
        "img_per_s",
        "peak_memory_gib",
    } <= set(steps[0])
    epochs = read_csv(tmp_path / "epochs.csv")
    assert [r["knn_top1"] for r in epochs] == ["", "41.0"]  # measured in epoch 1 only
    assert [r["step"] for r in epochs] == ["2", "5"]
    assert epochs[0]["rank_before"] == "5.0" and "skipped_files" not in epochs[0]


def test_csv_resume_drops_the_rows_of_the_interrupted_epoch(tmp_path):
    logger = CSVLogger(tmp_path, 0)
    run_epochs(logger, range(2))  # epoch 1 "interrupted": resumed from its first step
    run_epochs(open_logger("csv", tmp_path, STEPS_PER_EPOCH), range(1, 2))
    steps = read_csv(tmp_path / "steps.csv")
    assert [int(r["step"]) for r in steps] == list(range(6))
    assert [r["epoch"] for r in read_csv(tmp_path / "epochs.csv")] == ["0", "1"]


def read_events(log_dir):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    acc = event_accumulator.EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


STEP_TAGS = [
    "loss/total",
    "loss/dino",
    "loss/koleo",
    "loss/ln_K",
    "entropy/teacher",
    "entropy/batch",
    "entropy/ln_K",
    "schedule/lr",
    "schedule/weight_decay",
    "schedule/momentum",
    "schedule/teacher_temp",
    "speed/img_per_s",
    "memory/peak_gib",
]
EPOCH_TAGS = [
    "knn/top1",
    "knn/before",
    "knn/raw_pixels",
    "health/effective_rank",
    "health/mean_cosine",
    "health/effective_rank_before",
    "epoch/loss",
]


def test_tensorboard_reads_every_scalar_at_its_step(tmp_path):
    pytest.importorskip("tensorboard")
    run_epochs(open_logger("tensorboard", tmp_path, 0), range(2))
    scalars = read_events(tmp_path / "tensorboard")
    assert set(STEP_TAGS + EPOCH_TAGS) <= set(scalars)
    for tag in STEP_TAGS:
        assert [step for step, _ in scalars[tag]] == list(range(6)), tag
    assert scalars["loss/total"][4][1] == pytest.approx(3.6)
    assert scalars["entropy/ln_K"][0][1] == pytest.approx(math.log(OUT_DIM))
    assert scalars["schedule/teacher_temp"][-1][1] == pytest.approx(0.07)
    assert scalars["knn/top1"] == [(5, 41.0)]
    assert [s for s, _ in scalars["health/effective_rank"]] == [2, 5]


def test_tensorboard_resume_hides_what_the_interrupted_attempt_logged(tmp_path):
    pytest.importorskip("tensorboard")
    run_epochs(open_logger("tensorboard", tmp_path, 0), range(2))
    plan = schedules()
    resumed = open_logger("tensorboard", tmp_path, STEPS_PER_EPOCH)
    step = STEPS_PER_EPOCH
    resumed.log_step(1, step, step_scalars({"loss": torch.tensor(9.0)}, plan, 1, step, 64, 1.0))
    resumed.close()
    loss = read_events(tmp_path / "tensorboard")["loss/total"]
    assert [s for s, _ in loss] == [0, 1, 2, 3] and loss[-1][1] == 9.0


def test_without_tensorboard_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install 'dino\[tensorboard\]'"):
        open_logger("tensorboard", tmp_path, 0)


@pytest.mark.slow
@pytest.mark.skipif(
    "logger" not in TrainConfig.__dataclass_fields__, reason="--logger not wired into dino train"
)
def test_dino_train_writes_tensorboard_and_csv_logs(tmp_path):
    pytest.importorskip("tensorboard")
    write_images(tmp_path / "imgs", 16, size=32)
    for kind in ("tensorboard", "csv"):
        out = tmp_path / kind
        result = run_cli(
            "train",
            "--data_path",
            str(tmp_path / "imgs"),
            "--output_dir",
            str(out),
            "--epochs",
            "2",
            "--logger",
            kind,
            *TINY_TRAIN_FLAGS,
        )
        assert result.returncode == 0, result.stderr
    steps = 2 * 2  # 16 images, batch 8
    scalars = read_events(tmp_path / "tensorboard" / "tensorboard")
    assert set(STEP_TAGS) - {"loss/koleo"} <= set(scalars)
    assert [s for s, _ in scalars["loss/total"]] == list(range(steps))
    assert len(scalars["health/effective_rank"]) == 2
    assert len(read_csv(tmp_path / "csv" / "steps.csv")) == steps
    assert len(read_csv(tmp_path / "csv" / "epochs.csv")) == 2
