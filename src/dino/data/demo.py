"""Built-in demo data: ten classes of coloured textures, generated, never downloaded.

Each 32-px image is one texture (stripes in three orientations, checkerboard, dots,
concentric rings, plaid, waves, interference blobs, noise) with a random period, phase,
small rotation, two random colours and pixel noise. Colour and phase carry no class
information, so raw pixels and an untrained network classify them near chance, while
features made invariant to DINO's crops and colour jitter separate the textures. Every crop
of an image shows its texture, as in the object-centred photos DINO was designed for. The
labels are kept aside for the k-NN evaluation at the end of the demo.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

TEXTURES = (
    "horizontal_stripes",
    "vertical_stripes",
    "diagonal_stripes",
    "checkerboard",
    "dots",
    "rings",
    "plaid",
    "waves",
    "blobs",
    "noise",
)


@dataclass(frozen=True)
class DemoSplits:
    train: list[Image.Image]
    train_labels: list[int]
    val: list[Image.Image]
    val_labels: list[int]
    classes: tuple[str, ...] = TEXTURES


def _texture(
    cls: int,
    u: np.ndarray,
    v: np.ndarray,
    r: np.ndarray,
    freq: np.ndarray,
    phase: np.ndarray,
    k: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Texture number ``cls`` of TEXTURES in [-1, 1] on rotated coordinates (u, v), (m, S, S)."""
    a, b = np.sin(u * freq + phase[0]), np.sin(v * freq + phase[1])
    if cls == 0:
        return np.sin(v * freq + phase[0])
    if cls == 1:
        return a
    if cls == 2:
        return np.sin((u + v) * freq / np.sqrt(2) + phase[0])
    if cls == 3:
        return np.sign(a * b)
    if cls == 4:
        return ((a > 0.6) & (b > 0.6)) * 2.0 - 1.0
    if cls == 5:
        return np.sin(r * freq + phase[0])
    if cls == 6:
        return np.maximum(a > 0.7, b > 0.7) * 2.0 - 1.0
    if cls == 7:
        return np.sin(v * freq + 3 * np.sin(u * freq / 2 + phase[1]) + phase[0])
    if cls == 8:
        return np.sin(0.5 * freq * (k[0] * u + k[1] * v) + phase[0]) * np.sin(
            0.5 * freq * (k[2] * u - k[3] * v) + phase[1]
        )
    return np.clip(rng.normal(size=u.shape), -1, 1)


def generate_textures(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, size, size, 3) uint8 and their labels (n,), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(TEXTURES), n)
    grid = np.arange(size) + 0.5
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    texture = np.empty((n, size, size))
    for cls in range(len(TEXTURES)):
        idx = np.flatnonzero(labels == cls)
        m = len(idx)
        freq = 2 * np.pi / rng.uniform(5, 9, (m, 1, 1))  # period 5 to 9 pixels
        phase = rng.uniform(0, 2 * np.pi, (2, m, 1, 1))
        angle = rng.uniform(-0.25, 0.25, (m, 1, 1))
        centre = rng.uniform(0, size, (2, m, 1, 1))
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        r = np.hypot(xx - centre[0], yy - centre[1])
        k = rng.normal(size=(4, m, 1, 1))
        texture[idx] = _texture(cls, u, v, r, freq, phase, k, rng)
    # Two grey levels, then per-image contrast and brightness factors in [0.6, 1.4] and a mild
    # tint: the ranges of DINO's colour jitter. Whatever all crops of an image share is what
    # DINO learns first; variations inside the jitter's range it learns to ignore, wider ones
    # (or colour as a class cue) it would learn instead of the texture.
    dark_on_light = rng.random((n, 1, 1, 1)) < 0.5
    fg, bg = np.where(dark_on_light, 0.2, 0.8), np.where(dark_on_light, 0.8, 0.2)
    contrast, brightness = rng.uniform(0.6, 1.4, (2, n, 1, 1, 1))
    tint = rng.uniform(0.85, 1.0, (n, 1, 1, 3))
    img = 0.5 + (fg - bg) * texture[..., None] / 2 * contrast + (bg + fg - 1) / 2
    img = img * brightness * tint + rng.normal(0, 0.05, (n, size, size, 3))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), labels


@lru_cache(maxsize=2)
def demo_splits(n_train: int = 2500, n_val: int = 1000, seed: int = 0) -> DemoSplits:
    """The demo's training images (labels kept aside) and a held-out labelled split."""
    train, train_labels = generate_textures(n_train, seed)
    val, val_labels = generate_textures(n_val, seed + 1)
    return DemoSplits(
        [Image.fromarray(a) for a in train],
        train_labels.tolist(),
        [Image.fromarray(a) for a in val],
        val_labels.tolist(),
    )


def save_demo_folders(splits: DemoSplits, root: str | Path) -> dict[str, Path]:
    """Write ``root/train/<class>/<n>.png`` and ``root/val/<class>/<n>.png``; returns the folders.

    Labelled folders in the layout every evaluation command reads (one subfolder per class).
    """
    folders = {}
    for split, images, labels in (
        ("train", splits.train, splits.train_labels),
        ("val", splits.val, splits.val_labels),
    ):
        folders[split] = Path(root) / split
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            folder = folders[split] / splits.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{i:05d}.png")
    return folders
