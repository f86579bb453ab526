"""The reference's evaluation protocols through the CLI: its flag names, its retrieval input,
its linear-probe schedule, and features dumped to resumable shards and loaded back."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_training_checkpoint, write_colour_classes
from dino.cli import flags, main
from dino.data.transforms import Thumbnail, thumbnail_transform
from dino.eval.copydetect import WHITENINGS
from dino.eval.features import MULTISCALE_SIZES
from dino.eval.linear import LR_SCHEDULES, linear_lr_schedule
from dino.eval.search import INDEXES
from dino.eval.store import open_store

COMMON = ["--device", "cpu", "--precision", "fp32", "--num_workers", "0"]


def dino(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    write_colour_classes(root / "imagenet" / "train", per_class=10, classes=3, seed=0)
    write_colour_classes(root / "imagenet" / "val", per_class=4, classes=3, seed=1)
    tiny_training_checkpoint(root / "ckpt.pth")
    return root


def test_flag_choices_are_the_librarys():
    """The parsers spell the choices without importing torch; they must stay the same."""
    assert flags.INDEXES == INDEXES and flags.WHITENINGS == WHITENINGS
    assert flags.MULTISCALE_SIZES == MULTISCALE_SIZES and flags.LR_SCHEDULES == LR_SCHEDULES


def test_knn_with_the_reference_flags_dump_and_load(data, tmp_path, capsys):
    dump = tmp_path / "feats"
    args = ["--pretrained_weights", data / "ckpt.pth", "--data_path", data / "imagenet",
            "--nb_knn", 1, 5, "--temperature", 0.1, "--batch_size_per_gpu", 8, *COMMON]  # fmt: skip
    assert dino("knn", *args, "--dump_features", dump, "--shard_size", 12) == 0
    extracted = capsys.readouterr().out
    assert "12 queries, 30 train images, 3 classes" in extracted
    train = open_store(dump / "train")
    assert (
        len(train.blocks) == 3
        and len(train) == 30
        and train.classes == ["class_0", "class_1", "class_2"]
    )
    assert train.names[0] == "class_0/img_000.png" and train.labels.tolist()[:2] == [0, 0]
    # Interrupted after the first shard: the next run extracts the other two only.
    for i in (1, 2):
        (dump / "train" / f"items-{i:05d}.npy").unlink()
    assert dino("knn", *args, "--dump_features", dump, "--shard_size", 12) == 0
    resumed = capsys.readouterr().out
    assert "1 of 3 shards already extracted" in resumed
    # Loaded back: no checkpoint, no images, the same numbers.
    assert dino("knn", "--load_features", dump, "--nb_knn", 1, 5, "--temperature", 0.1) == 0
    loaded = capsys.readouterr().out
    assert _knn_lines(loaded) == _knn_lines(extracted) == _knn_lines(resumed)
    # Another run's store in the same folder is refused.
    assert dino("knn", *args, "--dump_features", dump, "--shard_size", 10) == 2
    assert "holds other features (shard_size" in capsys.readouterr().err


def _knn_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if re.search(r"k=\d", line)]


def test_knn_reads_the_reference_eval_knn_dump(data, tmp_path, capsys):
    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    train_y, test_y = torch.arange(40) % 4, torch.arange(8) % 4
    torch.save(centres[train_y] + 0.01 * torch.randn(40, 16), tmp_path / "trainfeat.pth")
    torch.save(centres[test_y] + 0.01 * torch.randn(8, 16), tmp_path / "testfeat.pth")
    torch.save(train_y, tmp_path / "trainlabels.pth")
    torch.save(test_y, tmp_path / "testlabels.pth")
    assert dino("knn", "--load_features", tmp_path, "--nb_knn", 5) == 0
    out = capsys.readouterr().out
    assert "8 queries, 40 train images, 4 classes" in out and "top-1 100.0%" in out


def test_thumbnail_keeps_the_aspect_ratio_and_never_enlarges():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 81, 3), np.uint8))
    thumb = Thumbnail(40)(img)
    expected = img.copy()
    expected.thumbnail((40, 40), Image.Resampling.LANCZOS)  # the reference's call
    assert thumb.size == (40, 25) and np.array_equal(np.asarray(thumb), np.asarray(expected))
    assert img.size == (81, 50)  # the input is left as it was
    assert thumbnail_transform(100)(img).shape == (3, 50, 81)  # smaller: kept as it is


def test_retrieve_and_copydetect_with_the_reference_inputs(data, tmp_path, capsys):
    ckpt = ["--pretrained_weights", data / "ckpt.pth", *COMMON]
    wide = tmp_path / "wide"  # images that are not square: thumbnails differ in size
    wide.mkdir()
    for i, path in enumerate(sorted((data / "imagenet" / "val").rglob("*.png"))):
        Image.open(path).resize((45 + 3 * i, 40)).save(wide / f"w{i:02d}.png")
    ranking = tmp_path / "r.csv"
    args = ["--query_path", wide, "--database_path", wide, "--output", ranking, "--top", 2]
    assert dino("retrieve", *ckpt, *args, "--imsize", 60, "--multiscale", "true") == 0
    rows = ranking.read_text().splitlines()
    assert len(rows) == 1 + 12 * 2 and rows[1].startswith("w00.png,1,w00.png,1.0000")
    assert dino("retrieve", *ckpt, *args, "--resize", "square", "--multiscale_sizes", "patch") == 0
    capsys.readouterr()
    pairs = tmp_path / "pairs.csv"
    args = ["--data_path", wide, "--pairs", "--threshold", 0.5, "--neighbours", 2,
            "--whitening_path", data / "imagenet" / "train", "--output", pairs]  # fmt: skip
    assert dino("copydetect", *ckpt, *args, "--whitening", "normalized") == 0
    out = capsys.readouterr().out
    assert "PCA whitening (normalized)" in out and pairs.read_text().startswith("image_a,")
    assert dino("copydetect", *ckpt, *args, "--imsize", 44) == 0  # 44: not a multiple of 8
    assert (
        "PCA whitening (reference) learned on 30 images: 96 dimensions" in capsys.readouterr().out
    )


def test_linear_with_the_reference_flags_steps_its_cosine_per_epoch(data, tmp_path, capsys):
    out = tmp_path / "linear"
    args = ["--pretrained_weights", data / "ckpt.pth", "--data_path", data / "imagenet",
            "--epochs", 3, "--lr", 0.5, "--batch_size_per_gpu", 8, "--output_dir", out]  # fmt: skip
    assert dino("linear", *args, *COMMON) == 0
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    peak = 0.5 * 8 / 256
    # One value per epoch: lr (1 + cos(pi e / 3)) / 2 for the whole of epoch e.
    assert [e["lr"] for e in log] == pytest.approx(
        [peak * (1 + np.cos(np.pi * e / 3)) / 2 for e in range(3)]
    )


def test_the_per_epoch_schedule_is_cosine_annealing_stepped_per_epoch():
    """The reference: torch's CosineAnnealingLR(T_max=epochs, eta_min=0), stepped after
    each epoch; 'iteration' evaluates the same curve at every iteration."""
    param = torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([param], lr=0.3)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=7, eta_min=0)
    expected = []
    for _ in range(7):
        expected += [sgd.param_groups[0]["lr"]] * 5  # 5 iterations an epoch
        sgd.step()
        annealing.step()
    np.testing.assert_allclose(linear_lr_schedule(0.3, 7, 5), expected, rtol=1e-6)
    per_iteration = linear_lr_schedule(0.3, 7, 5, "iteration")
    assert per_iteration[0] == 0.3 and len(set(per_iteration.tolist())) == 35


def test_attention_maps_of_a_folder(data, tmp_path, capsys):
    images = tmp_path / "imgs"
    for i, path in enumerate(sorted((data / "imagenet" / "val").rglob("*.png"))[:2]):
        (images / f"sub{i}").mkdir(parents=True)
        Image.open(path).resize((40 + 8 * i, 32)).save(images / f"sub{i}" / f"p{i}.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "attn"
    ckpt = ["--pretrained_weights", data / "ckpt.pth", "--device", "cpu", "--precision", "fp32"]
    assert dino("attention", *ckpt, "--image_path", images, "--output_dir", out) == 0
    assert "skipped" in capsys.readouterr().err
    for i in range(2):
        pngs = sorted((out / f"sub{i}" / f"p{i}").glob("*.png"))
        assert len(pngs) == 2 * (3 + 1)  # heatmap and mask per head and their mean
        assert Image.open(pngs[0]).size == (40 + 8 * i, 32)
