"""dino crops: the grid of multi-crop views has one row per image and one cell per crop."""

import random

import torch
from PIL import Image

from conftest import write_images
from dino.cli import main
from dino.training.builders import build_train_images
from dino.training.plan import CropSpec
from dino.viz.crops import crop_grid, crop_views, grid_size

SPEC = CropSpec((0.4, 1.0), (0.05, 0.4), 3, 32, 16)


def test_the_grid_has_a_cell_per_crop_and_a_row_per_image(tmp_path):
    write_images(tmp_path, 6, size=40)
    views = crop_views(build_train_images(str(tmp_path), SPEC), 2, seed=0)
    assert (
        len(views) == 2
        and [c.shape for c in views[0].crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    )
    grid = crop_grid(views, cell=64, caption="settings")
    assert grid.size == grid_size(2, 6, 64) == (6 * 64 + 7 * 4, 36 + 2 * 64 + 3 * 4)


def test_the_views_depend_on_the_seed_only_and_leave_the_random_state_alone(tmp_path):
    write_images(tmp_path, 6, size=40)
    images = build_train_images(str(tmp_path), SPEC)
    torch.manual_seed(5)
    random.seed(5)
    before = (torch.get_rng_state(), random.getstate())
    a, b = crop_views(images, 3, seed=1), crop_views(images, 3, seed=1)
    crops_a = [x for v in a for x in v.crops]
    crops_b = [x for v in b for x in v.crops]
    assert all(torch.equal(x, y) for x, y in zip(crops_a, crops_b, strict=True))
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    c = crop_views(images, 3, seed=2)
    assert not all(torch.equal(x, y) for x, y in zip(a[0].crops, c[0].crops, strict=True))


def test_dino_crops_takes_the_train_flags(tmp_path):
    write_images(tmp_path / "imgs", 6, size=28)
    out = tmp_path / "out" / "grid.png"
    flags = ["--global_crop_size", "24", "--local_crop_size", "12", "--patch_size", "4",
             "--local_crops_number", "2", "--n_images", "3", "--cell", "48"]  # fmt: skip
    assert main(["crops", "--data_path", str(tmp_path / "imgs"), "--output", str(out), *flags]) == 0
    assert Image.open(out).size == grid_size(3, 5, 48)


def test_crop_sizes_are_checked_as_dino_train_checks_them(tmp_path, capsys):
    write_images(tmp_path / "imgs", 2, size=28)
    argv = [
        "crops",
        "--data_path",
        str(tmp_path / "imgs"),
        "--global_crop_size",
        "28",
        "--local_crop_size",
        "16",
    ]
    assert main([*argv, "--output", str(tmp_path / "g.png")]) == 2
    assert "global_crop_size: expected a multiple of patch_size (16)" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()
