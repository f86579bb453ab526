"""Copy detection: whitening, the Copydays-style layout, originals found, near-duplicates."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from dino.config import ConfigError
from dino.data.folder import ImageList
from dino.data.transforms import whole_image_transform
from dino.errors import DataError
from dino.eval.copydetect import (
    copy_detection_scores,
    fit_whitening,
    near_duplicate_pairs,
    read_copy_layout,
)
from dino.eval.features import extract_features, feature_head
from dino.models import build_backbone


def test_whitening_shapes_and_unit_covariance():
    torch.manual_seed(0)
    x = torch.randn(200, 8) @ torch.randn(8, 8) + 3.0  # correlated, off-centre
    w = fit_whitening(x)
    assert w.mean.shape == (8,) and w.projection.shape == (8, 8) and w.dim == 8
    z = w.project(x)
    torch.testing.assert_close(z.mean(dim=0), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.T @ z / 199, torch.eye(8), atol=1e-4, rtol=0)
    out = fit_whitening(x, dim=3)(torch.randn(5, 8))
    assert out.shape == (5, 3)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    # Fewer images than dimensions: only directions with variance are kept.
    assert fit_whitening(torch.randn(4, 8)).dim == 3
    with pytest.raises(ConfigError, match="at least 2 images"):
        fit_whitening(torch.randn(1, 8))


def random_scene(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Smooth random colour blobs: a different picture for every seed."""
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    noise = rng.integers(-20, 21, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, int) + noise, 0, 255).astype(np.uint8))


def strong_copy(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Crop (75-90 %), blur, colour shift and JPEG at quality 20."""
    w, h = img.size
    s = rng.uniform(0.75, 0.9)
    x0, y0 = rng.integers(0, int(w * (1 - s)) + 1), rng.integers(0, int(h * (1 - s)) + 1)
    out = img.crop((x0, y0, x0 + int(w * s), y0 + int(h * s))).resize((w, h))
    out = out.filter(ImageFilter.GaussianBlur(1.0))
    shifted = np.asarray(out, int) + rng.integers(-30, 31, 3)
    out = Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=20)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def write_layout(root, n_originals: int, copies_each: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    (root / "originals").mkdir(parents=True)
    for i in range(n_originals):
        img = random_scene(rng)
        img.save(root / "originals" / f"{i:04d}.png")
        for j in range(copies_each):
            if j % 2:  # both layouts: copies/<id>/<any> and copies/<id>_<any>
                (root / "copies" / f"{i:04d}").mkdir(parents=True, exist_ok=True)
                path = root / "copies" / f"{i:04d}" / f"c{j}.jpg"
            else:
                (root / "copies").mkdir(exist_ok=True)
                path = root / "copies" / f"{i:04d}_c{j}.jpg"
            strong_copy(img, rng).save(path)


def test_layout_is_read(tmp_path):
    write_layout(tmp_path, 3, 2)
    layout = read_copy_layout(tmp_path)
    assert [p.name for p in layout.originals] == ["0000.png", "0001.png", "0002.png"]
    assert len(layout.copies) == 6 and sorted(layout.copy_of) == [0, 0, 1, 1, 2, 2]
    for path, original in zip(layout.copies, layout.copy_of, strict=True):
        assert f"{original:04d}" in str(path.relative_to(tmp_path))
    Image.new("RGB", (8, 8)).save(tmp_path / "copies" / "9999_x.png")
    with pytest.raises(DataError, match="9999_x.png: names no original"):
        read_copy_layout(tmp_path)


def test_a_backbone_finds_the_originals_of_strong_copies(tmp_path):
    write_layout(tmp_path / "eval", 20, 2, seed=0)
    rng = np.random.default_rng(1)
    learn = [random_scene(rng) for _ in range(200)]  # whitening: other images
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", patch_size=8, img_size=64, depth=2, embed_dim=48, num_heads=3)
    transform, head = whole_image_transform(64), feature_head("cls_gem")

    def describe(images):
        return extract_features(vit, ImageList(images, transform=transform), features=head).features

    whitening = fit_whitening(torch.nn.functional.normalize(describe(learn), dim=1), dim=32)
    layout = read_copy_layout(tmp_path / "eval")
    originals = whitening(torch.nn.functional.normalize(describe(layout.originals), dim=1))
    copies = whitening(torch.nn.functional.normalize(describe(layout.copies), dim=1))
    assert originals.shape == (20, whitening.dim) and copies.shape == (40, whitening.dim)
    scores = copy_detection_scores(copies, originals, layout.copy_of)
    # Chance: the original at a uniformly random rank of 20 gives a mAP near 18 %; this
    # untrained network reaches about 76 % (a trained one does better).
    assert scores.mean_ap > 55, scores


def test_near_duplicate_pairs():
    x = torch.tensor([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0], [0.7, 0.7]])
    pairs = near_duplicate_pairs(x, threshold=0.9, chunk_size=3)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]
    pairs = near_duplicate_pairs(x, threshold=0.7, chunk_size=2)
    assert [(i, j) for i, j, _ in pairs[:2]] == [(0, 1), (1, 3)]
    assert {(i, j) for i, j, _ in pairs[2:]} == {(0, 3), (2, 3)}  # both 0.7071
    assert all(s >= 0.7 for _, _, s in pairs)
    assert [s for _, _, s in pairs] == sorted((s for _, _, s in pairs), reverse=True)
