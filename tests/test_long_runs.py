"""Runs that take days: mid-epoch checkpoints, a scheduler's signals, gradient accumulation,
the best epoch kept."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

from conftest import TINY_TRAIN_FLAGS, run_cli, write_images
from dino.data.seeding import SeededItems, item_seed
from dino.training import trainer
from dino.training.micro import join_micro, micro_batches, micro_rows
from dino.training.plan import make_plan
from dist_helpers import synthetic_crops, tiny_config
from test_robustness import assert_same_run, final_state


def test_micro_batches_take_the_same_images_from_every_crop():
    batch, n = 6, 3
    image = torch.arange(batch, dtype=torch.float32)
    globals_ = torch.cat([image + 100 * c for c in range(2)]).view(-1, 1)  # (2B, 1)
    locals_ = torch.cat([image + 100 * c for c in range(2, 6)]).view(-1, 1)  # (4B, 1)
    micro = micro_batches([globals_, locals_], n)
    assert len(micro) == n
    for j, (g, loc) in enumerate(micro):
        ids = image[j * 2 : (j + 1) * 2]
        assert g.flatten().tolist() == torch.cat([ids, ids + 100]).tolist()
        assert loc.flatten().tolist() == torch.cat([ids + 100 * c for c in range(2, 6)]).tolist()
        assert torch.equal(micro_rows(globals_, j, n, 2), g)
    assert torch.equal(join_micro([m[0] for m in micro], 2), globals_)


def run_steps(config, crops_per_step):
    plan = make_plan(config, torch.device("cpu"), 1000)
    state = trainer.build_state(plan)
    metrics = [
        trainer.train_step(state, c, plan, epoch=1, it=i) for i, c in enumerate(crops_per_step)
    ]
    return state, metrics


@pytest.mark.parametrize("centering", ["center", "sinkhorn"])
def test_gradient_accumulation_equals_the_larger_batch(tmp_path, centering):
    """Two micro-batches of 4 per step give the weights, center and metrics of batches of 8."""
    crops = synthetic_crops(images=8, steps=3)
    # AdamW: the accumulated gradient differs from the batch's by float rounding, which
    # AdamW's division by the gradient's magnitude could turn into full steps where the
    # exact gradient is zero (see dist_helpers.tiny_config); SGD shows the float tolerance.
    big = tiny_config(str(tmp_path), batch_size_per_gpu=8, centering=centering)
    accum = tiny_config(str(tmp_path), batch_size_per_gpu=4, grad_accum_steps=2,
                        centering=centering)  # fmt: skip
    (a, ma), (b, mb) = run_steps(big, crops), run_steps(accum, crops)
    for (name, x), y in zip(
        a.student.state_dict().items(), b.student.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5, msg=f"student {name}")
    for x, y in zip(a.teacher.state_dict().values(), b.teacher.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.loss_fn.center, b.loss_fn.center, rtol=0, atol=1e-6)
    for step_a, step_b in zip(ma, mb, strict=True):
        for name in step_a:
            torch.testing.assert_close(step_a[name], step_b[name], rtol=0, atol=1e-5)
    # the same total batch: the same learning rate and steps per epoch
    plans = [make_plan(c, torch.device("cpu"), 1000) for c in (big, accum)]
    assert plans[0].size == plans[1].size and plans[0].steps == 125


def test_an_images_draws_depend_on_seed_epoch_and_index_only():
    class Draw(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(1).item()

    items = SeededItems(Draw(), seed=3)
    items.set_epoch(2)
    torch.manual_seed(0)
    first = [items[i] for i in range(4)]
    outside = torch.rand(1)
    torch.manual_seed(0)
    torch.rand(5)  # whatever was drawn before
    assert [items[i] for i in (3, 2, 1, 0)] == first[::-1]
    torch.manual_seed(0)
    _ = [items[i] for i in range(4)]
    assert torch.equal(torch.rand(1), outside)  # the caller's generator is left as it was
    items.set_epoch(3)
    assert [items[i] for i in range(4)] != first
    assert item_seed(3, 2, 1) != item_seed(3, 1, 2)


def train_flags(data, out, *extra):
    return ["train", "--data_path", str(data), "--output_dir", str(out), *TINY_TRAIN_FLAGS,
            "--epochs", "3", "--drop_path_rate", "0.1", *extra]  # fmt: skip


def start(args, log):
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "dino", *args], stdout=f,
                                stderr=subprocess.STDOUT, env={**os.environ})  # fmt: skip


def wait_for(proc, log, text, timeout=120):
    deadline = time.time() + timeout
    while proc.poll() is None and text not in log.read_text() and time.time() < deadline:
        time.sleep(0.02)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """48 images (6 steps of 8 per epoch) and an uninterrupted 3-epoch run on them."""
    root = tmp_path_factory.mktemp("clean")
    data, clean = root / "data", root / "clean"
    write_images(data, 48)
    assert run_cli(*train_flags(data, clean)).returncode == 0
    return data, clean


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_stops_and_resumes_to_the_same_weights(tmp_path, clean_run):
    """SIGTERM inside an epoch: a checkpoint at the next step, exit 143 with one line; the
    resume (with other loader workers) ends where an uninterrupted run ends, bit for bit."""
    data, clean = clean_run
    killed, log = tmp_path / "killed", tmp_path / "killed.log"
    proc = start(train_flags(data, killed), log)
    wait_for(proc, log, "epoch 0: ")  # within epoch 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("dino: stopped by SIGTERM: ") and "the same command resumes" in last
    saved = torch.load(killed / "checkpoint.pth", weights_only=True)
    within = saved.get("within_epoch")
    assert within is None or 0 < within["step"] < 6  # a mid-epoch stop, or at an epoch's end
    resumed = run_cli(*train_flags(data, killed, "--num_workers", "2"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert_same_run(final_state(clean), final_state(killed))
    logged = [json.loads(line) for line in (killed / "log.txt").read_text().splitlines()]
    clean_log = [json.loads(line) for line in (clean / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in logged] == [0, 1, 2]
    for ours, theirs in zip(
        logged, clean_log, strict=True
    ):  # the epoch's averages survive the stop
        assert (
            ours["loss"] == theirs["loss"] and ours["teacher_entropy"] == theirs["teacher_entropy"]
        )


@pytest.mark.slow
def test_timed_checkpoints_inside_an_epoch_resume_after_a_kill(tmp_path, clean_run):
    data, clean = clean_run
    out, log = tmp_path / "timed", tmp_path / "timed.log"
    timed = train_flags(data, out, "--checkpoint_every_minutes", "0.0001")  # every step
    proc = start(timed, log)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # a checkpoint inside epoch 1
        ckpt = out / "checkpoint.pth"
        if (
            ckpt.exists()
            and b"within_epoch" in ckpt.read_bytes()
            and "epoch 0: " in log.read_text()
        ):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = torch.load(out / "checkpoint.pth", weights_only=True).get("within_epoch", {}).get("step")
    resumed = run_cli(*timed)
    assert resumed.returncode == 0, resumed.stderr
    if step:
        assert f", step {step} of 6" in resumed.stdout + resumed.stderr
    assert_same_run(final_state(clean), final_state(out))


@pytest.mark.slow
def test_requeue_under_slurm_calls_scontrol_after_the_checkpoint(tmp_path):
    data = tmp_path / "data"
    write_images(data, 48)
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    log = tmp_path / "run.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dino", *train_flags(data, tmp_path / "out", "--requeue")],
            stdout=f, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    wait_for(proc, log, "training ")
    time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == 128 + signal.SIGUSR1, log.read_text()
    assert calls.read_text().split() == ["requeue", "4242"]
    assert (tmp_path / "out" / "checkpoint.pth").exists()


def test_keep_best_false_writes_no_best_checkpoint(tmp_path):
    from dino.training.trainer import train
    from test_robustness import tiny_config as config_of

    data = tmp_path / "data"
    write_images(data, 16)
    train(config_of(data, tmp_path / "a", epochs=1, keep_best=False))
    assert (tmp_path / "a" / "checkpoint.pth").exists()
    assert not (tmp_path / "a" / "checkpoint_best.pth").exists()


def test_interrupts_note_signals_and_time_and_restore_the_handlers():
    from dino.training.interrupts import Interrupts

    before = signal.getsignal(signal.SIGUSR1)
    interrupts = Interrupts(every_minutes=0.0)
    try:
        poll = interrupts.poll(torch.device("cpu"))
        assert not poll.save and not poll.stop
        os.kill(os.getpid(), signal.SIGUSR1)
        poll = interrupts.poll(torch.device("cpu"))
        assert poll.save and poll.stop and poll.signum == signal.SIGUSR1
    finally:
        interrupts.close()
    assert signal.getsignal(signal.SIGUSR1) is before
    timed = Interrupts(every_minutes=1e-6)
    time.sleep(0.01)
    assert timed.poll(torch.device("cpu")).save and not timed.poll(torch.device("cpu")).stop
    timed.saved()
    timed.close()
