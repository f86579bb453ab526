"""Linear probe: beats chance on a tiny labelled folder, saves, resumes, refuses mismatches;
a published linear head evaluates without training."""

import json
import re

import pytest
import torch

from conftest import tiny_training_checkpoint, write_colour_classes
from dino.checkpoint import CheckpointError
from dino.cli import main
from dino.data.folder import labelled_folder
from dino.data.transforms import eval_transform, linear_train_transform
from dino.eval.features import extract_features, feature_head
from dino.eval.linear import LinearClassifier, linear_scores, load_linear_head, train_linear
from dino.models import build_backbone


def test_linear_probe_beats_chance_and_resumes(tmp_path):
    write_colour_classes(tmp_path / "train", per_class=12, classes=3, seed=0)
    write_colour_classes(tmp_path / "val", per_class=6, classes=3, seed=1)
    train = labelled_folder(tmp_path / "train", linear_train_transform(32))
    val = labelled_folder(tmp_path / "val", eval_transform(32), train.classes)
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", patch_size=8, img_size=32, depth=2, embed_dim=48, num_heads=3)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    features = feature_head("lastn_cls", n_last_blocks=2, avgpool=True)
    out = tmp_path / "probe"

    def run(epochs, info=None):
        return train_linear(
            vit, features, train, val, num_classes=3, output_dir=out, epochs=epochs, lr=0.5,
            batch_size=12,
            run_info=info or {"classes": train.classes},
        )  # fmt: skip

    result = run(4)
    assert result.top1 > 60, result  # chance: 33 %
    assert result.top5 is None and result.epochs_run == 4
    for name, value in vit.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed: the backbone must stay frozen"
    ckpt = torch.load(out / "linear.pth", weights_only=True)
    assert ckpt["epoch"] == 4 and ckpt["linear"]["linear.weight"].shape == (3, 3 * 48)
    assert len((out / "log.txt").read_text().splitlines()) == 4

    resumed = run(5)
    assert resumed.epochs_run == 1
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1, 2, 3, 4]
    with pytest.raises(CheckpointError, match="was trained with classes="):
        run(6, {"classes": ["a", "b", "c"]})


def test_published_linear_head_gives_the_same_predictions(tmp_path, capsys):
    """A head trained on our ViT-B-style features (last [CLS] + pooled tokens), saved in the
    layout of the reference's *_linearweights.pth and read back with --evaluate, gives the
    predictions and accuracy of the trained one."""
    write_colour_classes(tmp_path / "train", per_class=12, classes=3, seed=0)
    write_colour_classes(tmp_path / "val", per_class=6, classes=3, seed=1)
    vit = tiny_training_checkpoint(tmp_path / "ckpt.pth").eval()
    common = ["--checkpoint", tmp_path / "ckpt.pth", "--val_path", tmp_path / "val"]
    common += ["--device", "cpu", "--precision", "fp32", "--batch_size", "16"]
    common += ["--num_workers", "0", "--n_last_blocks", "1", "--avgpool_patchtokens", "true"]
    probe = tmp_path / "probe"
    train_args = ["--train_path", tmp_path / "train", "--epochs", "4", "--lr", "0.5"]
    assert main(["linear", *map(str, [*common, *train_args, "--output_dir", probe])]) == 0
    trained = re.search(r"linear probe: top-1 (\S+)%", capsys.readouterr().out).group(1)
    assert float(trained) > 50  # chance: 33 %

    ours = torch.load(probe / "linear.pth", weights_only=True)
    published = {  # eval_linear.py saves its DDP-wrapped classifier under state_dict
        "epoch": 2,
        "state_dict": {f"module.{k}": v for k, v in ours["linear"].items()},
        "best_acc": 50.0,
    }
    path = tmp_path / "dino_tiny_linearweights.pth"
    torch.save(published, path)
    head = load_linear_head(path)
    assert head.classes is None and head.classifier.linear.in_features == 2 * 48

    val = labelled_folder(tmp_path / "val", eval_transform(32))
    x = extract_features(vit, val, features=feature_head("lastn_cls", 1, True)).features
    reference = LinearClassifier(2 * 48, 3)
    reference.load_state_dict(ours["linear"])
    assert torch.equal(linear_scores(head.classifier, x).argmax(1), reference(x).argmax(1))

    evaluate = ["--evaluate", "--pretrained_linear", path]
    assert main(["linear", *map(str, [*common, *evaluate])]) == 0
    out = capsys.readouterr().out
    assert f"on 18 val images: top-1 {trained}%" in out, out
    assert not (tmp_path / "output").exists()  # nothing trained, nothing written

    # Features of another layout do not fit the head: refused before the long pass.
    assert main(["linear", *map(str, [*common[:-2], *evaluate])]) == 2
    err = capsys.readouterr().err
    assert "reads 96 features, --n_last_blocks 1 --avgpool_patchtokens false gives 48" in err
    # Without recorded class names, output i is the i-th class folder: all must be there.
    write_colour_classes(tmp_path / "two", per_class=2, classes=2)
    assert main(["linear", *map(str, [*common, *evaluate, "--val_path", tmp_path / "two"])]) == 2
    assert "2 class folders, but" in capsys.readouterr().err
