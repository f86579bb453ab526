"""Several processes on the CPU with gloo, started by the tests themselves."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import (
    TINY_TRAIN_FLAGS,
    run_cli,
    tiny_training_checkpoint,
    write_colour_classes,
    write_images,
)
from dino.distributed import detect_launch, first_host
from dist_helpers import (
    free_port,
    run_steps,
    sampler_worker,
    shard,
    steps_worker,
    synthetic_crops,
    tiny_config,
)

HERE = Path(__file__).parent


@pytest.mark.parametrize("centering, accum", [("center", 1), ("sinkhorn", 1), ("sinkhorn", 2)])
def test_two_processes_equal_one_process_with_twice_the_batch(tmp_path, centering, accum):
    """Sinkhorn-Knopp reduces its prototype sums over processes: 2 x B equals 1 x 2B; with
    gradient accumulation (DDP's no_sync on all but the last micro-batch) 2 x 2 x B/2 too."""
    batch, steps = 3, 3
    args = (2, free_port(), str(tmp_path), steps, batch, centering, accum)
    mp.spawn(steps_worker, args=args, nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # The center and the teacher are identical across ranks after several steps.
    for key in ("student", "teacher"):
        for name, value in ranks[0][key].items():
            assert torch.equal(value, ranks[1][key][name]), f"{key}.{name} differs across ranks"
    assert torch.equal(ranks[0]["center"], ranks[1]["center"])
    assert torch.equal(ranks[0]["metrics"], ranks[1]["metrics"])
    # One process with batch 2B on the same images in the same order.
    config = tiny_config(str(tmp_path), batch_size_per_gpu=2 * batch * accum, centering=centering)
    state, metrics = run_steps(config, synthetic_crops(2 * batch * accum, steps))
    torch.testing.assert_close(metrics, ranks[0]["metrics"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.loss_fn.center, ranks[0]["center"], rtol=1e-5, atol=1e-6)
    for key, module in (("student", state.student), ("teacher", state.teacher)):
        for name, value in module.state_dict().items():
            torch.testing.assert_close(
                value, ranks[0][key][name], rtol=1e-4, atol=1e-5, msg=f"{key}.{name}"
            )


def test_shard_helper_takes_this_ranks_images():
    crops = synthetic_crops(4, 1)[0]
    halves = [shard(crops, r, 2) for r in (0, 1)]
    torch.testing.assert_close(halves[0][0][:2], crops[0][:2])
    torch.testing.assert_close(halves[1][0][2:], crops[0][6:8])


def test_each_image_once_per_epoch_across_ranks(tmp_path):
    n = 24
    mp.spawn(sampler_worker, args=(2, free_port(), str(tmp_path), n), nprocs=2)
    seen = [torch.load(tmp_path / f"indices{r}.pt") for r in (0, 1)]
    for epoch in (0, 1):
        both = seen[0][epoch] + seen[1][epoch]
        assert sorted(both) == list(range(n)), f"epoch {epoch}"
    assert seen[0][0] != seen[0][1]  # reshuffled per epoch


def torchrun(*args: str, nproc: int = 2, script: list[str] | None = None, timeout: float = 300):
    target = script or ["-m", "dino"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        *target,
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_checkpoints_resume_across_process_counts(tmp_path):
    data = tmp_path / "data"
    write_images(data, 32)
    common = ["train", "--data_path", str(data), *TINY_TRAIN_FLAGS, "--batch_size_per_gpu", "4"]
    two_then_one = tmp_path / "a"
    first = torchrun(*common, "--output_dir", str(two_then_one), "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("training vit_tiny") == 1  # only rank 0 prints
    second = run_cli(*common, "--output_dir", str(two_then_one), "--epochs", "2")
    assert second.returncode == 0 and "resumed" in second.stdout, second.stderr
    one_then_two = tmp_path / "b"
    assert run_cli(*common, "--output_dir", str(one_then_two), "--epochs", "1").returncode == 0
    third = torchrun(*common, "--output_dir", str(one_then_two), "--epochs", "2")
    assert third.returncode == 0 and "resumed" in third.stdout, third.stderr[-3000:]
    for out in (two_then_one, one_then_two):
        log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
        assert [e["epoch"] for e in log] == [0, 1]
        assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_failure_on_one_rank_ends_all_ranks_with_its_message(tmp_path, image_folder):
    start = time.time()
    result = torchrun(
        "train",
        "--data_path",
        str(image_folder),
        "--output_dir",
        str(tmp_path / "o"),
        *TINY_TRAIN_FLAGS,
        "--epochs",
        "3",
        script=[str(HERE / "fail_on_rank1.py")],
        timeout=240,
    )
    assert result.returncode != 0
    assert "dino (rank 1): error: injected failure on rank 1" in result.stderr
    assert time.time() - start < 200


def test_launch_from_torchrun_and_slurm_variables():
    assert detect_launch({}).world_size == 1
    tr = detect_launch(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "node7",
            "MASTER_PORT": "1234",
        }
    )
    assert (tr.rank, tr.world_size, tr.local_rank, tr.master_addr, tr.master_port, tr.launcher) == (
        3,
        8,
        1,
        "node7",
        1234,
        "torchrun",
    )
    sl = detect_launch(
        {
            "SLURM_PROCID": "9",
            "SLURM_NTASKS": "16",
            "SLURM_LOCALID": "1",
            "SLURM_JOB_NODELIST": "gpu[004-005]",
            "SLURM_JOB_ID": "4242",
        }
    )
    assert (sl.rank, sl.world_size, sl.local_rank, sl.master_addr, sl.master_port, sl.launcher) == (
        9,
        16,
        1,
        "gpu004",
        29500 + 242,
        "slurm",
    )
    assert detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).launcher == "none"
    assert first_host("a1,b2") == "a1" and first_host("n[10-12,15]") == "n10"


@pytest.mark.slow
def test_knn_embed_and_linear_under_torchrun_match_one_process(tmp_path):
    write_colour_classes(tmp_path / "train", per_class=9, classes=3, seed=0)  # 27: uneven shards
    write_colour_classes(tmp_path / "val", per_class=5, classes=3, seed=1)
    tiny_training_checkpoint(tmp_path / "ckpt.pth")
    common = [
        "--checkpoint",
        str(tmp_path / "ckpt.pth"),
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--batch_size",
        "4",
        "--num_workers",
        "0",
    ]
    knn = [
        "knn",
        *common,
        "--train_path",
        str(tmp_path / "train"),
        "--val_path",
        str(tmp_path / "val"),
        "--nb_knn",
        "1",
        "5",
    ]
    one, two = run_cli(*knn), torchrun(*knn)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    lines = [[ln for ln in r.stdout.splitlines() if "top-1" in ln] for r in (one, two)]
    assert lines[0] == lines[1] and len(lines[0]) == 2

    embed = ["embed", *common, "--data_path", str(tmp_path / "train")]
    assert run_cli(*embed, "--output", str(tmp_path / "one.npy")).returncode == 0
    result = torchrun(*embed, "--output", str(tmp_path / "two.npy"))
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert a.shape == (27, 48) and np.allclose(a, b, atol=1e-5)
    names = [(tmp_path / f"{n}.jsonl").read_text() for n in ("one", "two")]
    assert names[0] == names[1]

    linear = [
        "linear",
        *common,
        "--train_path",
        str(tmp_path / "train"),
        "--val_path",
        str(tmp_path / "val"),
        "--epochs",
        "2",
        "--lr",
        "0.5",
    ]
    result = torchrun(*linear, "--output_dir", str(tmp_path / "lin"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("linear epoch 1:") == 1  # rank 0 reports, once
    assert (tmp_path / "lin" / "linear.pth").exists()


@pytest.mark.slow
def test_knn_probe_during_training_under_torchrun(tmp_path):
    """The probe extracts features on every rank (each its share); rank 0 prints."""
    write_colour_classes(tmp_path / "train", per_class=8, classes=3, seed=0)
    write_colour_classes(tmp_path / "val", per_class=4, classes=3, seed=1)
    result = torchrun(
        "train",
        "--data_path",
        str(tmp_path / "train"),
        "--val_path",
        str(tmp_path / "val"),
        "--output_dir",
        str(tmp_path / "run"),
        *TINY_TRAIN_FLAGS,
        "--batch_size_per_gpu",
        "4",
        "--epochs",
        "1",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 0: effective rank") == 1  # from rank 0 only
    assert "; k-NN top-1" in result.stdout
    assert "at initialisation" in result.stdout
