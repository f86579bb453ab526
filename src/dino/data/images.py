"""Finding and decoding images: any folder, searched recursively.

``load_rgb`` converts every mode to 8-bit RGB (the default, ``--in_chans 3``);
``load_bands`` keeps the image's own channels at full depth for other channel counts
(16-bit grayscale, multi-band TIFFs), as floats in [0, 1].
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

from dino.errors import DataError
from dino.progress import warn

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Images are refused as decompression bombs above MAX_PIXELS pixels (PIL's own error limit,
# twice its warning limit: 537 MB of RGB), counted at the size they are resized up to, and
# above MAX_VALUES values (an RGBA image at MAX_PIXELS), which bounds multi-band TIFFs.
MAX_PIXELS = 178_956_970
MAX_VALUES = 4 * MAX_PIXELS
MIN_SIDE = 16  # smaller images are resized up so that every crop has pixels to sample
MAX_NAMED = 5  # entries a warning names; the rest are counted


class BadImageError(DataError, OSError):
    """A file could not be decoded as an image; the message names the file and the reason."""


@dataclass(frozen=True)
class Scan:
    """What a folder scan found: the image files, sorted, and the entries it passed over."""

    files: list[Path]
    skipped: list[str]  # "path: why", for entries named like images or folders not entered


def scan_images(root: str | Path, follow_links: bool = False) -> Scan:
    """Every image file below ``root``, recursively; hidden entries are left out.

    Links to folders are followed only where they stay inside ``root``, unless
    ``follow_links``; either way no folder is entered twice (real folders before links to
    them), so link loops end. Image-named entries that are not regular files (FIFOs,
    devices, sockets: reading one can block forever) and broken links are passed over and
    named in ``skipped``, as are the links not followed. Only links and folders cost a
    system call beyond reading the folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    top = root.resolve()
    visited = {_identity(root.stat())}
    found: list[Path] = []
    skipped: list[str] = []
    folders, links = [root], deque[Path]()  # links are entered once no real folder is left
    while folders or links:
        if folders:
            folder = folders.pop()
        else:
            folder = links.popleft()
            if why := _why_not_enter(folder, top, follow_links, visited):
                skipped.append(f"{folder}: {why}")
                continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skipped.append(f"{folder}: {e.strerror or e}")
            continue
        for entry in entries:
            path, image = Path(entry.path), entry.name.lower().endswith(IMAGE_EXTENSIONS)
            if entry.name.startswith("."):
                continue
            if _is_dir(entry):
                if entry.is_symlink():
                    links.append(path)
                elif (identity := _identity(entry.stat(follow_symlinks=False))) not in visited:
                    visited.add(identity)  # (one already visited: a bind mount loop)
                    folders.append(path)
            elif image and _is_file(entry):
                found.append(path)
            elif (image or entry.is_symlink()) and (why := _why_not_a_file(entry)):
                skipped.append(f"{path}: {why}")
    return Scan(sorted(found), skipped)


def find_images(root: str | Path, follow_links: bool = False) -> list[Path]:
    """The image files of ``scan_images(root, follow_links)``; a warning names the entries
    it passed over."""
    scan = scan_images(root, follow_links)
    if scan.skipped:
        shown = "; ".join(scan.skipped[:MAX_NAMED])
        more = len(scan.skipped) - MAX_NAMED
        entries = f"{len(scan.skipped)} entr{'y' if len(scan.skipped) == 1 else 'ies'}"
        warn(f"{root}: passed over {entries}: {shown}" + (f"; and {more} more" if more > 0 else ""))
    return scan.files


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """A folder, or a link to one (from the folder listing, without a system call, unless
    the entry is a link)."""
    try:
        return entry.is_dir()
    except OSError:  # a link loop
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _why_not_a_file(entry: os.DirEntry[str]) -> str | None:
    """Why an entry that is neither a folder nor a regular file is passed over (None: a
    link to a regular file that is not named like an image)."""
    try:
        mode = entry.stat().st_mode
    except OSError as e:  # a broken link, or a link loop
        return f"a link that leads nowhere ({e.strerror})"
    return None if stat.S_ISREG(mode) else f"not a regular file ({_kind(mode)})"


