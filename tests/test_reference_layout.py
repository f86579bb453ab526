"""Checkpoints cross both ways between dino train and the authors' main_dino.py.

(a) a checkpoint dino train writes is restarted by a transcription of main_dino's
``restart_from_checkpoint`` into networks built as main_dino builds them, every key loaded;
(b) a checkpoint written as main_dino writes it (``published_full_checkpoint``) is resumed
by dino train with each optimizer moment on its own parameter; (c) optimizer state that
does not fit the parameters is refused in one line, never applied by position.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from conftest import (
    TINY_TRAIN_FLAGS,
    ReferenceHead,
    ReferenceWrapper,
    published_full_checkpoint,
    reference_param_groups,
)
from dino.checkpoint import CheckpointError
from dino.config import build_config
from dino.models import build_backbone
from dino.training.checkpointing import GUARDED, load_optimizer_state, resume
from dino.training.plan import make_plan
from dino.training.trainer import build_state, train


def restart_from_checkpoint(path, run_variables=None, **objects):
    """main_dino.py's utils.restart_from_checkpoint, step for step: ``torch.load`` with the
    defaults, then for each named object present in the file ``load_state_dict(...,
    strict=False)`` (objects without ``strict``, the optimizer and the scaler, retried
    without it), else "not found"; then the run variables (the epoch). Returns what it
    prints for each object: the load message, "loaded", "failed" or "not found"."""
    checkpoint = torch.load(path, map_location="cpu")
    said = {}
    for key, obj in objects.items():
        if key not in checkpoint or obj is None:
            said[key] = "not found"
            continue
        try:
            said[key] = obj.load_state_dict(checkpoint[key], strict=False)
        except TypeError:
            try:
                obj.load_state_dict(checkpoint[key])
                said[key] = "loaded"
            except ValueError:
                said[key] = "failed"
    for name in run_variables or {}:
        if name in checkpoint:
            run_variables[name] = checkpoint[name]
    return said


class DDP(nn.Module):
    """What DistributedDataParallel adds to a state dict: the ``module.`` prefix."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class ReferenceLoss(nn.Module):
    """main_dino's DINOLoss state: one buffer, the center."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(1, out_dim))


def tiny_config(data, out, **overrides):
    flags = dict(zip(TINY_TRAIN_FLAGS[::2], TINY_TRAIN_FLAGS[1::2], strict=True))
    values = {k.lstrip("-"): v for k, v in flags.items()}
    values.update(data_path=str(data), output_dir=str(out), **overrides)
    return build_config(values)


def reference_network(norm_last_layer: bool) -> ReferenceWrapper:
    backbone = build_backbone("vit_tiny", 8, 32, embed_dim=48, depth=2, num_heads=3)
    head = ReferenceHead(48, 64)
    head.last_layer.weight_g.requires_grad = not norm_last_layer
    return ReferenceWrapper(backbone, head)


@pytest.mark.slow
@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_main_dino_restarts_from_our_checkpoint(image_folder, tmp_path, norm_last_layer):
    out = tmp_path / "run"
    train(
        tiny_config(
            image_folder,
            out,
            epochs=1,
            freeze_last_layer=0,  # every parameter steps, so every one has moments
            norm_last_layer=norm_last_layer,
        )
    )
    ours = torch.load(out / "checkpoint.pth", weights_only=True)
    student, teacher = DDP(reference_network(norm_last_layer)), reference_network(norm_last_layer)
    optimizer = torch.optim.AdamW(reference_param_groups(student))
    to_restore = {"epoch": 0}
    said = restart_from_checkpoint(
        out / "checkpoint.pth",
        run_variables=to_restore,
        student=student,
        teacher=teacher,
        optimizer=optimizer,
        fp16_scaler=None,
        dino_loss=ReferenceLoss(64),
    )
    for key in ("student", "teacher", "dino_loss"):
        assert said[key].missing_keys == [] and said[key].unexpected_keys == [], key
    assert said["optimizer"] == "loaded" and said["fp16_scaler"] == "not found"
    assert to_restore["epoch"] == 1
    for key, network in (("student", student), ("teacher", teacher)):
        for name, value in network.state_dict().items():
            assert torch.equal(value, ours[key][name]), f"{key}.{name}"
    # Every moment sits on the parameter it was computed for: by name against our optimizer.
    names = {id(p): n for n, p in student.module.named_parameters()}
    saved = ours["optimizer"]
    by_name = {
        n: saved["state"][i]
        for g in saved["param_groups"]
        for n, i in zip(g["param_names"], g["params"], strict=True)
    }
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(params) == len(by_name) == len(optimizer.state)
    for p in params:
        state = optimizer.state[p]
        assert state["exp_avg"].shape == p.shape, names[id(p)]
        assert torch.equal(state["exp_avg_sq"], by_name[names[id(p)]]["exp_avg_sq"])


@pytest.mark.slow
def test_dino_train_resumes_a_main_dino_checkpoint(image_folder, tmp_path, capsys):
    ckpt, _ = published_full_checkpoint(depth=2, out_dim=64, fp16=False)
    out = tmp_path / "run"
    out.mkdir()
    torch.save(ckpt, out / "checkpoint.pth")
    config = tiny_config(
        image_folder,
        out,
        arch="vit_small",
        embed_dim=384,
        num_heads=6,
        patch_size=16,
        recipe="reference",
        out_dim=64,
        epochs=101,
        # The official run's crops, batch and schedules, resumed on tiny data with tiny crops.
        allow_change=",".join(GUARDED),
    )
    # The moments land on the parameters main_dino computed them for (matched by name).
    plan = make_plan(config, torch.device("cpu"), 24)
    state = build_state(plan)
    assert resume(out / "checkpoint.pth", state, plan.network, plan.args,
                  plan.control.allow_change).epoch == 100  # fmt: skip
    trainable = [k[len("module.") :] for k in ckpt["student"] if not k.endswith("weight_g")]
    student = {k[len("module.") :]: v for k, v in ckpt["student"].items()}
    decay = [k for k in trainable if not k.endswith(".bias") and student[k].ndim > 1]
    order = decay + [k for k in trainable if k not in decay]
    saved_ids = [i for g in ckpt["optimizer"]["param_groups"] for i in g["params"]]
    params = dict(state.student.named_parameters())
    for name, i in zip(order, saved_ids, strict=True):
        moments = state.optimizer.state[params[name]]
        assert torch.equal(moments["exp_avg"], ckpt["optimizer"]["state"][i]["exp_avg"]), name
    torch.testing.assert_close(state.loss_fn.center, ckpt["dino_loss"]["center"])
    # And the whole command trains on from there.
    summary = train(config)
    assert summary.epochs_run == 1
    assert "resumed from" in capsys.readouterr().out
    after = torch.load(out / "checkpoint.pth", weights_only=True)
    assert after["epoch"] == 101
    assert not torch.equal(
        after["student"]["module.backbone.cls_token"], ckpt["student"]["module.backbone.cls_token"]
    )


def small_optimizer(norm_last_layer: bool = False):
    from dino.models import DINOHead, MultiCropWrapper
    from dino.training.optim import param_groups

    backbone = build_backbone("vit_tiny", 8, 16, embed_dim=24, depth=1, num_heads=2)
    model = MultiCropWrapper(
        backbone, DINOHead(24, 10, norm_last_layer=norm_last_layer, hidden_dim=16, bottleneck_dim=8)
    )
    optimizer = torch.optim.AdamW(param_groups(model))
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_optimizer_state_is_restored_by_name():
    model, optimizer = small_optimizer()
    saved = optimizer.state_dict()
    # Put the saved parameters in another order: restoring by position would mix them up.
    group = saved["param_groups"][0]
    group["params"], group["param_names"] = group["params"][::-1], group["param_names"][::-1]
    fresh_model, fresh = small_optimizer()
    load_optimizer_state(fresh, saved, "ckpt")
    params = dict(fresh_model.named_parameters())
    for name, p in model.named_parameters():
        if p in optimizer.state:
            assert torch.equal(fresh.state[params[name]]["exp_avg"], optimizer.state[p]["exp_avg"])


def test_optimizer_state_in_the_old_head_order_is_refused_in_one_line():
    """Our checkpoints before weight_g came first: weight_v's moments in weight_g's place."""
    _, optimizer = small_optimizer(norm_last_layer=False)
    saved = optimizer.state_dict()
    for g in saved["param_groups"]:
        del g["param_names"]  # main_dino's and our older checkpoints name nothing
    ids = saved["param_groups"][0]["params"]
    g_at, v_at = len(ids) - 2, len(ids) - 1  # head.last_layer.weight_g, then weight_v
    ids[g_at], ids[v_at] = ids[v_at], ids[g_at]
    _, fresh = small_optimizer(norm_last_layer=False)
    with pytest.raises(CheckpointError) as e:
        load_optimizer_state(fresh, saved, "old.pth")
    message = str(e.value)
    assert "\n" not in message and "head.last_layer.weight_g" in message
    assert "--pretrained_weights" in message


@pytest.mark.parametrize("as_namespace", [False, True])
def test_recorded_args_are_read_as_a_dict_or_a_namespace(tmp_path, as_namespace):
    """main_dino records args as a Namespace, dino train as a dict: both are checked."""
    from dino.recipe import resolve_recipe
    from dino.training.checkpointing import check_architecture
    from dino.training.plan import NetworkSpec

    network = NetworkSpec.of(resolve_recipe(tiny_config("x", tmp_path), images=100))
    fits, other = {"arch": "vit_tiny", "patch_size": 8}, {"arch": "vit_base", "out_dim": 64}
    if as_namespace:
        fits, other = argparse.Namespace(**fits), argparse.Namespace(**other)
    check_architecture(tmp_path / "c.pth", fits, network)
    with pytest.raises(CheckpointError, match=r"arch=vit_base .*\(vit_base vs vit_tiny\)"):
        check_architecture(tmp_path / "c.pth", other, network)
