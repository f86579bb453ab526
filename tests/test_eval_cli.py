"""Every evaluation command end to end through the dino CLI, on both checkpoint layouts.

In-process calls of ``dino.cli.main`` keep these fast; one slow test goes through
``python -m dino`` on a checkpoint written by ``dino train``.
"""

import json
import pickle
import re

import pytest
import torch
from PIL import Image, ImageFilter

from conftest import (
    TINY_TRAIN_FLAGS,
    published_full_checkpoint,
    run_cli,
    tiny_training_checkpoint,
    write_colour_classes,
)
from dino.cli import main
from dino.eval.embed import read_embeddings

COMMON = ["--device", "cpu", "--precision", "fp32"]
LOADER = ["--batch_size", "16", "--num_workers", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_colour_classes(root / "train", per_class=8, classes=3, seed=0)
    write_colour_classes(root / "val", per_class=4, classes=3, seed=1)
    # Copy detection layout: 4 originals, 2 blurred copies each; whitening on the val images.
    (root / "cd" / "originals").mkdir(parents=True)
    (root / "cd" / "copies").mkdir()
    for i, path in enumerate(sorted((root / "train").rglob("*.png"))[::6]):
        img = Image.open(path)
        img.save(root / "cd" / "originals" / f"{i}.png")
        for j in range(2):
            img.filter(ImageFilter.GaussianBlur(j + 1)).save(
                root / "cd" / "copies" / f"{i}_{j}.png"
            )
    ckpt, _ = published_full_checkpoint(
        2, 8, hidden_dim=64, out_dim=32, arch="vit_tiny", embed_dim=48
    )
    torch.save(ckpt, root / "published.pth")
    tiny_training_checkpoint(root / "ours.pth")
    return root


def dino(*args: str) -> int:
    return main([str(a) for a in args])


@pytest.mark.parametrize("checkpoint", ["published.pth", "ours.pth"])
def test_every_command(data, checkpoint, tmp_path, capsys):
    ckpt = ["--checkpoint", data / checkpoint, *COMMON]
    train, val = data / "train", data / "val"

    assert (
        dino("knn", *ckpt, *LOADER, "--train_path", train, "--val_path", val, "--nb_knn", 1, 5) == 0
    )
    out = capsys.readouterr().out
    assert "12 queries, 24 train images, 3 classes" in out and "k=5" in out and "top-5" not in out

    probe = tmp_path / "linear"
    args = ["--train_path", train, "--val_path", val, "--epochs", 1, "--output_dir", probe]
    assert dino("linear", *ckpt, *LOADER, *args, "--lr", 0.5) == 0
    assert "linear probe: top-1" in capsys.readouterr().out
    assert (probe / "linear.pth").is_file() and (probe / "log.txt").is_file()

    emb = tmp_path / "emb.npy"
    assert (
        dino("embed", *ckpt, *LOADER, "--data_path", val, "--output", emb, "--features", "cls_gem")
        == 0
    )
    x, names = read_embeddings(emb)
    assert x.shape == (12, 2 * 48) and names[0] == "class_0/img_000.png"

    same_class = {c.name: [f"{c.name}/{p.name}" for p in c.glob("*.png")] for c in train.iterdir()}
    truth = {p.relative_to(val).as_posix(): same_class[p.parent.name] for p in val.rglob("*.png")}
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    ranking = tmp_path / "ranking.csv"
    args = ["--query_path", val, "--database_path", train, "--ground_truth", tmp_path / "gt.json"]
    assert (
        dino("retrieve", *ckpt, *LOADER, *args, "--multiscale", "--output", ranking, "--top", 3)
        == 0
    )
    out = capsys.readouterr().out
    assert "mAP" in out and "mP@5" in out and "(12 queries)" in out
    assert len(ranking.read_text().splitlines()) == 1 + 12 * 3

    args = ["--data_path", data / "cd", "--whitening_path", val]
    assert dino("copydetect", *ckpt, *LOADER, *args) == 0
    assert "8 copies against 4 database images; mAP" in capsys.readouterr().out
    pairs = tmp_path / "pairs.csv"
    args = ["--data_path", data / "cd", "--pairs", "--threshold", 0.5, "--output", pairs]
    assert dino("copydetect", *ckpt, *LOADER, *args) == 0
    assert pairs.read_text().startswith("image_a,image_b,similarity")

    image = tmp_path / "big.png"
    Image.open(next(val.rglob("*.png"))).resize((45, 70)).save(image)
    assert dino("attention", *ckpt, "--image", image, "--output_dir", tmp_path / "attn") == 0
    pngs = sorted((tmp_path / "attn").glob("*.png"))
    assert len(pngs) == 2 * (3 + 1)  # heatmap and mask for each of 3 heads and their mean
    assert Image.open(pngs[0]).size == (45, 70)


def test_attention_of_an_image_runs_at_the_precision_asked(data, tmp_path, monkeypatch):
    from dino.eval import attention

    seen = []

    def recording(model, images):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return real(model, images)

    real = attention.cls_attention
    monkeypatch.setattr(attention, "cls_attention", recording)
    image = next((data / "val").rglob("*.png"))
    for precision in ("bf16", "fp32"):
        args = ["--image", image, "--output_dir", tmp_path / precision, "--precision", precision]
        assert dino("attention", "--checkpoint", data / "ours.pth", *COMMON, *args) == 0
    assert seen == [torch.bfloat16, False]
    assert len(list((tmp_path / "bf16").glob("*.png"))) == 8


def test_demo_data(tmp_path, capsys):
    assert dino("demo-data", tmp_path, "--n_train", 20, "--n_val", 10) == 0
    assert len(list((tmp_path / "train").rglob("*.png"))) == 20
    assert len(list((tmp_path / "val").rglob("*.png"))) == 10


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "nope.pth"], "nope.pth: no such checkpoint file"),
        (["--arch", "vit_tiny"], "missing keys"),
        (["--image_size", "30"], "image_size: expected a multiple of 8"),
        (["--val_path", "{data}/cd/originals"], "--val_path: .* found an image directly in it"),
        (["--batch_size", "0"], "--batch_size/--batch_size_per_gpu: .*expected a positive integer"),
    ],
)
def test_errors_are_one_line_and_exit_2(data, args, message, capsys):
    base = {"--checkpoint": str(data / "published.pth"), "--train_path": str(data / "train")}
    base["--val_path"] = str(data / "val")
    flags = dict(zip(args[::2], [a.format(data=data) for a in args[1::2]], strict=True))
    argv = [x for kv in {**base, **flags}.items() for x in kv]
    assert dino("knn", *argv, *COMMON, "--num_workers", "0") == 2
    err = capsys.readouterr().err
    assert err.startswith("dino: error: ") and err.strip().count("\n") == 0
    assert re.search(message, err), err


