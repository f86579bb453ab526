"""Built-in demo videos with ground truth: generated, never downloaded.

Each video shows two or three of the demo's shapes, each filled with its own colour and
stripes, crossing a textured background along straight paths with a wobble, turning and
growing or shrinking as they go; they overlap (a fixed depth order, so the nearer one
occludes), the background drifts like a slow camera pan, and the light changes over time.
The ground truth is the visible part of each shape (ids 1..n by depth, nearest last) as
palette PNGs in the DAVIS 2017 layout, so ``dino video-segment`` reads it like DAVIS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dino.data.davis import DEFAULT_IMAGESET, save_indexed_png
from dino.data.demo import SHAPES, draw_shape

FRAME_SIZE = (96, 128)  # (H, W): the long side a multiple of 64, as the reference resizes to
MIN_PIXELS = 20  # every shape shows at least this many pixels in the first frame


@dataclass(frozen=True)
class DemoVideo:
    name: str
    frames: list[Image.Image]
    masks: list[np.ndarray]  # (H, W) uint8: 0 background, 1..n the shapes


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A texture (h, w, 3) in [0, 1]: three random gratings blending two random colours."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    texture = np.zeros((h, w))
    for _ in range(3):
        angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.05, 0.3), rng.uniform(0, 6.3)
        texture += np.sin(freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    t = (texture / 6 + 0.5)[..., None]  # (h, w, 1) in [0, 1]
    a, b = rng.uniform(0.1, 0.9, (2, 3))
    return t * a + (1 - t) * b


@dataclass(frozen=True)
class _Mover:
    """One shape's path, turn, growth and look over a video."""

    shape: str
    start: np.ndarray  # (x, y) px at the first frame
    end: np.ndarray  # (x, y) px at the last frame
    wobble: float  # px of a sinusoidal swerve around the straight path
    scale: float  # px from centre to outline at the first frame
    grow: float  # relative change of the scale by the last frame
    angle: float  # radians at the first frame
    spin: float  # radians per frame
    colour: np.ndarray  # (3,) in [0, 1]
    stripes: np.ndarray  # (H, W): 0.7 or 1, multiplies the colour

    def pose(self, s: float, k: int) -> tuple[np.ndarray, float, float]:
        """Centre, scale and angle at ``s`` in [0, 1] of the video (``k`` phases the swerve)."""
        centre = self.start + s * (self.end - self.start)
        centre = centre + self.wobble * np.array([np.sin(6 * s + k), np.cos(5 * s + k)])
        return centre, self.scale * (1 + self.grow * s), self.angle


def _mover(rng: np.random.Generator, h: int, w: int, side: int) -> _Mover:
    """A random shape crossing the frame from the ``side`` half (-1 left, 1 right)."""
    start = np.array([w / 2 + side * rng.uniform(0.1, 0.3) * w, rng.uniform(0.3, 0.7) * h])
    end = np.array([w / 2 - side * rng.uniform(0.1, 0.3) * w, rng.uniform(0.3, 0.7) * h])
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.4, 1.0)
    stripes = 0.85 + 0.15 * np.sign(np.sin(freq * (x * np.cos(angle) + y * np.sin(angle))))
    return _Mover(
        shape=SHAPES[int(rng.integers(len(SHAPES)))],
        start=start,
        end=end,
        wobble=rng.uniform(1, 4),
        scale=rng.uniform(0.15, 0.22) * h,
        grow=rng.uniform(-0.25, 0.25),
        angle=rng.uniform(0, 2 * np.pi),
        spin=rng.uniform(-0.12, 0.12),
        colour=rng.uniform(0.05, 0.95, 3),
        stripes=stripes,
    )


def demo_video(
    name: str, seed: int, n_frames: int = 24, size: tuple[int, int] = FRAME_SIZE
) -> DemoVideo:
    """One video of ``n_frames`` frames of ``size`` (H, W), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    h, w = size
    pad = max(h, w) // 4  # the background is larger than the frame, so it can pan
    background = _background(rng, h + 2 * pad, w + 2 * pad)
    pan = rng.uniform(-1, 1, 2) * pad / max(1, n_frames - 1)  # (dy, dx) px per frame
    light = rng.uniform(0.15, 0.3) * np.sin(np.linspace(0, rng.uniform(1, 3), n_frames))
    side = int(rng.choice([-1, 1]))
    n_objects = int(rng.integers(2, 4))
    # The first shape starts on one side, the others on the other: their paths cross.
    movers = [_mover(rng, h, w, side if k == 0 else -side) for k in range(n_objects)]
    frames, masks = [], []
    for t in range(n_frames):
        oy, ox = (pad + pan * t).round().astype(int)
        image = background[oy : oy + h, ox : ox + w].copy()
        labels = np.zeros((h, w), np.uint8)
        for k, m in enumerate(movers, start=1):  # later shapes are nearer
            centre, scale, angle = m.pose(t / max(1, n_frames - 1), k)
            cover = draw_shape(m.shape, h, w, centre, scale, angle + m.spin * t)[..., None]
            shift = (centre - m.start).round().astype(int)  # stripes travel with the shape
            fill = m.colour * np.roll(m.stripes, (shift[1], shift[0]), axis=(0, 1))[..., None]
            image = cover * fill + (1 - cover) * image
            labels[cover[..., 0] > 0.5] = k
        image = image * (1 + light[t]) + rng.normal(0, 0.03, image.shape)
        frames.append(Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)))
        masks.append(labels)
    if any(np.count_nonzero(masks[0] == k) < MIN_PIXELS for k in range(1, n_objects + 1)):
        return demo_video(name, seed + 7919, n_frames, size)  # a shape is hidden at the start
    return DemoVideo(name, frames, masks)


def demo_videos(n_videos: int = 6, n_frames: int = 24, seed: int = 0) -> list[DemoVideo]:
    """``n_videos`` demo videos named ``shapes-00``, ``shapes-01``, ..."""
    return [demo_video(f"shapes-{i:02d}", seed * 1000 + i, n_frames) for i in range(n_videos)]


def save_demo_videos(videos: list[DemoVideo], root: str | Path, resolution: str = "480p") -> Path:
    """Write ``videos`` in the DAVIS 2017 layout under ``root``; returns ``root``.

    ``JPEGImages/<resolution>/<video>/00000.jpg``, ``Annotations/<resolution>/<video>/
    00000.png`` (palette PNGs of every frame) and ``ImageSets/2017/val.txt`` listing them.
    """
    root = Path(root)
    for video in videos:
        frames = root / "JPEGImages" / resolution / video.name
        frames.mkdir(parents=True, exist_ok=True)
        for i, (frame, mask) in enumerate(zip(video.frames, video.masks, strict=True)):
            frame.save(frames / f"{i:05d}.jpg", quality=90)
            save_indexed_png(root / "Annotations" / resolution / video.name / f"{i:05d}.png", mask)
    listing = root / DEFAULT_IMAGESET
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{v.name}\n" for v in videos))
    return root
