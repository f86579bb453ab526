"""Careless and hostile use of one output folder: two runs at once, resumes that change the
run's meaning, malformed checkpoints and logs, links. Each ends in one line or is handled."""

import json
import os
import shutil

import pytest
import torch

from conftest import TINY_TRAIN_FLAGS, write_images
from dino.cli import main
from dino.training import checkpointing
from dino.training.outdir import RunLock


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """16 images and a one-epoch run on them (checkpoint.pth, log.txt, config.yaml)."""
    root = tmp_path_factory.mktemp("hostile_runs")
    write_images(root / "data", 16)
    assert main(flags(root / "data", root / "run", "--epochs", "1")) == 0
    return root


def flags(data, out, *extra):
    return ["train", "--data_path", str(data), "--output_dir", str(out), *TINY_TRAIN_FLAGS,
            "--epochs", "2", *extra]  # fmt: skip


def copy_run(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained / "run", out)
    return out


def one_line_error(capsys, code, returned):
    err = capsys.readouterr().err
    assert returned == code, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("dino: error: ")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err
    return errors[0]


def test_a_second_run_on_the_folder_stops_naming_the_first(tmp_path, trained, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    lock = RunLock(out)
    try:
        line = one_line_error(capsys, 2, main(flags(trained / "data", out)))
    finally:
        lock.release()
    assert f"is in use by another dino train (pid {os.getpid()} on " in line
    assert not (out / "config.yaml").exists()


@pytest.mark.parametrize(
    "change, value, saved",
    [
        ("--batch_size_per_gpu", "4", "8"),
        ("--local_crops_number", "3", "2"),
        ("--seed", "7", "0"),
        ("--lr", "0.01", None),
        ("--optimizer", "sgd", "'adamw'"),
        ("--norm_last_layer", "false", "True"),
        ("--grad_accum_steps", "2", "1"),
    ],
)
def test_a_resume_that_changes_the_run_is_refused_and_writes_nothing(
    tmp_path, trained, capsys, change, value, saved
):
    out = copy_run(trained, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".dino.lock"}
    line = one_line_error(capsys, 2, main(flags(trained / "data", out, change, value)))
    name = change.lstrip("-")
    assert f"was trained with {name}=" in line and f"--allow_change {name}" in line
    if saved is not None:
        assert f"{name}={saved}, this run asks" in line
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".dino.lock"}
    assert after == before  # config.yaml, log.txt and the checkpoint untouched


def test_allowed_changes_resume_and_a_new_optimizer_starts_fresh(tmp_path, trained, capsys):
    out = copy_run(trained, tmp_path)
    extra = ["--optimizer", "sgd", "--lr", "0.01", "--allow_change", "optimizer,lr"]
    assert main(flags(trained / "data", out, *extra)) == 0
    err = capsys.readouterr().err
    assert "optimizer changed: the optimizer starts fresh" in err
    assert [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()] == [
        0,
        1,
    ]


def test_allow_change_names_options(tmp_path, trained, capsys):
    line = one_line_error(capsys, 2, main(flags(trained / "data", tmp_path, "--allow_change",
                                                "lr,speed")))  # fmt: skip
    assert line.startswith("dino: error: allow_change: expected option names")


MALFORMED = {
    "no dino_loss": lambda c: c.pop("dino_loss"),
    "no optimizer": lambda c: c.pop("optimizer"),
    "epoch a word": lambda c: c.update(epoch="one"),
    "negative epoch": lambda c: c.update(epoch=-5),
    "student a list": lambda c: c.update(student=[1, 2]),
    "center of another size": lambda c: c.update(dino_loss={"center": torch.zeros(1, 3)}),
    "within_epoch malformed": lambda c: c.update(within_epoch={"step": "x"}),
    "rng malformed": lambda c: c.update(rng={"python": 5}),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_checkpoint_is_one_line(tmp_path, trained, capsys, case):
    out = copy_run(trained, tmp_path)
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    MALFORMED[case](ckpt)
    torch.save(ckpt, out / "checkpoint.pth")
    line = one_line_error(capsys, 2, main(flags(trained / "data", out)))
    assert str(out / "checkpoint.pth") in line


@pytest.mark.parametrize("bad", [b"5\n", b"\xff\xfe not utf-8\n", b'{"epoch": "x"}\n', b"[]\n"])
def test_resume_drops_log_lines_that_are_not_records(tmp_path, trained, capsys, bad):
    out = copy_run(trained, tmp_path)
    with open(out / "log.txt", "ab") as f:
        f.write(bad)
    assert main(flags(trained / "data", out)) == 0
    assert "dropped 1 line(s) that are not an epoch's JSON record" in capsys.readouterr().err
    lines = (out / "log.txt").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]


@pytest.mark.parametrize("name", ["log.txt", "config.yaml"])
def test_files_linked_out_of_the_folder_are_refused(tmp_path, trained, capsys, name):
    out = copy_run(trained, tmp_path)
    outside = tmp_path / "precious.txt"
    outside.write_text("mine")
    (out / name).unlink()
    (out / name).symlink_to(outside)
    line = one_line_error(capsys, 2, main(flags(trained / "data", out)))
    assert f"{out / name} is a symbolic link" in line
    assert outside.read_text() == "mine"


def test_the_numbered_snapshot_is_written_before_checkpoint_pth(tmp_path, monkeypatch):
    """A kill between the two writes of an epoch then re-runs the epoch, which writes both."""
    written = []
    monkeypatch.setattr(checkpointing, "save_atomic", lambda obj, path: written.append(path.name))
    monkeypatch.setattr(checkpointing, "reference_networks", lambda s, t: {})

    class State:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        loss_fn = torch.nn.Linear(1, 1)
        scaler = None
        student = teacher = None

    checkpointing.save_checkpoint(tmp_path, State(), 4, 40, {}, {}, keep_every=2)
    assert written == ["checkpoint0004.pth", "checkpoint.pth"]
    written.clear()
    names = (checkpointing.CHECKPOINT, "checkpoint_best.pth")
    checkpointing.save_checkpoint(tmp_path, State(), 4, 40, {}, {}, names=names, keep_every=2)
    assert written[-1] == "checkpoint.pth" and len(written) == 3
