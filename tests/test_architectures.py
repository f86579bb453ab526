"""Architecture names beyond the fixed registry: DeiT's aliases and any timm model."""

from __future__ import annotations

import pytest
import torch

from conftest import run_cli, write_colour_classes
from dino.architectures import NAMES, BackboneSpec, architecture, canonical, is_known
from dino.config import ConfigError, build_config
from dino.models import MultiCropWrapper, build_from_spec
from dino.models.head import DINOHead
from dino.recipe import resolve_recipe
from dino.training.checkpointing import check_architecture
from dino.training.plan import NetworkSpec, make_plan

timm = pytest.importorskip("timm")

TIMM_VIT = "timm:test_vit"  # timm's tiny test ViT: 64 dims, patch 16
TIMM_FLAGS = {
    "patch_size": 16,
    "global_crop_size": 32,
    "local_crop_size": 16,
    "local_crops_number": 2,
    "out_dim": 64,
    "batch_size_per_gpu": 8,
    "num_workers": 0,
    "precision": "fp32",
    "device": "cpu",
}


def test_deit_names_are_the_vits_they_name(tmp_path):
    assert canonical("deit_small") == "vit_small" and is_known("deit_base")
    assert architecture("deit_base") == architecture("vit_base")
    assert BackboneSpec("deit_tiny").feature_dim == 192
    config = build_config({"data_path": "x", "arch": "deit_small"})
    network = NetworkSpec.of(resolve_recipe(config, images=100))
    assert network.shape()["arch"] == "vit_small"
    # A vit_small run resumes a deit_small checkpoint and the other way round.
    check_architecture(tmp_path / "c.pth", {"arch": "deit_small", "patch_size": 16}, network)
    assert "deit_small" in NAMES and "timm:NAME" in NAMES


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match="timm:NAME"):
        build_config({"data_path": "x", "arch": "vit_huge"})
    with pytest.raises(ValueError, match="timm has no model 'no_such_model'"):
        architecture("timm:no_such_model")
    with pytest.raises(ConfigError, match="arch: timm has no model"):
        make_plan(build_config({"data_path": "x", "arch": "timm:nope"}), torch.device("cpu"), 99)


def test_timm_sizes_come_from_the_name():
    entry = architecture(TIMM_VIT)
    assert (entry.family, entry.embed_dim, entry.patch_size) == ("timm", 64, 16)
    with pytest.raises(ConfigError, match="depth: expected no value with a timm model"):
        build_config({"data_path": "x", "arch": TIMM_VIT, "depth": 2})
    config = build_config({"data_path": "x", "arch": TIMM_VIT, **TIMM_FLAGS, "local_crop_size": 8})
    with pytest.raises(ConfigError, match="local_crop_size: expected a multiple of"):
        make_plan(config, torch.device("cpu"), 99)


def test_a_timm_vit_gives_dinos_tokens_and_any_crop_size():
    vit = build_from_spec(BackboneSpec(TIMM_VIT, img_size=32, in_chans=1)).eval()
    images = torch.randn(2, 1, 48, 32)
    with torch.no_grad():
        last = vit.get_intermediate_layers(images, 2)
        assert [x.shape for x in last] == [(2, 1 + 6, 64)] * 2
        torch.testing.assert_close(last[-1][:, 0], vit(images))
    assert vit.patch_size == 16 and vit.embed_dim == 64


@pytest.mark.slow
def test_a_timm_convnet_trains_as_a_backbone():
    resnet = build_from_spec(BackboneSpec("timm:test_resnet", in_chans=2), drop_path_rate=0.1)
    assert architecture("timm:test_resnet").embed_dim == resnet.embed_dim == 96
    network = MultiCropWrapper(resnet, DINOHead(96, 16, hidden_dim=32, bottleneck_dim=8))
    out = network([torch.randn(4, 2, 32, 32), torch.randn(4, 2, 16, 16)])
    assert out.shape == (8, 16)
    out.sum().backward()


@pytest.mark.slow
def test_timm_vit_trains_evaluates_and_loads_back_into_timm(tmp_path):
    write_colour_classes(tmp_path / "train", per_class=8)
    write_colour_classes(tmp_path / "val", per_class=4, seed=1)
    flags = [f"--{k}={v}" for k, v in TIMM_FLAGS.items()]
    out = tmp_path / "run"
    trained = run_cli(
        "train",
        "--arch",
        TIMM_VIT,
        *flags,
        "--data_path",
        str(tmp_path / "train"),
        "--output_dir",
        str(out),
        "--epochs",
        "1",
    )
    assert trained.returncode == 0, trained.stderr
    knn = run_cli(
        "knn",
        "--checkpoint",
        str(out / "checkpoint.pth"),
        "--train_path",
        str(tmp_path / "train"),
        "--val_path",
        str(tmp_path / "val"),
        "--nb_knn",
        "5",
        "--num_workers",
        "0",
    )
    assert knn.returncode == 0, knn.stderr
    assert "k=5" in knn.stdout
    teacher = torch.load(out / "checkpoint.pth", weights_only=True)["teacher"]
    backbone = {k[len("backbone.") :]: v for k, v in teacher.items() if k.startswith("backbone.")}
    plain = timm.create_model("test_vit", num_classes=0, img_size=32)
    plain.load_state_dict(backbone, strict=True)  # timm's own names


def test_a_timm_backbone_with_head_layers_of_its_own_loads_back(tmp_path):
    """timm's ConvNeXt keeps head.norm without a classifier: it is backbone, not DINO head."""
    from dino.eval.load import load_backbone
    from dino.training.plan import StartSpec
    from dino.training.pretrained import load_pretrained

    def network():
        backbone = build_from_spec(BackboneSpec("timm:test_convnext"))
        return MultiCropWrapper(backbone, DINOHead(backbone.embed_dim, 16, hidden_dim=32))

    trained = network()
    path = tmp_path / "ckpt.pth"
    torch.save({"teacher": trained.state_dict(), "args": {"arch": "timm:test_convnext"}}, path)
    loaded = load_backbone(path)
    assert "head.norm.weight" in loaded.state_dict()
    student, teacher = network(), network()
    load_pretrained(StartSpec(path, "teacher"), student, teacher)
    for name, value in trained.state_dict().items():
        assert torch.equal(teacher.state_dict()[name], value), name


def test_a_bare_timm_state_dict_keeps_the_head_layers_its_backbone_has(tmp_path):
    """A classifier's state dict from timm: head.fc is left out, head.norm is backbone."""
    from dino.training.plan import StartSpec
    from dino.training.pretrained import load_pretrained

    classifier = timm.create_model("test_convnext", num_classes=10)
    path = tmp_path / "timm.pth"
    torch.save(classifier.state_dict(), path)
    networks = []
    for _ in range(2):
        backbone = build_from_spec(BackboneSpec("timm:test_convnext"))
        networks.append(MultiCropWrapper(backbone, DINOHead(backbone.embed_dim, 16, hidden_dim=32)))
    load_pretrained(StartSpec(path, "teacher"), *networks)
    theirs = classifier.state_dict()
    for name, value in networks[1].backbone.state_dict().items():
        assert torch.equal(value, theirs[name]), name
