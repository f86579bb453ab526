"""Finding and decoding images: any folder, searched recursively.

``load_rgb`` converts every mode to 8-bit RGB (the default, ``--in_chans 3``);
``load_bands`` keeps the image's own channels at full depth for other channel counts
(16-bit grayscale, multi-band TIFFs), as floats in [0, 1].
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

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


def load_bands(path: str | Path | Image.Image, channels: int) -> Tensor:
    """Decode ``path`` (or an in-memory image) to (channels, H, W) float32 in [0, 1].

    Every band is kept at its depth: 8-bit values are divided by 255; 16-bit, 32-bit and
    float data are rescaled from their minimum to their maximum over the image (all bands
    together, so their ratios stay), as ``to_rgb`` does for 16-bit grayscale. TIFFs are read
    with tifffile when it is installed (any number of bands, planar or interleaved), else
    with PIL (1 to 4 bands). A colour image asked for 1 channel is converted to luminance;
    any other band count that is not ``channels`` raises BadImageError, as do the files
    ``load_rgb`` refuses. Images with a side below MIN_SIDE are resized up.
    """
    try:
        if isinstance(path, Image.Image):
            bands = _pil_bands(path, channels)
        elif str(path).lower().endswith((".tif", ".tiff")) and _tifffile() is not None:
            bands = _tiff_bands(path)
        else:
            with _opened(path) as img:
                bands = _pil_bands(img, channels)
    except BadImageError:
        raise
    except (OSError, ValueError, SyntaxError, MemoryError, Image.DecompressionBombError) as e:
        reason = str(e).split("\n")[0] or type(e).__name__
        raise BadImageError(f"{path}: {reason}") from None
    if bands.shape[0] != channels:
        raise BadImageError(
            f"{path}: {bands.shape[0]} channel(s), but --in_chans is {channels}"
            + ("" if _tifffile() is not None else " (multi-band TIFFs need: pip install tifffile)")
        )
    return _at_least_bands(_unit_range(bands), MIN_SIDE)


def _opened(path: str | Path) -> Image.Image:
    img = Image.open(path)
    if img.width * img.height > MAX_PIXELS:
        img.close()
        raise BadImageError(
            f"{path}: {img.width}x{img.height} pixels, refused as a decompression bomb"
        )
    return img


def _pil_bands(img: Image.Image, channels: int) -> np.ndarray:
    """(bands, H, W) in the image's own depth; colour to luminance when ``channels`` is 1."""
    img = ImageOps.exif_transpose(img)
    img.load()
    if channels == 1 and img.mode not in _GREY_MODES:
        img = img.convert("L")
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("1", "YCbCr", "LAB", "HSV"):
        img = img.convert("L" if img.mode == "1" else "RGB")
    a = np.asarray(img)
    return a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)


_GREY_MODES = ("L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _tifffile() -> Any:
    try:
        import tifffile
    except ImportError:
        return None
    return tifffile


def _tiff_bands(path: str | Path) -> np.ndarray:
    """(bands, H, W) of a TIFF's first series: every axis but Y and X becomes a band."""
    with _tifffile().TiffFile(path) as tif:
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        if "Y" not in axes or "X" not in axes:
            raise BadImageError(f"{path}: a TIFF without image axes ({axes})")
        height, width = shape[axes.index("Y")], shape[axes.index("X")]
        if height * width > MAX_PIXELS:
            raise BadImageError(f"{path}: {width}x{height} pixels, refused as a decompression bomb")
        a = series.asarray()
    a = np.moveaxis(a, [axes.index("Y"), axes.index("X")], [-2, -1])
    return a.reshape(-1, height, width)


def _unit_range(bands: np.ndarray) -> Tensor:
    """8-bit / 255; other depths from their minimum to their maximum (see load_bands)."""
    if bands.dtype == np.uint8:
        return torch.from_numpy(bands.astype(np.float32) / 255.0)
    a = bands.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return torch.from_numpy(a.astype(np.float32))


def _at_least_bands(bands: Tensor, min_side: int) -> Tensor:
    height, width = bands.shape[-2:]
    if min(height, width) >= min_side:
        return bands
    scale = min_side / min(height, width)
    size = (max(min_side, round(height * scale)), max(min_side, round(width * scale)))
    resized = F.interpolate(bands[None], size=size, mode="bicubic", align_corners=False)[0]
    return resized.clamp(0.0, 1.0)


def _at_least(img: Image.Image, min_side: int) -> Image.Image:
    if min(img.size) >= min_side:
        return img
    scale = min_side / min(img.size)
    size = (max(min_side, round(img.width * scale)), max(min_side, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC)
