"""Break things on purpose: kills, bad files, bad configuration, NaN, untrusted pickles."""

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import dino.loss
from conftest import TINY_TRAIN_FLAGS, run_cli, write_images
from dino.cli import main
from dino.config import build_config
from dino.training.trainer import NonFiniteLossError, train
from test_images import write_bad_files, write_odd_modes


def tiny_config(data, out, **overrides):
    flags = dict(zip(TINY_TRAIN_FLAGS[::2], TINY_TRAIN_FLAGS[1::2], strict=True))
    values = {k.lstrip("-"): v for k, v in flags.items()}
    values.update(data_path=str(data), output_dir=str(out), **overrides)
    return build_config(values)


def final_state(out):
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    return ckpt


def assert_same_run(a, b):
    assert a["epoch"] == b["epoch"]
    for key in ("student", "teacher"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs"
    torch.testing.assert_close(a["dino_loss"]["center"], b["dino_loss"]["center"], rtol=0, atol=0)
    for pid, moments in a["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(
                torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][pid][name])
            )


def kill_and_resume(args, out, kills, rng):
    """Start ``dino train``, SIGKILL it at random moments ``kills`` times, then let it finish."""
    survived = 0
    log = out.parent / f"{out.name}.stdout"
    while True:
        with open(log, "w") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dino", *args], stdout=f, stderr=subprocess.STDOUT
            )
        if survived < kills:
            # Wait until it trains (past the imports), then kill at a random moment.
            deadline = time.time() + 120
            while (
                proc.poll() is None
                and "training " not in log.read_text()
                and time.time() < deadline
            ):
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.8))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                survived += 1
                continue
        assert proc.wait(timeout=300) == 0, log.read_text()
        return survived


def run_kill_test(tmp_path, kills, seed):
    data = tmp_path / "data"
    write_images(data, 48)
    epochs = 3 * kills  # long enough that every kill lands before the end
    common = [
        "train",
        "--data_path",
        str(data),
        *TINY_TRAIN_FLAGS,
        "--epochs",
        str(epochs),
        "--saveckp_freq",
        "3",
    ]
    clean = tmp_path / "clean"
    assert run_cli(*common, "--output_dir", str(clean), timeout=1200).returncode == 0
    killed = tmp_path / "killed"
    survived = kill_and_resume(
        [*common, "--output_dir", str(killed)], killed, kills, random.Random(seed)
    )
    assert survived == kills
    assert_same_run(final_state(clean), final_state(killed))
    logged = [json.loads(line)["epoch"] for line in (killed / "log.txt").read_text().splitlines()]
    assert logged == list(range(epochs))
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_sigkill_five_times_then_same_weights_as_uninterrupted(tmp_path):
    run_kill_test(tmp_path, kills=5, seed=0)


@pytest.mark.long
def test_sigkill_twenty_times(tmp_path):
    run_kill_test(tmp_path, kills=20, seed=1)


@pytest.mark.slow
def test_bad_files_are_skipped_and_logged(tmp_path):
    data = tmp_path / "data"
    write_images(data / "good", 20)
    bad = write_bad_files(data / "bad")
    write_odd_modes(data / "odd")
    out = tmp_path / "run"
    result = run_cli(
        "train",
        "--data_path",
        str(data),
        "--output_dir",
        str(out),
        *TINY_TRAIN_FLAGS,
        "--epochs",
        "2",
        "--batch_size_per_gpu",
        "4",
    )
    assert result.returncode == 0, result.stderr
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert len(log) == 2
    for epoch in log:
        names = {path.split(": ")[0].rsplit("/", 1)[-1] for path in epoch["skipped_files"]}
        assert names <= set(bad)
    seen = {p.split(": ")[0].rsplit("/", 1)[-1] for e in log for p in e["skipped_files"]}
    assert seen == set(bad)
    assert "skipped" in result.stderr and "unreadable" in result.stderr


def run_main(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--learning_rate", "0.1"], "--learning_rate"),
        (["--lr", "fast"], "--lr"),
        (["--lr", "-1"], "lr"),
        (["--momentum_teacher", "1.2"], "momentum_teacher"),
        (["--local_crop_size", "256"], "local_crop_size"),
        (["--global_crop_size", "100", "--data_path", "x"], "global_crop_size"),
        (["--batch_size_per_gpu", "0"], "batch_size_per_gpu"),
        (["--norm_last_layer", "maybe"], "--norm_last_layer"),
    ],
)
def test_config_errors_one_line_exit_2(capsys, tmp_path, argv, field):
    code, err = run_main(capsys, "train", "--output_dir", str(tmp_path / "o"), *argv)
    assert code == 2 and "\n" not in err and field in err, err
    assert not (tmp_path / "o").exists()  # stopped before any work


