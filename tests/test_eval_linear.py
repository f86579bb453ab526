"""Linear probe: beats chance on a tiny labelled folder, saves, resumes, refuses mismatches."""

import json

import pytest
import torch

from conftest import write_colour_classes
from dino.checkpoint import CheckpointError
from dino.data.folder import labelled_folder
from dino.data.transforms import eval_transform, linear_train_transform
from dino.eval.features import feature_head
from dino.eval.linear import train_linear
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
