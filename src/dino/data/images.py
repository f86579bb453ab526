"""Finding and decoding images: any folder, searched recursively; every mode converted to RGB."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dino.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_PIXELS = 178_956_970  # twice PIL's default warning limit; larger files are refused as bombs
MIN_SIDE = 16  # smaller images are resized up so that every crop has pixels to sample


class BadImageError(DataError, OSError):
    """A file could not be decoded as an image; the message names the file and the reason."""


def find_images(root: str | Path) -> list[Path]:
    """Every image file below ``root`` (recursively, following links), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            Path(folder) / f
            for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        ]
    return sorted(found)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    16-bit and float grayscale are rescaled to 0..255 (PIL's own convert would clip them);
    palette images with transparency and LA/RGBA are flattened by dropping alpha; CMYK,
    YCbCr and the rest go through PIL's conversion.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        img = Image.fromarray(a.astype(np.uint8), mode="L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully, apply its EXIF orientation and return an RGB image.

    Raises BadImageError for empty, truncated, non-image or undecodable files and for
    decompression bombs (more than MAX_PIXELS pixels). Images with a side below MIN_SIDE
    are resized up (a 1x1 image becomes 16x16).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as file:
                if file.width * file.height > MAX_PIXELS:
                    raise BadImageError(
                        f"{path}: {file.width}x{file.height} pixels, refused as a "
                        f"decompression bomb (limit {MAX_PIXELS})"
                    )
                img = ImageOps.exif_transpose(file)
                img.load()
                img = to_rgb(img)
    except BadImageError:
        raise
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        MemoryError,
    ) as e:
        reason = str(e).split("\n")[0] or type(e).__name__
        raise BadImageError(f"{path}: {reason}") from None
    return _at_least(img, MIN_SIDE)


def _at_least(img: Image.Image, min_side: int) -> Image.Image:
    if min(img.size) >= min_side:
        return img
    scale = min_side / min(img.size)
    size = (max(min_side, round(img.width * scale)), max(min_side, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC)