def _why_not_enter(
    link: Path, top: Path, follow_links: bool, visited: set[tuple[int, int]]
) -> str | None:
    """Why the folder that ``link`` points to is not scanned (None: it is, and now counts
    as visited)."""
    try:
        target, identity = link.resolve(), _identity(link.stat())
    except OSError as e:
        return f"a link that leads nowhere ({e.strerror})"
    if not follow_links and not target.is_relative_to(top):
        return f"a link to {target}, outside the folder (--follow_links reads it)"
    if identity in visited:
        return f"a link to {target}, a folder already scanned"
    visited.add(identity)
    return None


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a file"


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
    decompression bombs (more than MAX_PIXELS pixels once resized up, see ``check_size``),
    before decoding them. Images with a side below MIN_SIDE are resized up (a 1x1 image
    becomes 16x16).
    """
    try:
        with _opened(path) as file:
            img = ImageOps.exif_transpose(file)
            img.load()
            img = to_rgb(img)
    except BadImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError) as e:
        raise BadImageError(f"{path}: {_reason(e, path)}") from None
    return _at_least(img)


def check_size(path: str | Path, width: int, height: int, bands: int = 1) -> None:
    """Refuse, as a decompression bomb, an image whose pixels (at the size it is resized up
    to: a 1 x 20,000,000 strip becomes 16 x 320,000,000) are more than MAX_PIXELS, or
    whose values are more than MAX_VALUES (a TIFF of many bands)."""
    grown_width, grown_height = _grown(width, height)
    pixels = grown_width * grown_height
    if pixels <= MAX_PIXELS and pixels * bands <= MAX_VALUES:
        return
    grown = (
        ""
        if (grown_width, grown_height) == (width, height)
        else f" ({grown_width}x{grown_height} resized up to a side of {MIN_SIDE})"
    )
    limit = f"{MAX_PIXELS:,} pixels" if pixels > MAX_PIXELS else f"{MAX_VALUES:,} values"
    raise BadImageError(
        f"{path}: {width}x{height} pixels{grown}"
        + (f" x {bands} bands" if bands > 1 else "")
        + f", refused as a decompression bomb (limit {limit})"
    )


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
        raise BadImageError(f"{path}: {_reason(e, path)}") from None
    if bands.shape[0] != channels:
        raise BadImageError(
            f"{path}: {bands.shape[0]} channel(s), but --in_chans is {channels}"
            + ("" if _tifffile() is not None else " (multi-band TIFFs need: pip install tifffile)")
        )
    return _at_least_bands(_unit_range(bands))


def _reason(error: BaseException, path: str | Path | Image.Image) -> str:
    """The first line of ``error``'s message, without the path PIL repeats in it."""
    text = str(error).split("\n")[0].replace(f" '{path}'", "").replace(f" {path}", "")
    return text.strip() or type(error).__name__


def _opened(path: str | Path) -> Image.Image:
    """``Image.open(path)``, refused by ``check_size`` before anything is decoded."""
    with warnings.catch_warnings():  # PIL warns from half our limit on: check_size decides
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
    try:
        check_size(path, img.width, img.height)
    except BadImageError:
        img.close()
        raise
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
        check_size(path, width, height, bands=math.prod(shape) // max(height * width, 1))
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


def _grown(width: int, height: int) -> tuple[int, int]:
    """The size (width, height) an image is resized up to: its shorter side MIN_SIDE."""
    shorter = max(min(width, height), 1)
    if shorter >= MIN_SIDE:
        return width, height
    scale = MIN_SIDE / shorter
    return max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale))


def _at_least_bands(bands: Tensor) -> Tensor:
    height, width = bands.shape[-2:]
    grown_width, grown_height = _grown(width, height)
    if (grown_width, grown_height) == (width, height):
        return bands
    size = (grown_height, grown_width)
    resized = F.interpolate(bands[None], size=size, mode="bicubic", align_corners=False)[0]
    return resized.clamp(0.0, 1.0)


def _at_least(img: Image.Image) -> Image.Image:
    size = _grown(img.width, img.height)
    return img if size == img.size else img.resize(size, Image.Resampling.BICUBIC)
