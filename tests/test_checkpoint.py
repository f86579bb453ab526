import pickle

import pytest
import torch

from conftest import RunsCode, published_full_checkpoint
from dino.checkpoint import (
    CheckpointError,
    backbone_state,
    load_file,
    load_strict,
    save_atomic,
    strip_prefixes,
)
from dino.models import DINOHead, MultiCropWrapper, build_backbone


def tiny_vit(depth=2):
    return build_backbone("vit_small", patch_size=16, img_size=32, depth=depth)


def test_published_full_checkpoint_loads_strictly(tmp_path):
    ckpt, original = published_full_checkpoint()
    path = tmp_path / "full.pth"
    torch.save(ckpt, path)
    loaded = load_file(path)
    for key in ("teacher", "student"):
        model = tiny_vit()
        load_strict(model, backbone_state(loaded, key))
        for name, value in original.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], value)
    # The whole teacher (backbone + head) loads into our wrapper with the same names.
    wrapper = MultiCropWrapper(tiny_vit(), DINOHead(384, 1000))
    load_strict(wrapper, strip_prefixes(loaded["student"], ("module.",)))


def test_backbone_only_state_dict_loads(tmp_path):
    original = tiny_vit()
    path = tmp_path / "backbone.pth"
    torch.save(original.state_dict(), path)
    model = tiny_vit()
    load_strict(model, backbone_state(load_file(path)))
    torch.testing.assert_close(model.pos_embed, original.pos_embed)


def test_key_remap():
    state = {
        "module.backbone.cls_token": 1,
        "backbone.module.norm.weight": 2,
        "head.mlp.0.weight": 3,
    }
    assert strip_prefixes(state) == {"cls_token": 1, "norm.weight": 2, "head.mlp.0.weight": 3}
    assert backbone_state({"teacher": state}) == {"cls_token": 1, "norm.weight": 2}
    with pytest.raises(CheckpointError, match="no 'teacher' entry.*student"):
        backbone_state({"student": state, "epoch": 3})


def test_wrong_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    ckpt, _ = published_full_checkpoint(depth=3)
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks\.2\."):
        load_strict(tiny_vit(depth=2), backbone_state(ckpt))
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.2\."):
        load_strict(tiny_vit(depth=3), backbone_state(published_full_checkpoint(depth=2)[0]))
    base = build_backbone("vit_base", patch_size=16, img_size=32, depth=2)
    with pytest.raises(CheckpointError, match="shape mismatch.*cls_token"):
        load_strict(base, backbone_state(ckpt))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"teacher": RunsCode()}, f)
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        load_file(path)
    assert not (tmp_path / "pwned").exists()


def test_save_atomic_replaces_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_atomic({"epoch": 1}, path)
    save_atomic({"epoch": 2}, path)
    assert load_file(path)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]
