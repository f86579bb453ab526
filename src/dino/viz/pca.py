"""The principal components of patch features as colours (DINOv2, Oquab et al. 2023,
figure 1 and section 7.4): the first component separates the object from the background,
the next three, fitted on the foreground patches only, colour its parts.

1. The first principal component of every patch of every image (fitted jointly, so that
   colours mean the same in every picture) is min-max scaled to [0, 1]; patches at or
   above ``threshold`` are the foreground. Its sign is chosen so that the patches on the
   border of the images score lower than the average (objects are rarely all border).
2. The first three principal components of the foreground patches, each min-max scaled
   to [0, 1], are the red, green and blue of those patches; the background is black.

Principal directions come from the eigenvectors of the covariance (float64), each signed
so that its largest coordinate is positive, so the same features give the same colours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def principal_components(x: Tensor, k: int) -> Tensor:
    """Projections (P, k) of the rows of ``x`` (P, D), centred, on their first ``k``
    principal directions (fewer when D < k)."""
    x = x.double()
    centred = x - x.mean(dim=0)
    _, vectors = torch.linalg.eigh(centred.T @ centred / max(len(x), 1))  # ascending
    top = vectors[:, -k:].flip(-1)  # (D, k), largest variance first
    rows = top.abs().argmax(dim=0)
    top = top * top[rows, torch.arange(top.shape[1])].sign()  # deterministic signs
    return centred @ top


def _unit_range(x: Tensor) -> Tensor:
    """Each column of ``x`` scaled to [0, 1] (a constant column to 0)."""
    low, high = x.min(dim=0).values, x.max(dim=0).values
    span = torch.where(high > low, high - low, torch.ones_like(high))
    return (x - low) / span


def foreground(tokens: Tensor, threshold: float) -> Tensor:
    """Foreground patches (N, h, w) bool of patch features ``tokens`` (N, h, w, D): the first
    principal component, scaled to [0, 1] over all patches, at or above ``threshold`` (0
    keeps every patch)."""
    n, h, w, d = tokens.shape
    first = _unit_range(principal_components(tokens.reshape(-1, d), 1))[:, 0]
    first = first.reshape(n, h, w)
    border = torch.ones(h, w, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    if first[:, border].mean() > first.mean():  # the background should score low
        first = 1 - first
    return first >= threshold


def pca_colours(tokens: Tensor, mask: Tensor) -> Tensor:
    """RGB in [0, 1] (N, h, w, 3) of patch features ``tokens`` (N, h, w, D): the first three
    principal components of the patches where ``mask`` (N, h, w) holds, black elsewhere."""
    colours = torch.zeros(*tokens.shape[:3], 3, dtype=torch.float64)
    if mask.any():
        components = principal_components(tokens[mask], 3)
        colours[mask] = _unit_range(components).clamp(0, 1)[:, :3]
    return colours


def pca_picture(image: Image.Image, colours: Tensor) -> Image.Image:
    """``image`` (the network's input, W x H) beside its colours (h, w, 3) enlarged to W x H
    (nearest, one block per patch): a (2W, H) picture."""
    rgb = (colours.numpy() * 255).round().astype(np.uint8)
    patches = Image.fromarray(rgb).resize(image.size, Image.Resampling.NEAREST)
    picture = Image.new("RGB", (2 * image.width, image.height))
    picture.paste(image.convert("RGB"), (0, 0))
    picture.paste(patches, (image.width, 0))
    return picture


def save_pca_pictures(
    images: list[Image.Image], colours: Tensor, names: list[str], out_dir: str | Path
) -> list[Path]:
    """``pca_picture`` of each image as ``out_dir/<name>.png`` (name: its path relative to
    the folder read, so subfolders are kept); returns the paths written."""
    written = []
    for image, rgb, name in zip(images, colours, names, strict=True):
        path = (Path(out_dir) / name).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        pca_picture(image, rgb).save(path)
        written.append(path)
    return written
