import pickle
import zipfile

import numpy as np
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
    ckpt, teacher = published_full_checkpoint()
    path = tmp_path / "full.pth"
    torch.save(ckpt, path)
    loaded = load_file(path)  # weights only, no --trust_checkpoint
    model = tiny_vit()
    load_strict(model, backbone_state(loaded, "teacher"))
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)
    load_strict(model, backbone_state(loaded, "student"))
    torch.testing.assert_close(model.cls_token, ckpt["student"]["module.backbone.cls_token"])
    assert not torch.equal(model.cls_token, teacher.cls_token)  # one step apart
    # The whole network (backbone + head) loads into our wrapper with the same names.
    wrapper = MultiCropWrapper(tiny_vit(), DINOHead(384, 1000))
    load_strict(wrapper, strip_prefixes(loaded["student"], ("module.",)))


def test_full_checkpoint_as_main_dino_writes_it_loads_without_trust(tmp_path):
    """Its optimizer groups hold numpy.float64 lr / weight_decay, its args a Namespace."""
    ckpt, _ = published_full_checkpoint(depth=1, hidden_dim=32, out_dim=16)
    groups = ckpt["optimizer"]["param_groups"]
    assert type(groups[0]["lr"]) is np.float64 and type(groups[0]["weight_decay"]) is np.float64
    path = tmp_path / "full.pth"
    torch.save(ckpt, path)
    # Named in the pickle; the dtype's class (numpy.dtypes.Float64DType) is checked when built.
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    assert set(unsafe) == {"argparse.Namespace", "numpy._core.multiarray.scalar", "numpy.dtype"}
    loaded = load_file(path)
    lr = loaded["optimizer"]["param_groups"][0]["lr"]
    assert type(lr) is np.float64 and lr == groups[0]["lr"]
    assert loaded["args"].arch == "vit_small" and loaded["fp16_scaler"]["scale"] == 65536.0
    state = loaded["optimizer"]["state"]
    trainable = sum(len(g["params"]) for g in groups)
    assert len(state) == trainable
    assert all({"exp_avg", "exp_avg_sq", "step"} <= set(s) for s in state.values())


def test_numpy_1_scalar_name_loads(tmp_path):
    """numpy 1 pickles float64 through ``numpy.core.multiarray.scalar``."""
    path = tmp_path / "old.pth"
    torch.save({"lr": np.float64(0.25)}, path)
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    entries[pkl] = entries[pkl].replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    assert "numpy.core.multiarray.scalar" in unsafe
    assert load_file(path)["lr"] == 0.25


def test_other_numpy_objects_stay_refused(tmp_path):
    path = tmp_path / "arrays.pth"
    torch.save({"array": np.arange(3)}, path)
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        load_file(path)
    torch.save({"int": np.int64(3)}, path)  # allowed names, but another dtype class
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        load_file(path)


def test_backbone_only_state_dict_loads(tmp_path):
    original = tiny_vit()
    path = tmp_path / "backbone.pth"
    torch.save(original.state_dict(), path)
    model = tiny_vit()
    load_strict(model, backbone_state(load_file(path)))
    torch.testing.assert_close(model.pos_embed, original.pos_embed)


def test_key_remap():
    one, two, three = torch.ones(1), torch.ones(2), torch.ones(3)
    state = {
        "module.backbone.cls_token": one,
        "backbone.module.norm.weight": two,
        "head.mlp.0.weight": three,
    }
    assert strip_prefixes(state) == {
        "cls_token": one,
        "norm.weight": two,
        "head.mlp.0.weight": three,
    }
    assert backbone_state({"teacher": state}) == {"cls_token": one, "norm.weight": two}
    with pytest.raises(CheckpointError, match="no 'teacher' entry.*student"):
        backbone_state({"student": state, "epoch": 3})


def test_wrong_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    ckpt, _ = published_full_checkpoint(depth=3, hidden_dim=32, out_dim=16)
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks\.2\."):
        load_strict(tiny_vit(depth=2), backbone_state(ckpt))
    two_blocks = published_full_checkpoint(depth=2, hidden_dim=32, out_dim=16)[0]
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.2\."):
        load_strict(tiny_vit(depth=3), backbone_state(two_blocks))
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
