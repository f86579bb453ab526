"""dino train --val_path: the k-NN probe's bank and queries, and its one-line errors."""

import pytest

from conftest import write_colour_classes, write_images
from dino.config import ConfigError, build_config
from dino.training.plan import ProbeSpec
from dino.training.probes import build_knn_probe as build_probe


def build_knn_probe(config):
    return build_probe(ProbeSpec.of(config))


TINY = {"arch": "vit_tiny", "patch_size": 8, "global_crop_size": 32, "local_crop_size": 16}


def test_val_path_uses_a_labelled_data_path_or_knn_train_path(tmp_path):
    write_colour_classes(tmp_path / "train", per_class=2, classes=3)
    write_colour_classes(tmp_path / "val", per_class=1, classes=2)  # a subset of the classes
    config = build_config(
        {**TINY, "data_path": str(tmp_path / "train"), "val_path": str(tmp_path / "val")}
    )
    probe = build_knn_probe(config)
    assert probe is not None and probe.every == 1  # eval_every 0 becomes 1 with val_path
    assert len(probe.bank) == 6 and probe.queries.labels == [0, 1]

    write_images(tmp_path / "flat", 4, classes=1)
    (tmp_path / "flat" / "class_0" / "img_000.png").rename(tmp_path / "flat" / "top.png")
    flat = {**TINY, "data_path": str(tmp_path / "flat"), "val_path": str(tmp_path / "val")}
    with pytest.raises(ConfigError, match="data_path: the k-NN bank needs class subfolders"):
        build_knn_probe(build_config(flat))
    bank = {**flat, "knn_train_path": str(tmp_path / "train"), "eval_every": 3}
    probe = build_knn_probe(build_config(bank))
    assert probe is not None and probe.every == 3 and len(probe.bank) == 6


def test_val_classes_must_be_known_and_knn_train_path_needs_val_path(tmp_path):
    write_colour_classes(tmp_path / "train", per_class=1, classes=2)
    write_colour_classes(tmp_path / "val", per_class=1, classes=3)
    config = build_config(
        {**TINY, "data_path": str(tmp_path / "train"), "val_path": str(tmp_path / "val")}
    )
    with pytest.raises(ConfigError, match="val_path: .*'class_2' is not among the 2 known classes"):
        build_knn_probe(config)
    with pytest.raises(ConfigError, match="knn_train_path: expected to be given with val_path"):
        build_config({**TINY, "data_path": str(tmp_path), "knn_train_path": str(tmp_path)})
