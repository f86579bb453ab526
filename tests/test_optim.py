import dataclasses
import math

import pytest
import torch
from torch import nn

from dino.models import DINOHead, MultiCropWrapper, build_backbone
from dino.training.ema import update_teacher
from dino.training.optim import (
    LARS,
    build_optimizer,
    cancel_last_layer_gradients,
    clip_gradients,
    param_groups,
    set_lr_and_wd,
)


def small_dino(norm_last_layer=True):
    backbone = build_backbone(
        "vit_tiny", patch_size=8, img_size=16, embed_dim=24, depth=1, num_heads=2
    )
    return MultiCropWrapper(
        backbone, DINOHead(24, 10, norm_last_layer=norm_last_layer, hidden_dim=16, bottleneck_dim=8)
    )


def test_param_groups_exclude_biases_and_1d_and_frozen():
    model = small_dino()
    decay, no_decay = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0
    assert "backbone.cls_token" in decay_names and "backbone.pos_embed" in decay_names
    assert "backbone.blocks.0.attn.qkv.weight" in decay_names
    assert "backbone.blocks.0.attn.qkv.bias" in no_decay_names
    assert "backbone.norm.weight" in no_decay_names
    assert "head.last_layer.weight_v" in decay_names
    assert "head.last_layer.weight_g" not in decay_names | no_decay_names  # frozen
    assert all(p.ndim > 1 for p in decay["params"])
    unfrozen = small_dino(norm_last_layer=False)
    names2 = {id(p): n for n, p in unfrozen.named_parameters()}
    assert "head.last_layer.weight_g" in {
        names2[id(p)] for p in param_groups(unfrozen)[0]["params"]
    }


def test_schedule_sets_lr_everywhere_and_wd_on_first_group():
    opt = build_optimizer("adamw", param_groups(small_dino()))
    set_lr_and_wd(opt, 0.1, 0.3)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]


def test_clip_gradients_per_parameter():
    a = nn.Parameter(torch.zeros(3))
    b = nn.Parameter(torch.zeros(2))
    model = nn.ParameterList([a, b])
    a.grad = torch.tensor([3.0, 4.0, 0.0])  # norm 5 -> clipped to 1
    b.grad = torch.tensor([0.3, 0.4])  # norm 0.5 -> untouched
    norms = clip_gradients(model, 1.0)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.5]))
    torch.testing.assert_close(a.grad, torch.tensor([3.0, 4.0, 0.0]) / (5.0 + 1e-6))
    torch.testing.assert_close(b.grad, torch.tensor([0.3, 0.4]))


def test_last_layer_gradient_cancelled_in_first_epochs():
    model = small_dino(norm_last_layer=False)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    cancel_last_layer_gradients(model, epoch=1, freeze_epochs=1)
    assert model.head.last_layer.weight_v.grad is not None
    cancel_last_layer_gradients(model, epoch=0, freeze_epochs=1)
    assert (
        model.head.last_layer.weight_v.grad is None and model.head.last_layer.weight_g.grad is None
    )
    assert model.head.mlp[0].weight.grad is not None


def test_ema_step():
    torch.manual_seed(0)
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in teacher.parameters()]
    update_teacher(teacher, student, 0.9)
    for t_old, t_new, s in zip(before, teacher.parameters(), student.parameters(), strict=False):
        torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * s)


@pytest.mark.parametrize("name", ["adamw", "sgd", "lars"])
def test_optimizers_step(name):
    model = small_dino()
    opt = build_optimizer(name, param_groups(model))
    set_lr_and_wd(opt, 0.1, 0.04)
    before = model.backbone.patch_embed.proj.weight.clone()
    model(torch.randn(2, 3, 16, 16)).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(before, model.backbone.patch_embed.proj.weight)
    assert torch.all(model.head.last_layer.weight_g == 1)  # frozen magnitude stays 1


def test_lars_trust_ratio():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    w.grad = torch.tensor([[0.0, 1.0]])  # norm 1
    opt = LARS([w], lr=1.0, weight_decay=0.0, momentum=0.0, eta=0.001)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0 - 0.001 * 5.0]]))


def test_collapse_advice_fits_the_run():
    from dino.recipe import REFERENCE, RunSize, auto_recipe
    from dino.training.diagnostics import diagnose_collapse

    def collapse_warning(*args, **kwargs):
        found = diagnose_collapse(*args, **kwargs)
        return None if found is None else found.message

    # The paper's values on 2500 images and 780 iterations: every remedy, with its value.
    msg = collapse_warning(10.9, 10.0, REFERENCE, iterations=780, images=2500)
    assert msg is not None and msg.startswith("uniform collapse")
    assert "--teacher_temp" not in msg  # a sharper teacher made small runs worse
    assert "--momentum_teacher 0.9872" in msg  # horizon 78: 10% of 780
    assert "averages 250 iterations" in msg
    assert "--out_dim 128 (65536 prototypes for 2500 images)" in msg
    assert "at least 500 iterations" not in msg
    short = collapse_warning(10.9, 10.0, REFERENCE, iterations=190, images=2500)
    assert short is not None and "at least 500 iterations (this run has 190)" in short
    # A short-horizon teacher and one dimension winning: slow the teacher down.
    small = auto_recipe(RunSize(images=2500, batch=32, epochs=8))
    fast = dataclasses.replace(small, momentum_teacher=0.95)
    msg = collapse_warning(2.0, 0.1, fast, iterations=624, images=2500)
    assert msg is not None and msg.startswith("dominant-dimension collapse")
    assert "--momentum_teacher 0.99" in msg and f"--lr {small.lr / 2:g}" in msg
    # Healthy: nothing to say.
    assert collapse_warning(3.0, 4.5, small, iterations=624, images=2500) is None


def test_a_near_uniform_teacher_is_not_called_collapse_while_knn_rises(capsys):
    from dino.config import TrainConfig
    from dino.recipe import recipe_of, resolve_recipe
    from dino.training.report import report_epoch

    config = resolve_recipe(TrainConfig(data_path="x", epochs=30), images=2500)
    ln_k = math.log(config.out_dim)
    advised: set[str] = set()

    def epoch(n: int, gain: float | None) -> str:
        stats = dict(epoch=n, teacher_entropy=0.96 * ln_k, batch_entropy=ln_k, skipped_images=0)
        report_epoch(stats, recipe_of(config), 570, 2500, advised, gain)
        captured = capsys.readouterr()
        return captured.out + captured.err

    assert "uniform collapse" in epoch(1, 0.5) and "--momentum_teacher" not in epoch(2, None)
    said = epoch(3, 12.0)  # k-NN 12 points over the untrained network
    assert "it is learning" in said and "WARNING" not in said
    assert epoch(4, 12.0) == ""  # said once
