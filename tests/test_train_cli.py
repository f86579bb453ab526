"""End to end through the real command line on a tiny generated folder."""

import json

import pytest
import torch

from conftest import TINY_TRAIN_FLAGS, run_cli


@pytest.mark.slow
def test_train_two_epochs_then_resume_to_three(image_folder, tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "--data_path",
        str(image_folder),
        "--output_dir",
        str(out),
        *TINY_TRAIN_FLAGS,
        "--saveckp_freq",
        "2",
    ]
    first = run_cli(*args, "--epochs", "2")
    assert first.returncode == 0, first.stderr
    assert "resumed" not in first.stdout
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1]
    for key in (
        "loss",
        "lr",
        "weight_decay",
        "teacher_temp",
        "momentum",
        "img_per_s",
        "teacher_entropy",
        "batch_entropy",
        "ln_K",
    ):
        assert key in log[0]
    assert {p.name for p in out.iterdir()} >= {
        "checkpoint.pth",
        "checkpoint0000.pth",
        "config.yaml",
        "log.txt",
    }
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["args"]["epochs"] == 2
    assert set(ckpt) >= {"student", "teacher", "optimizer", "epoch", "args", "dino_loss"}
    assert ckpt["dino_loss"]["center"].shape == (1, 64)
    assert "head.last_layer.weight_g" in ckpt["teacher"]

    second = run_cli(*args, "--epochs", "3")
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout and "at epoch 2" in second.stdout
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1, 2]
    assert "checkpoint0002.pth" in {p.name for p in out.iterdir()}


def test_bad_flag_is_one_line_exit_2(tmp_path):
    result = run_cli("train", "--lr", "-1", "--output_dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "lr" in result.stderr
    unknown = run_cli("train", "--learning_rate", "0.1")
    assert unknown.returncode == 2 and "--learning_rate" in unknown.stderr
    assert unknown.stderr.strip().count("\n") == 0
