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


def reference_whitening(learn, x):
    """The reference's eval_copy_detection.py + utils.PCA, written from its definition in
    numpy: centre by the whitening set's mean, eigen-decompose the uncentred second moment
    X^T X / N, floor the eigenvalues at 1e-5 of the largest, project onto every direction
    scaled by eigenvalue^-0.5, L2-normalise."""
    learn, x = learn.astype(np.float64), x.astype(np.float64)
    mean = learn.mean(axis=0)
    d, v = np.linalg.eigh(learn.T @ learn / learn.shape[0])
    d = np.maximum(d, d.max() * 1e-5)
    order = np.argsort(d)[::-1]
    dvt = np.diag(1.0 / d[order] ** 0.5) @ v[:, order].T
    out = (dvt @ (x - mean).T).T
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def previous_whitening(learn, x):
    """This package's earlier method, from its definition: L2-normalise, centre, covariance
    (N - 1), drop directions with variance under 1e-6 of the largest, L2-normalise."""
    unit = learn / np.linalg.norm(learn, axis=1, keepdims=True)
    mean = unit.mean(axis=0)
    c = unit - mean
    d, v = np.linalg.eigh(c.T @ c / (len(c) - 1))
    d, v = d[::-1], v[:, ::-1]
    keep = d > 1e-6 * d[0]
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = (xu - mean) @ (v[:, keep] / np.sqrt(d[keep]))
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def descriptor_like(rng, n, dim=16):
    """Positive, correlated, off-centre rows of uneven norms, like [CLS] + GeM descriptors."""
    base = rng.standard_normal((n, dim)) @ rng.standard_normal((dim, dim)) + 4.0
    return (base * rng.uniform(0.5, 2.0, (n, 1))).astype(np.float32)


@pytest.mark.parametrize("n_learn", [200, 10])  # more images than dimensions, and fewer
def test_both_whitenings_equal_their_definitions(n_learn):
    rng = np.random.default_rng(0)
    learn, x = descriptor_like(rng, n_learn), descriptor_like(rng, 50)
    ours = fit_whitening(torch.from_numpy(learn))  # the reference's by default
    assert ours.dim == 16  # floored, not dropped: every direction is kept
    # Eigenvectors have no fixed sign: compare the similarities, which is what is used.
    w, r = ours(torch.from_numpy(x)).numpy(), reference_whitening(learn, x)
    np.testing.assert_allclose(w @ w.T, r @ r.T, atol=1e-4)
    normalized = fit_whitening(torch.from_numpy(learn), method="normalized")
    w, r = normalized(torch.from_numpy(x)).numpy(), previous_whitening(learn, x)
    np.testing.assert_allclose(w @ w.T, r @ r.T, atol=1e-4)
    assert normalized.dim == (16 if n_learn > 16 else n_learn - 1)


def test_the_two_whitenings_rank_differently():
    """Why the default changed: on the same descriptors the nearest neighbour often differs,
    so numbers of the previous method do not compare with the paper's."""
    rng = np.random.default_rng(1)
    learn, x = descriptor_like(rng, 100), torch.from_numpy(descriptor_like(rng, 200))
    nearest = []
    for method in ("reference", "normalized"):
        w = fit_whitening(torch.from_numpy(learn), method=method)(x)
        sims = w @ w.T - 2 * torch.eye(len(w))
        nearest.append(sims.argmax(dim=1))
    assert (nearest[0] == nearest[1]).float().mean() < 0.95


def test_whitening_arguments():
    x = torch.randn(200, 8) @ torch.randn(8, 8) + 3.0
    out = fit_whitening(x, dim=3)(torch.randn(5, 8))
    assert out.shape == (5, 3)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    with pytest.raises(ConfigError, match="at least 2 images"):
        fit_whitening(torch.randn(1, 8))
    with pytest.raises(ConfigError, match="unknown 'zca'; valid: reference, normalized"):
        fit_whitening(x, method="zca")


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

    whitening = fit_whitening(describe(learn), dim=32)  # raw descriptors, as the reference
    layout = read_copy_layout(tmp_path / "eval")
    originals = whitening(describe(layout.originals))
    copies = whitening(describe(layout.copies))
    assert originals.shape == (20, whitening.dim) and copies.shape == (40, whitening.dim)
    scores = copy_detection_scores(copies, originals, layout.copy_of)
    # Chance: the original at a uniformly random rank of 20 gives a mAP near 18 %; this
    # untrained network reaches about 76 % (a trained one does better).
    assert scores.mean_ap > 55, scores


def all_pairs(x, threshold):
    """Every pair i < j with cosine >= threshold, best first: the definition."""
    unit = torch.nn.functional.normalize(x, dim=1)
    sims = unit @ unit.T
    found = [(i, j, float(sims[i, j])) for i in range(len(x)) for j in range(i + 1, len(x))]
    return sorted([p for p in found if p[2] >= threshold], key=lambda p: -p[2])


def test_near_duplicate_pairs_from_the_knn_graph_equal_all_pairs():
    x = torch.tensor([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0], [0.7, 0.7]])
    pairs = near_duplicate_pairs(x, threshold=0.9)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]
    pairs = near_duplicate_pairs(x, threshold=0.7)
    assert [(i, j) for i, j, _ in pairs[:2]] == [(0, 1), (1, 3)]
    assert {(i, j) for i, j, _ in pairs[2:]} == {(0, 3), (2, 3)}  # both 0.7071
    # Random data with planted copies: the graph's pairs are exactly all pairs above the
    # threshold while no image has more close images than its neighbours.
    torch.manual_seed(0)
    x = torch.randn(300, 32)
    x[200:250] = x[:50] + 0.1 * torch.randn(50, 32)
    x[250:260] = x[:10] + 0.1 * torch.randn(10, 32)  # images 0-9 have two copies each
    expected = all_pairs(x, 0.8)
    pairs = near_duplicate_pairs(x, 0.8, neighbours=3)
    assert len(expected) == 70 and [(i, j) for i, j, _ in pairs] == [e[:2] for e in expected]
    torch.testing.assert_close(
        torch.tensor([p[2] for p in pairs]), torch.tensor([e[2] for e in expected])
    )
    # One neighbour each: an image with two copies keeps only its closer one.
    assert 50 <= len(near_duplicate_pairs(x, 0.8, neighbours=1)) < 70


def test_copy_detection_ranks_the_top_20_as_the_reference():
    """An original beyond the 20 most similar database images counts 0 (the reference's
    top-20 evaluation), not 1 / (2 rank)."""
    torch.manual_seed(0)
    originals = torch.nn.functional.normalize(torch.randn(40, 16), dim=1)
    copies = torch.stack([originals[0] + 0.01, -originals[1]])  # found first; found last
    scores = copy_detection_scores(copies, originals, [0, 1])
    assert scores.mean_ap == pytest.approx(50.0) and scores.mean_precision[1] == 50.0
    full = copy_detection_scores(copies, originals, [0, 1], top=40)
    assert full.mean_ap == pytest.approx(100 * (1 + 1 / 80) / 2)
