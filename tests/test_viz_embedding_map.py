"""dino embed --features patch and --plot: per-patch features on disk, a 2-D map written,
coloured by class folder."""

import sys

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_training_checkpoint, write_images
from dino.cli import main
from dino.errors import ConfigError
from dino.viz.embedding_map import class_folders, embed_2d, map_method, plot_map

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def test_classes_are_the_first_folder_when_every_image_has_one():
    assert class_folders(["a/1.png", "b/x/2.png", "a/3.png"]) == ["a", "b", "a"]
    assert class_folders(["a/1.png", "2.png"]) is None  # one image outside any class
    assert class_folders(["a/1.png", "a/2.png"]) is None  # one folder: no classes


def test_tsne_separates_two_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 64))
    x = np.concatenate([c + 0.05 * rng.normal(size=(20, 64)) for c in centres])
    xy = embed_2d(x, "tsne")
    assert xy.shape == (40, 2)
    a, b = xy[:20], xy[20:]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    assert gap > 3 * max(a.std(0).max(), b.std(0).max())


def test_the_map_is_written_with_one_colour_per_class(tmp_path):
    names = [f"c{i % 3}/{i}.png" for i in range(12)]
    said = plot_map(
        np.random.default_rng(0).normal(size=(12, 8)), names, "tsne", tmp_path / "m.png"
    )
    assert said == f"t-SNE map of 12 images in 3 classes -> {tmp_path / 'm.png'}"
    assert Image.open(tmp_path / "m.png").size == (800, 800)


def test_a_missing_package_is_named_before_any_work(monkeypatch):
    monkeypatch.setattr("dino.viz.embedding_map.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"tsne maps need matplotlib; pip install 'dino\[plot\]'"):
        map_method("auto")
    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(ConfigError, match="pip install"):
        map_method("umap")


def test_dino_embed_writes_patch_features_and_a_map(tmp_path):
    tiny_training_checkpoint(tmp_path / "ckpt.pth")
    write_images(tmp_path / "imgs", 8, size=32)
    argv = ["embed", "--checkpoint", str(tmp_path / "ckpt.pth"), "--data_path",
            str(tmp_path / "imgs"), "--num_workers", "0"]  # fmt: skip
    assert main([*argv, "--output", str(tmp_path / "p.npy"), "--features", "patch", "--plot"]) == 0
    assert np.load(tmp_path / "p.npy").shape == (8, 4, 4, 48)  # 32 px / patch 8, 48 dims
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 8
    assert Image.open(tmp_path / "p.png").size == (800, 800)
    assert main([*argv, "--output", str(tmp_path / "c.npy"), "--plot", "tsne"]) == 0
    assert np.load(tmp_path / "c.npy").shape == (8, 48) and (tmp_path / "c.png").is_file()