@pytest.mark.slow
def test_train_with_val_path_then_evaluate_through_python_m_dino(data, tmp_path):
    out = tmp_path / "run"
    flags = ["--data_path", data / "train", "--val_path", data / "val", "--output_dir", out]
    trained = run_cli("train", *map(str, flags), *TINY_TRAIN_FLAGS, "--epochs", "1")
    assert trained.returncode == 0, trained.stderr
    assert "k-NN top-1 (k=20, T=0.07)" in trained.stdout and "raw pixels" in trained.stdout
    assert "knn_top1" in json.loads((out / "log.txt").read_text().splitlines()[0])
    ckpt = ["--checkpoint", str(out / "checkpoint.pth"), *COMMON]
    knn = run_cli(
        "knn", *ckpt, *LOADER, "--train_path", str(data / "train"), "--val_path", str(data / "val")
    )
    assert knn.returncode == 0 and "k=20" in knn.stdout, knn.stderr
    attention = run_cli("attention", *ckpt, "--image", str(next((data / "val").rglob("*.png"))),
                        "--output_dir", str(tmp_path / "attn"))  # fmt: skip
    assert attention.returncode == 0 and len(list((tmp_path / "attn").glob("*.png"))) == 8


def test_retrieve_with_a_revisited_ground_truth(data, tmp_path, capsys):
    jpg = tmp_path / "jpg"
    jpg.mkdir()
    files = sorted((data / "val").rglob("*.png"))
    for i, path in enumerate(files):
        Image.open(path).save(jpg / f"img_{i}.jpg")
    gnd = {
        "imlist": [f"img_{i}" for i in range(1, len(files))],
        "qimlist": ["img_0"],
        "gnd": [{"easy": [0, 1], "hard": [2], "junk": [3], "bbx": [0, 0, 24, 24]}],
    }
    with open(tmp_path / "gnd_test.pkl", "wb") as f:
        pickle.dump(gnd, f)
    ckpt = ["--checkpoint", data / "ours.pth", *COMMON, *LOADER]
    args = ["--database_path", jpg, "--ground_truth", tmp_path / "gnd_test.pkl"]
    assert dino("retrieve", *ckpt, *args, "--output", tmp_path / "r.csv") == 0
    out = capsys.readouterr().out
    for split in ("easy", "medium", "hard"):
        assert re.search(rf"{split} +mAP \d", out), out
    args[1] = tmp_path / "missing"
    assert dino("retrieve", *ckpt, *args) == 2
    assert "--database_path / --query_path:" in capsys.readouterr().err


def test_evaluation_options_from_yaml_with_flags_overriding(data, tmp_path, capsys):
    config = tmp_path / "knn.yaml"
    config.write_text(
        f"checkpoint: {data / 'ours.pth'}\ntrain_path: {data / 'train'}\n"
        f"val_path: {data / 'val'}\nnb_knn: [1, 5]\ndevice: cpu\nprecision: fp32\n"
        "num_workers: 0\ntrust_checkpoint: false\n"
    )
    assert dino("knn", "--config", config) == 0
    out = capsys.readouterr().out
    assert "k=1 " in out and "k=5 " in out and "k=20" not in out
    assert dino("knn", "--config", config, "--nb_knn", 3) == 0  # the flag wins
    out = capsys.readouterr().out
    assert "k=3 " in out and "k=5 " not in out
    config.write_text(config.read_text() + "nb_knnn: 3\n")
    assert dino("knn", "--config", config) == 2
    err = capsys.readouterr().err
    assert f"--config {config}:" in err and "--nb_knnn" in err and err.count("\n") == 1
