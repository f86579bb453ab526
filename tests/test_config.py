import dataclasses

import pytest
import yaml

from dino.cli import build_parser, config_from_args
from dino.config import DEMO_PRESET, ConfigError, TrainConfig, build_config
from dino.recipe import resolve_recipe


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_defaults_are_the_reference_values():
    c = resolve_recipe(TrainConfig(data_path="x", recipe="reference"), images=1000)
    assert (c.arch, c.patch_size, c.out_dim, c.norm_last_layer) == ("vit_small", 16, 65536, True)
    assert (c.momentum_teacher, c.teacher_temp, c.warmup_teacher_temp) == (0.996, 0.04, 0.04)
    assert (c.lr, c.min_lr, c.warmup_epochs, c.epochs) == (0.0005, 1e-6, 10, 100)
    assert (c.weight_decay, c.weight_decay_end, c.clip_grad, c.freeze_last_layer) == (
        0.04,
        0.4,
        3.0,
        1,
    )
    assert (c.global_crops_scale, c.local_crops_scale, c.local_crops_number) == (
        (0.4, 1.0),
        (0.05, 0.4),
        8,
    )
    assert (c.global_crop_size, c.local_crop_size, c.drop_path_rate) == (224, 96, 0.1)
    assert (c.warmup_teacher_temp_epochs, c.batch_size_per_gpu, c.optimizer) == (0, 64, "adamw")


def test_demo_preset_only_without_data_and_overridable():
    demo = build_config({})
    assert demo.is_demo and demo.global_crop_size == DEMO_PRESET["global_crop_size"]
    assert build_config({"data_path": "imgs"}).global_crop_size == 224
    assert build_config({"epochs": 2}).epochs == 2


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {"data_path": "imgs", "lr": 0.001, "epochs": 7, "local_crops_scale": [0.1, 0.3]}
        )
    )
    c = parse("--config", str(path), "--epochs", "3", "--norm_last_layer", "false")
    assert (c.lr, c.epochs, c.norm_last_layer, c.local_crops_scale) == (0.001, 3, False, (0.1, 0.3))


def test_reference_flag_spellings():
    c = parse(
        "--data_path",
        "d",
        "--global_crops_scale",
        "0.3",
        "1",
        "--use_bn_in_head",
        "True",
        "--use_fp16",
        "false",
        "--arch",
        "vit_tiny",
    )
    assert c.global_crops_scale == (0.3, 1.0) and c.use_bn_in_head and c.precision == "fp32"


@pytest.mark.parametrize(
    "values, field",
    [
        ({"lr": -1}, "lr"),
        ({"momentum_teacher": 1.5}, "momentum_teacher"),
        ({"local_crop_size": 256}, "local_crop_size"),
        ({"global_crop_size": 100}, "global_crop_size"),
        ({"batch_size_per_gpu": 0}, "batch_size_per_gpu"),
        ({"epochs": "ten"}, "epochs"),
        ({"arch": "vit_huge"}, "arch"),
        ({"lr_typo": 1}, "lr_typo"),
    ],
)
def test_bad_values_name_the_field(values, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        build_config({"data_path": "d", **values})


def test_config_is_frozen_and_serialisable():
    c = build_config({"data_path": "d"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 1.0  # type: ignore[misc]
    assert build_config(c.to_dict()) == c
