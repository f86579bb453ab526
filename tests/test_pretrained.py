"""Continued pretraining: dino train --pretrained_weights starts from any readable checkpoint."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from conftest import (
    TINY_TRAIN_FLAGS,
    published_full_checkpoint,
    run_cli,
    tiny_training_checkpoint,
    write_colour_classes,
)
from dino.checkpoint import CheckpointError
from dino.config import build_config
from dino.recipe import resolve_recipe
from dino.training.builders import build_student_teacher
from dino.training.plan import NetworkSpec, StartSpec
from dino.training.pretrained import adapt_input_conv, load_pretrained


def tiny_values(**overrides):
    values = dict(zip(TINY_TRAIN_FLAGS[::2], TINY_TRAIN_FLAGS[1::2], strict=True))
    values = {k.lstrip("-"): v for k, v in values.items()}
    return {**values, **overrides}


def networks(**overrides):
    config = resolve_recipe(build_config(tiny_values(data_path="x", **overrides)), images=100)
    return build_student_teacher(NetworkSpec.of(config), seed=1)


def test_adapted_filters_answer_grey_and_equal_bands_as_rgb_did():
    weight = torch.randn(8, 3, 4, 4)
    grey = torch.rand(2, 1, 8, 8)
    rgb = F.conv2d(grey.expand(-1, 3, -1, -1), weight, stride=4)
    torch.testing.assert_close(F.conv2d(grey, adapt_input_conv(weight, 1), stride=4), rgb)
    six = adapt_input_conv(weight, 6)
    assert six.shape == (8, 6, 4, 4)
    torch.testing.assert_close(F.conv2d(grey.expand(-1, 6, -1, -1), six, stride=4), rgb)
    assert torch.equal(six[:, 4], weight[:, 1] * 0.5)  # band 4 takes filter 4 mod 3
    assert adapt_input_conv(weight, 3) is weight


def test_our_checkpoint_loads_backbone_and_head_into_both_networks(tmp_path):
    path = tmp_path / "ckpt.pth"
    tiny_training_checkpoint(path, out_dim=64)
    saved = torch.load(path, weights_only=True)["teacher"]
    student, teacher = networks()
    load_pretrained(StartSpec(path, "teacher"), student, teacher)
    for network in (student, teacher):
        for name, value in network.state_dict().items():
            assert torch.equal(value, saved[name]), name


def test_a_head_of_another_shape_starts_fresh_and_says_why(tmp_path, capsys):
    path = tmp_path / "ckpt.pth"
    tiny_training_checkpoint(path, out_dim=32)
    student, teacher = networks()  # out_dim 64
    fresh = student.head.state_dict()
    load_pretrained(StartSpec(path, "teacher"), student, teacher)
    said = capsys.readouterr().out
    assert "backbone loaded; head fresh (head.last_layer.weight_g is (32, 1) there" in said
    assert torch.equal(student.head.state_dict()["mlp.0.weight"], fresh["mlp.0.weight"])


@pytest.mark.slow
def test_published_checkpoint_on_another_grid_computes_what_it_computed(tmp_path):
    """A main_dino full checkpoint trained on a 2 x 2 grid, continued at 64 px (4 x 4)."""
    ckpt, teacher = published_full_checkpoint(depth=2, hidden_dim=2048, out_dim=64)
    path = tmp_path / "full.pth"
    torch.save(ckpt, path)
    student, ours = networks(
        arch="vit_small", embed_dim=384, num_heads=6, patch_size=16, global_crop_size=64
    )
    load_pretrained(StartSpec(path, "teacher"), student, ours)
    assert ours.backbone.pos_embed.shape == (1, 17, 384)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.backbone.eval()(images), teacher.eval()(images))
        torch.testing.assert_close(ours.head(teacher(images)), student.head(teacher(images)))


def test_timm_named_backbone_loads_with_its_classifier_left_out(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=10)
    path = tmp_path / "timm.pth"
    torch.save(model.state_dict(), path)
    student, teacher = networks(
        arch="vit_tiny", embed_dim=192, patch_size=16, global_crop_size=32, num_heads=3
    )
    load_pretrained(StartSpec(path, "teacher"), student, teacher)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            teacher.backbone.eval()(images),
            model.eval().forward_head(model.forward_features(images), pre_logits=True),
            rtol=1e-4,
            atol=1e-4,
        )


def test_weights_of_another_architecture_are_refused_naming_keys(tmp_path):
    path = tmp_path / "ckpt.pth"
    tiny_training_checkpoint(path)
    student, teacher = networks(depth=3)
    with pytest.raises(CheckpointError, match="missing keys: blocks.2"):
        load_pretrained(StartSpec(path, "teacher"), student, teacher)


@pytest.mark.slow
def test_knn_before_the_first_step_is_dino_knn_of_the_file_and_resume_wins(tmp_path):
    write_colour_classes(tmp_path / "train", per_class=8)
    write_colour_classes(tmp_path / "val", per_class=4, seed=1)
    path = tmp_path / "start.pth"
    tiny_training_checkpoint(path, out_dim=64)
    args = [
        "train",
        *TINY_TRAIN_FLAGS,
        "--data_path",
        str(tmp_path / "train"),
        "--val_path",
        str(tmp_path / "val"),
        "--output_dir",
        str(tmp_path / "run"),
        "--pretrained_weights",
        str(path),
        "--epochs",
        "1",
    ]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert f"starting from {path} (teacher): backbone loaded; head loaded" in first.stdout
    before = re.search(r"pretrained network: .*k-NN top-1 ([\d.]+)%", first.stdout)
    knn = run_cli(
        "knn",
        "--checkpoint",
        str(path),
        "--train_path",
        str(tmp_path / "train"),
        "--val_path",
        str(tmp_path / "val"),
        "--nb_knn",
        "20",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--num_workers",
        "0",
    )
    assert knn.returncode == 0, knn.stderr
    assert before is not None
    assert re.search(rf"k=20\s+top-1\s+{re.escape(before.group(1))}%", knn.stdout), knn.stdout
    again = run_cli(*args[:-1], "2")
    assert again.returncode == 0, again.stderr
    assert "not loaded: resuming wins" in again.stdout and "at epoch 1" in again.stdout


def test_missing_file_is_a_configuration_error(tmp_path):
    from dino.training.plan import make_plan

    config = build_config(tiny_values(data_path="x", pretrained_weights=str(tmp_path / "no")))
    with pytest.raises(Exception, match="pretrained_weights: no such file"):
        make_plan(config, torch.device("cpu"), 100)


def test_three_channel_weights_start_a_one_channel_run(tmp_path):
    path = tmp_path / "ckpt.pth"
    rgb = tiny_training_checkpoint(path, out_dim=64)
    student, teacher = networks(in_chans=1)
    load_pretrained(StartSpec(path, "teacher"), student, teacher)
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            teacher.backbone.eval()(grey), rgb.eval()(grey.expand(-1, 3, -1, -1))
        )


def test_timm_vit_continued_at_another_crop_size_computes_what_it_computed(tmp_path):
    """A timm ViT trained at 32 px (2 x 2 grid) continued as timm:NAME at 64 px (4 x 4)."""
    timm = pytest.importorskip("timm")
    name = "vit_tiny_patch16_224"
    model = timm.create_model(name, img_size=32, num_classes=0, dynamic_img_size=True)
    path = tmp_path / "timm32.pth"
    torch.save(model.state_dict(), path)
    student, teacher = networks(arch=f"timm:{name}", patch_size=16, global_crop_size=64,
                                embed_dim=None, depth=None, num_heads=None)  # fmt: skip
    load_pretrained(StartSpec(path, "teacher"), student, teacher)
    assert teacher.backbone.pos_embed.shape == (1, 17, 192)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(teacher.backbone.eval()(images), model.eval()(images))
