"""Built-in demo data: ten classes of grey shapes, generated, never downloaded.

Each 32-px image shows one shape (disc, square, triangle, plus, star, ring, crescent, T, L,
frame) at a random position, size, rotation and mirror image, light on dark, with per-image
brightness, contrast and a mild tint inside the range of DINO's colour jitter, and pixel
noise. Nothing but the shape carries the class, and what separates two images of one class
(where the shape sits, how large, how lit) is what DINO's crops and colour jitter teach the
network to ignore: an untrained network classifies them poorly, a briefly DINO-trained one
clearly better. The labels are kept aside for the k-NN evaluation at the end of the demo.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle", "plus", "star", "ring", "crescent", "tee", "ell", "frame")

_SQUARE = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
_STAR_ANGLES = np.deg2rad(np.arange(10) * 36 - 90)
_STAR_RADII = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
# Outlines on a unit scale, centred on the origin (discs and rings are drawn as ellipses).
_POLYGONS: dict[str, list[list[tuple[float, float]]]] = {
    "square": [_SQUARE],
    "triangle": [[(0.0, -1.0), (0.87, 0.5), (-0.87, 0.5)]],
    "plus": [
        [
            (-0.33, -1),
            (0.33, -1),
            (0.33, -0.33),
            (1, -0.33),
            (1, 0.33),
            (0.33, 0.33),
            (0.33, 1),
            (-0.33, 1),
            (-0.33, 0.33),
            (-1, 0.33),
            (-1, -0.33),
            (-0.33, -0.33),
        ]
    ],
    "star": [
        list(
            zip(_STAR_RADII * np.cos(_STAR_ANGLES), _STAR_RADII * np.sin(_STAR_ANGLES), strict=True)
        )
    ],
    "tee": [
        [(-1, -1), (1, -1), (1, -0.4), (0.3, -0.4), (0.3, 1), (-0.3, 1), (-0.3, -0.4), (-1, -0.4)]
    ],
    "ell": [[(-1, -1), (-0.45, -1), (-0.45, 0.45), (1, 0.45), (1, 1), (-1, 1)]],
    "frame": [_SQUARE, [(x / 2, y / 2) for x, y in _SQUARE]],  # filled, then the hole
}
# Discs as (radius, centre offset along the shape's x axis); later ones cut holes.
_DISCS: dict[str, list[tuple[float, float]]] = {
    "disc": [(1.0, 0.0)],
    "ring": [(1.0, 0.0), (0.55, 0.0)],
    "crescent": [(1.0, 0.0), (0.85, 0.5)],
}


@dataclass(frozen=True)
class DemoSplits:
    train: list[Image.Image]
    train_labels: list[int]
    val: list[Image.Image]
    val_labels: list[int]
    classes: tuple[str, ...] = SHAPES


def draw_shape(
    name: str,
    height: int,
    width: int,
    centre: np.ndarray,
    scale: float,
    angle: float,
    supersample: int = 4,
) -> np.ndarray:
    """Coverage in [0, 1] (height, width) of shape ``name``, anti-aliased.

    ``centre`` (x, y) and ``scale`` (centre to outline) are in pixels of the output, ``angle``
    in radians; the shape is drawn ``supersample`` times larger and box-filtered down.
    """
    s = supersample
    scale, centre = scale * s, np.asarray(centre, dtype=float) * s
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    canvas = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(canvas)
    for i, outline in enumerate(_POLYGONS.get(name, [])):
        points = np.asarray(outline, dtype=float) @ rot.T * scale + centre
        draw.polygon([tuple(p) for p in points], fill=0 if i else 255)
    for i, (radius, offset) in enumerate(_DISCS.get(name, [])):
        cx, cy = centre + rot @ np.array([offset, 0.0]) * scale
        r = radius * scale
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=0 if i else 255)
    small = canvas.resize((width, height), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255


def shape_mask(name: str, size: int, rng: np.random.Generator, supersample: int = 4) -> np.ndarray:
    """Coverage in [0, 1] (size, size) of shape ``name`` at a random pose, anti-aliased."""
    scale = rng.uniform(0.28, 0.42) * size
    centre = rng.uniform(0.35, 0.65, 2) * size
    angle = rng.uniform(0, 2 * np.pi)
    coverage = draw_shape(name, size, size, centre, scale, angle, supersample)
    return coverage[:, ::-1] if rng.random() < 0.5 else coverage  # a mirror image half the time


def generate_shapes(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, size, size, 3) uint8 and their labels (n,), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPES), n)
    images = np.empty((n, size, size, 3), np.uint8)
    for i, label in enumerate(labels):
        mask = shape_mask(SHAPES[label], size, rng)[..., None]
        img = mask * 0.8 + (1 - mask) * 0.25
        # Contrast and brightness factors in [0.7, 1.3] and a mild tint: inside the range of
        # DINO's colour jitter, so that no per-image colour outlasts the augmentation and
        # becomes the cue DINO learns instead of the shape.
        contrast, brightness = rng.uniform(0.7, 1.3, 2)
        tint = rng.uniform(0.85, 1.0, 3)
        img = (0.5 + (img - 0.5) * contrast) * brightness * tint
        img = img + rng.normal(0, 0.04, img.shape)
        images[i] = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return images, labels


@lru_cache(maxsize=2)
def demo_splits(n_train: int = 2500, n_val: int = 1000, seed: int = 0) -> DemoSplits:
    """The demo's training images (labels kept aside) and a held-out labelled split."""
    train, train_labels = generate_shapes(n_train, seed)
    val, val_labels = generate_shapes(n_val, seed + 1)
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
