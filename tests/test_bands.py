"""Images that are not RGB (--in_chans): decoded at full depth, augmented with defined ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_TRAIN_FLAGS, run_cli
from dino.data.bands import (
    BandJitter,
    BandMean,
    BandSolarize,
    MultiBandAugmentation,
    channel_stats,
)
from dino.data.folder import image_folder
from dino.data.images import BadImageError, load_bands
from dino.data.transforms import eval_transform, normalize_batch

tifffile = pytest.importorskip("tifffile")


def sixteen_bit_png(path, seed=0, size=40):
    values = np.random.default_rng(seed).integers(1000, 4096, (size, size)).astype(np.uint16)
    Image.fromarray(values).save(path)
    return values


def test_sixteen_bit_grayscale_keeps_its_depth(tmp_path):
    values = sixteen_bit_png(tmp_path / "g.png")
    bands = load_bands(tmp_path / "g.png", 1)
    assert bands.shape == (1, 40, 40) and bands.dtype == torch.float32
    assert bands.min() == 0.0 and bands.max() == 1.0
    assert len(torch.unique(bands)) > 256  # not squeezed into 8 bits
    expected = (values - values.min()) / (values.max() - values.min())
    torch.testing.assert_close(bands[0], torch.from_numpy(expected).float())


def test_colour_asked_for_one_channel_is_luminance_and_8_bit_is_divided_by_255(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    torch.testing.assert_close(load_bands(tmp_path / "c.png", 1)[0], torch.from_numpy(grey))


@pytest.mark.parametrize("planar", [False, True])
def test_multi_band_tiffs_keep_every_band(tmp_path, planar):
    data = np.random.default_rng(0).integers(0, 1000, (5, 24, 24)).astype(np.uint16)
    path = tmp_path / "m.tif"
    if planar:
        tifffile.imwrite(path, data, photometric="minisblack", planarconfig="separate")
    else:
        tifffile.imwrite(
            path, np.moveaxis(data, 0, -1), photometric="minisblack", planarconfig="contig"
        )
    bands = load_bands(path, 5)
    expected = (data - data.min()) / (data.max() - data.min())
    torch.testing.assert_close(bands, torch.from_numpy(expected).float())
    with pytest.raises(BadImageError, match="5 channel\\(s\\), but --in_chans is 4"):
        load_bands(path, 4)


def test_multi_band_crops_are_floats_of_every_band_in_range():
    image = torch.rand(5, 48, 40)
    crops = MultiBandAugmentation(local_crops_number=3, global_crop_size=32, local_crop_size=16)(
        image
    )
    assert [c.shape for c in crops] == [(5, 32, 32)] * 2 + [(5, 16, 16)] * 3
    assert all(c.dtype == torch.float32 and c.min() >= 0 and c.max() <= 1 for c in crops)
    one = MultiBandAugmentation(local_crops_number=1, global_crop_size=32, local_crop_size=16)
    assert [c.shape[0] for c in one(torch.rand(1, 40, 40))] == [1, 1, 1]


def test_colour_operations_for_other_channel_counts():
    x = torch.rand(4, 8, 8)
    grey = BandMean(p=1.0)(x)
    assert torch.equal(grey[0], x.mean(dim=0)) and torch.equal(grey[3], grey[0])
    single = torch.rand(1, 8, 8)
    assert BandMean(p=1.0)(single) is single  # already grey
    solarised = BandSolarize(p=1.0)(torch.tensor([0.2, 0.5, 0.9]))
    torch.testing.assert_close(solarised, torch.tensor([0.2, 0.5, 0.1]))
    brighter = BandJitter(p=1.0, brightness=0.4, contrast=0.0)(torch.full((2, 4, 4), 0.5))
    assert 0.3 <= brighter.mean() <= 0.7 and torch.all(brighter == brighter.flatten()[0])
    inside = 0.3 + 0.4 * x  # contrast up to 1.4 keeps it in [0, 1]: no clipping moves the mean
    flat = BandJitter(p=1.0, brightness=0.0, contrast=0.4)(inside)
    torch.testing.assert_close(flat.mean(), inside.mean(), rtol=0, atol=1e-5)


def test_normalisation_matches_the_adapted_filters():
    assert channel_stats(1) == ((pytest.approx(0.449),), (pytest.approx(0.226),))
    mean, std = channel_stats(5)
    assert mean == (0.485, 0.456, 0.406, 0.485, 0.456) and std[3] == 0.229
    images = torch.rand(2, 5, 4, 4)
    expected = (images - torch.tensor(mean).view(1, 5, 1, 1)) / torch.tensor(std).view(1, 5, 1, 1)
    torch.testing.assert_close(normalize_batch(images), expected)
    evaluated = eval_transform(32, channels=5)(torch.rand(5, 40, 50))
    assert evaluated.shape == (5, 32, 32)


def test_folders_read_bands_when_asked(tmp_path):
    sixteen_bit_png(tmp_path / "a.png")
    images = image_folder(tmp_path, channels=1)
    assert images.load(0).shape == (1, 40, 40)
    assert images.subset([0]).channels == 1


@pytest.mark.slow
def test_train_on_multi_band_tiffs_and_sixteen_bit_grayscale(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(16):
        folder = tmp_path / "bands" / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        data = (rng.integers(0, 1000, (40, 40, 5)) + 500 * (i % 2)).astype(np.uint16)
        tifffile.imwrite(folder / f"{i}.tif", data, photometric="minisblack", planarconfig="contig")
        sixteen_bit_png(tmp_path / "grey" / f"{i}.png" if i else _mkdir(tmp_path / "grey"), i)
    for data, channels in (("bands", "5"), ("grey", "1")):
        out = tmp_path / f"run_{data}"
        args = ["--data_path", str(tmp_path / data), "--output_dir", str(out), "--epochs", "1"]
        result = run_cli("train", *TINY_TRAIN_FLAGS, *args, "--in_chans", channels)
        assert result.returncode == 0, result.stderr
        teacher = torch.load(out / "checkpoint.pth", weights_only=True)["teacher"]
        assert teacher["backbone.patch_embed.proj.weight"].shape[1] == int(channels)


def _mkdir(folder):
    folder.mkdir()
    return folder / "0.png"


@pytest.mark.slow
def test_evaluations_read_images_with_the_checkpoints_channels(tmp_path):
    from dino.models import build_backbone

    model = build_backbone("vit_tiny", patch_size=8, img_size=32, embed_dim=48, depth=1,
                           num_heads=3, in_chans=1)  # fmt: skip
    checkpoint = tmp_path / "grey.pth"
    torch.save({"teacher": model.state_dict(), "args": {"num_heads": 3}}, checkpoint)
    for split in ("train", "val"):
        for c in range(2):
            folder = tmp_path / "grey" / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(4):
                sixteen_bit_png(folder / f"{i}.png", 4 * c + i)
    common = ["--checkpoint", str(checkpoint), "--device", "cpu", "--num_workers", "0"]
    knn = run_cli("knn", *common, "--data_path", str(tmp_path / "grey"), "--nb_knn", "3")
    assert knn.returncode == 0, knn.stderr
    assert "top-1" in knn.stdout + knn.stderr
    out = tmp_path / "emb.npy"
    embed = run_cli("embed", *common, "--data_path", str(tmp_path / "grey"), "--output", str(out))
    assert embed.returncode == 0, embed.stderr
    assert np.load(out).shape == (16, 48)
    refused = run_cli("pca", *common, "--data_path", str(tmp_path / "grey" / "val"))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"dino: error: --checkpoint: {checkpoint} takes 1-channel images (--in_chans 1); this "
        "command reads RGB images only (knn, linear and embed read any)"
    ]
