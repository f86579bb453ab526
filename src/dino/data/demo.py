"""Built-in demo data: coloured shapes on textured backgrounds, generated, never downloaded.

Ten classes of 32-px images (disk, square, triangle, ...) with random position, size,
rotation, colours, background gradient and noise. Colour carries no class information,
so raw pixels and an untrained network classify them poorly, while features that DINO
makes invariant to colour jitter and crops separate the shapes. The labels are kept aside
for the k-NN evaluation at the end of the demo.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

SHAPES = ("disk", "square", "triangle", "ring", "plus", "star",
          "crescent", "frame", "dumbbell", "half_disk")


@dataclass(frozen=True)
class DemoSplits:
    train: list[Image.Image]
    train_labels: list[int]
    val: list[Image.Image]
    val_labels: list[int]
    classes: tuple[str, ...] = SHAPES


def _masks(u: np.ndarray, v: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of every shape in rotated, scaled coordinates (u, v), in SHAPES order."""
    r = np.hypot(u, v)
    box = np.maximum(abs(u), abs(v))
    star = 0.35 + 0.6 * (0.55 + 0.45 * np.cos(5 * np.arctan2(v, u)))
    s3 = np.sqrt(3.0)
    return [
        r < 0.9,
        box < 0.75,
        (v > -0.5) & (s3 * u - v > -1.0) & (-s3 * u - v > -1.0),
        (r > 0.55) & (r < 0.95),
        ((abs(u) < 0.3) & (abs(v) < 0.95)) | ((abs(v) < 0.3) & (abs(u) < 0.95)),
        r < star,
        (r < 0.9) & (np.hypot(u - 0.45, v) > 0.7),
        (box < 0.85) & (box > 0.5),
        (np.hypot(u - 0.5, v) < 0.42) | (np.hypot(u + 0.5, v) < 0.42) | ((abs(v) < 0.12) & (abs(u) < 0.5)),
        (r < 0.9) & (v > 0),
    ]


def generate_shapes(n: int, seed: int, size: int = 32, chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, size, size, 3) uint8 and their labels (n,), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPES), n)
    ss = 2  # supersampling for anti-aliased edges
    grid = (np.arange(size * ss) + 0.5) / (size * ss) * 2 - 1
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    images = np.empty((n, size, size, 3), np.uint8)
    for start in range(0, n, chunk):
        lab = labels[start:start + chunk]
        m = len(lab)
        cx, cy = rng.uniform(-0.3, 0.3, (2, m, 1, 1))
        scale = rng.uniform(0.4, 0.7, (m, 1, 1))
        theta = rng.uniform(0, 2 * np.pi, (m, 1, 1))
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / scale
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / scale
        masks = np.stack(_masks(u, v))  # (shapes, m, S, S)
        mask = masks[lab, np.arange(m)]  # (m, S, S)
        fg = rng.uniform(0, 1, (m, 1, 1, 3))
        bg = rng.uniform(0, 1, (m, 1, 1, 3))
        direction = rng.uniform(0, 2 * np.pi, (m, 1, 1))
        ramp = (np.cos(direction) * xx + np.sin(direction) * yy)[..., None]
        bg = bg + ramp * rng.uniform(0, 0.3, (m, 1, 1, 1))
        img = np.where(mask[..., None], fg, bg) + rng.normal(0, 0.06, (m, size * ss, size * ss, 3))
        img = img.reshape(m, size, ss, size, ss, 3).mean(axis=(2, 4))
        images[start:start + m] = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return images, labels


@lru_cache(maxsize=2)
def demo_splits(n_train: int = 5000, n_val: int = 1000, seed: int = 0) -> DemoSplits:
    """The demo's training images (labels kept aside) and a held-out labelled split."""
    train, train_labels = generate_shapes(n_train, seed)
    val, val_labels = generate_shapes(n_val, seed + 1)
    return DemoSplits(
        [Image.fromarray(a) for a in train], train_labels.tolist(),
        [Image.fromarray(a) for a in val], val_labels.tolist(),
    )
