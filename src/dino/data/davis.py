"""The DAVIS 2017 folder layout: frames, palette annotations, lists of videos, indexed PNGs.

    <root>/JPEGImages/<resolution>/<video>/<frame>.jpg
    <root>/Annotations/<resolution>/<video>/<frame>.png  palette PNG: 0 background, 1..n objects
    <root>/ImageSets/2017/<split>.txt                    one video name a line

Predictions are written as ``<out>/<video>/<frame>.png``, palette PNGs of the same frame
names: the layout the DAVIS 2017 evaluation toolkit reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from dino.data.images import IMAGE_EXTENSIONS
from dino.errors import ConfigError, DataError

DEFAULT_IMAGESET = "ImageSets/2017/val.txt"
VOID_LABEL = 255  # DAVIS marks pixels to ignore with 255; the evaluation counts them as background


@lru_cache(maxsize=1)
def davis_palette() -> np.ndarray:
    """The 256 colours of DAVIS annotations (256, 3) uint8: PASCAL VOC's colour map (0 black,
    1 dark red, 2 green, ...), the palette the reference writes its predictions with."""
    palette = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, rgb = i, [0, 0, 0]
        for bit in range(8):  # the three low bits of the index go to the high bits of R, G, B
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << (7 - bit)
            c >>= 3
        palette[i] = rgb
    return palette


def save_indexed_png(path: str | Path, labels: np.ndarray) -> None:
    """Write ``labels`` (H, W) of values 0..255 as a palette PNG with the DAVIS colours."""
    if labels.ndim != 2:
        raise ValueError(f"an indexed PNG needs a 2-D label map, got shape {labels.shape}")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(davis_palette().ravel().tolist())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def read_label_png(path: str | Path) -> np.ndarray:
    """The label map (H, W) uint8 of a palette or greyscale PNG: its indices, not its colours."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise DataError(
                    f"{path}: expected a palette or greyscale PNG of object ids, "
                    f"got mode {image.mode}"
                )
            return np.array(image, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None


@dataclass(frozen=True)
class DavisVideo:
    """One video of a DAVIS-layout folder: its frames and the annotations that exist."""

    name: str
    frames: list[Path]  # sorted by name
    annotations: dict[str, Path]  # frame stem -> palette PNG


def video_names(root: str | Path, imageset: str, videos: Sequence[str] | None = None) -> list[str]:
    """The videos to process: ``videos`` if given, else the names listed in ``root/imageset``."""
    if videos:
        return list(videos)
    listing = Path(root) / imageset
    if not listing.is_file():
        raise ConfigError(
            f"imageset: {listing} does not exist; name the videos with --videos or give the "
            "list with --imageset (a path relative to --data_path)"
        )
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{listing}: lists no video")
    return names


def read_davis_video(root: str | Path, name: str, resolution: str = "480p") -> DavisVideo:
    """Frames and annotations of video ``name``; its first frame must be annotated."""
    folder = Path(root) / "JPEGImages" / resolution / name
    if not folder.is_dir():
        raise DataError(f"video {name}: no frame folder {folder}")
    frames = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    if not frames:
        raise DataError(f"video {name}: {folder} holds no image")
    notes = Path(root) / "Annotations" / resolution / name
    annotations = {p.stem: p for p in sorted(notes.glob("*.png"))} if notes.is_dir() else {}
    if frames[0].stem not in annotations:
        raise DataError(
            f"video {name}: the first frame needs its mask, {notes / (frames[0].stem + '.png')}"
        )
    return DavisVideo(name, frames, annotations)
