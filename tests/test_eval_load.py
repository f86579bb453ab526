"""One loader for every checkpoint layout: ours, published full, backbone only, ResNet."""

import argparse

import pytest
import torch

from conftest import published_full_checkpoint, tiny_training_checkpoint
from dino.checkpoint import CheckpointError
from dino.eval.load import describe_backbone, load_backbone, native_image_size
from dino.models import build_backbone


def same_weights(a, b):
    for name, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], value)


def test_our_training_checkpoint(tmp_path):
    teacher = tiny_training_checkpoint(tmp_path / "checkpoint.pth")
    model = load_backbone(tmp_path / "checkpoint.pth")
    same_weights(teacher, model)
    assert model.num_heads == 3 and native_image_size(model) == 32
    assert describe_backbone(model) == "ViT/8 (48 dims, 2 blocks, 3 heads, 32 px)"


def test_published_full_checkpoint_teacher_and_student(tmp_path):
    ckpt, teacher = published_full_checkpoint(depth=2, patch_size=8, hidden_dim=64, out_dim=32)
    path = tmp_path / "full.pth"
    torch.save(ckpt, path)
    model = load_backbone(path, "teacher")
    same_weights(teacher, model)
    assert model.num_heads == 6  # vit_small, from the recorded arch
    student = load_backbone(path, "student")
    for name, value in student.state_dict().items():
        torch.testing.assert_close(value, ckpt["student"][f"module.backbone.{name}"])
    with pytest.raises(CheckpointError, match="no 'ema' entry"):
        load_backbone(path, "ema")


def test_backbone_only_state_dict_infers_the_architecture(tmp_path):
    original = build_backbone("vit_small", patch_size=8, img_size=48, depth=3)
    path = tmp_path / "backbone.pth"
    torch.save(original.state_dict(), path)
    model = load_backbone(path)
    same_weights(original, model)
    assert len(model.blocks) == 3 and model.patch_size == 8 and native_image_size(model) == 48
    assert model.num_heads == 6


def test_arch_flag_is_checked_strictly(tmp_path):
    path = tmp_path / "backbone.pth"
    torch.save(build_backbone("vit_small", patch_size=16, img_size=32, depth=2).state_dict(), path)
    with pytest.raises(
        CheckpointError, match=r"missing keys: blocks\.2\..*shape mismatch.*cls_token"
    ):
        load_backbone(path, arch="vit_tiny")
    with pytest.raises(CheckpointError, match="shape mismatch.*patch_embed.proj.weight"):
        load_backbone(path, patch_size=8)
    with pytest.raises(CheckpointError, match="'xcit' is not one this package builds; valid: vit"):
        load_backbone(path, arch="xcit")


def test_resnet_and_unknown_widths(tmp_path):
    resnet = build_backbone("resnet18")
    path = tmp_path / "resnet.pth"
    torch.save(
        {
            "teacher": {f"module.backbone.{k}": v for k, v in resnet.state_dict().items()},
            "args": argparse.Namespace(arch="resnet18"),
        },
        path,
    )
    same_weights(resnet, load_backbone(path))
    torch.save({k: v for k, v in resnet.state_dict().items()}, path)
    same_weights(resnet, load_backbone(path))  # inferred from its keys
    odd = build_backbone("vit_tiny", patch_size=8, img_size=32, depth=1, embed_dim=48)
    torch.save(odd.state_dict(), path)
    with pytest.raises(CheckpointError, match="48-dim ViT does not record its number of heads"):
        load_backbone(path)
    torch.save({"weights": 1}, path)
    with pytest.raises(CheckpointError, match="'weights' is of type int, not a tensor"):
        load_backbone(path)
    torch.save({"weights": torch.ones(1)}, path)
    with pytest.raises(CheckpointError, match="cannot tell the architecture"):
        load_backbone(path)