def test_yaml_errors(capsys, tmp_path):
    bad_key = tmp_path / "a.yaml"
    bad_key.write_text(yaml.safe_dump({"lr": 0.1, "momentum": 0.9}))
    code, err = run_main(capsys, "train", "--config", str(bad_key))
    assert code == 2 and "momentum" in err and "a.yaml" in err and "\n" not in err
    bad_type = tmp_path / "b.yaml"
    bad_type.write_text("epochs: [1, 2]\n")
    code, err = run_main(capsys, "train", "--config", str(bad_type))
    assert code == 2 and "epochs" in err and "\n" not in err
    code, err = run_main(capsys, "train", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in err


def test_unwritable_output_and_bad_data(capsys, tmp_path, image_folder):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run_main(
        capsys,
        "train",
        "--data_path",
        str(image_folder),
        "--output_dir",
        str(blocker / "out"),
        *TINY_TRAIN_FLAGS,
    )
    assert code == 2 and "output_dir" in err and "\n" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_main(
        capsys,
        "train",
        "--data_path",
        str(empty),
        "--output_dir",
        str(tmp_path / "o1"),
        *TINY_TRAIN_FLAGS,
    )
    assert code == 2 and "no images" in err and "\n" not in err
    write_bad_files(tmp_path / "allbad")
    code, err = run_main(
        capsys,
        "train",
        "--data_path",
        str(tmp_path / "allbad"),
        "--output_dir",
        str(tmp_path / "o2"),
        *TINY_TRAIN_FLAGS,
    )
    assert code == 2 and "none of the 5" in err and "\n" not in err


def poison_loss(monkeypatch, at_call):
    """Make the ``at_call``-th loss of the process NaN."""
    real = dino.loss.dino_cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == at_call else loss

    monkeypatch.setattr(dino.loss, "dino_cross_entropy", poisoned)


def test_nan_loss_stops_with_last_checkpoint_intact(tmp_path, image_folder, monkeypatch):
    out = tmp_path / "run"
    poison_loss(monkeypatch, at_call=5)  # 3 steps per epoch: epoch 1, iteration 1
    with pytest.raises(NonFiniteLossError, match="epoch 1, iteration 1"):
        train(tiny_config(image_folder, out, epochs=3))
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["student"].values())
    assert len((out / "log.txt").read_text().splitlines()) == 1


def the_error(err: str) -> str:
    """The one line of an error on stderr, after any warnings (a tiny run is warned short)."""
    lines = [line for line in err.splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1, err
    return lines[0]


def test_nan_loss_on_the_command_line(capsys, tmp_path, image_folder, monkeypatch):
    poison_loss(monkeypatch, at_call=2)
    code, err = run_main(
        capsys,
        "train",
        "--data_path",
        str(image_folder),
        "--output_dir",
        str(tmp_path / "run"),
        *TINY_TRAIN_FLAGS,
        "--epochs",
        "2",
    )
    error = the_error(err)
    assert code == 2 and "epoch 0, iteration 1" in error
    assert "bf16" in error and "--lr" in error


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_untrusted_checkpoint_in_output_dir_is_refused(capsys, tmp_path, image_folder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    with open(out / "checkpoint.pth", "wb") as f:
        pickle.dump({"student": _RunsCode()}, f)
    code, err = run_main(
        capsys,
        "train",
        "--data_path",
        str(image_folder),
        "--output_dir",
        str(out),
        *TINY_TRAIN_FLAGS,
    )
    assert code == 2 and "arbitrary unpickling" in the_error(err)
    assert not (tmp_path / "pwned").exists()


def test_resume_with_another_architecture_names_both(capsys, tmp_path, image_folder):
    out = tmp_path / "run"
    train(tiny_config(image_folder, out, epochs=1))
    code, err = run_main(
        capsys,
        "train",
        "--data_path",
        str(image_folder),
        "--output_dir",
        str(out),
        *TINY_TRAIN_FLAGS,
        "--depth",
        "3",
        "--epochs",
        "2",
    )
    error = the_error(err)
    assert code == 2 and "depth=2" in error and "depth=3" in error
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1
