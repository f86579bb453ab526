"""Video in and out: frames from a video file (PyAV) or a folder of images; an mp4 (PyAV's
bundled FFmpeg, H.264 or MPEG-4), or an animated GIF (Pillow) when no encoder is there.

PyAV is the optional ``video`` extra (``pip install 'dino[video]'``), imported only here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from PIL import Image

from dino.data.images import find_images, load_rgb
from dino.errors import ConfigError, DataError

DEFAULT_FPS = 30.0  # for a folder of frames (the reference's video_generation.py default)
MP4_CODECS = ("libx264", "h264", "mpeg4")  # first one PyAV can encode with


def import_av() -> ModuleType:
    """PyAV, or a one-line error naming the extra that installs it."""
    try:
        import av
    except ImportError:
        raise ConfigError(
            "video files need PyAV: pip install 'dino[video]' (or give a folder of frames)"
        ) from None
    return av


@dataclass
class FrameSource:
    """Frames to read one at a time, their rate and (when known) their number."""

    frames: Iterator[Image.Image]
    fps: float
    count: int | None


def open_frames(path: str | Path, follow_links: bool = False) -> FrameSource:
    """The RGB frames of a video file, or of the images of a folder in name order (links to
    folders outside it followed only with ``follow_links``)."""
    path = Path(path)
    if path.is_dir():
        files = find_images(path, follow_links)
        if not files:
            raise DataError(f"{path}: no image in this folder")
        return FrameSource((load_rgb(f) for f in files), DEFAULT_FPS, len(files))
    if not path.is_file():
        raise DataError(f"{path}: no such video file or folder")
    av = import_av()
    try:
        container = av.open(str(path))
        stream = container.streams.video[0]
    except (av.error.FFmpegError, IndexError) as e:
        raise DataError(f"{path}: cannot read as a video ({e})") from None
    fps = float(stream.average_rate) if stream.average_rate else DEFAULT_FPS
    count = stream.frames or None

    def decode() -> Iterator[Image.Image]:
        with container:
            for frame in container.decode(stream):
                yield frame.to_image().convert("RGB")

    return FrameSource(decode(), fps, count)


class VideoWriter(Protocol):
    path: Path

    def write(self, image: Image.Image) -> None: ...

    def close(self) -> Path: ...


def mp4_codec() -> str | None:
    """The mp4 encoder this machine's PyAV has, or None (no PyAV, or no encoder)."""
    try:
        av = import_av()
    except ConfigError:
        return None
    for name in MP4_CODECS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: S112 (PyAV raises several kinds for an unknown codec)
            continue
        return name
    return None


class Mp4Writer:
    """Frames encoded as they come (yuv420p, so sides are cut to even numbers)."""

    def __init__(self, path: Path, fps: float, codec: str) -> None:
        av = import_av()
        self.path = path
        self.container: Any = av.open(str(path), mode="w")
        self.stream: Any = self.container.add_stream(codec, rate=_rate(fps))
        self.stream.pix_fmt = "yuv420p"
        self.av = av
        self.size: tuple[int, int] | None = None

    def write(self, image: Image.Image) -> None:
        if self.size is None:
            self.size = (image.width // 2 * 2, image.height // 2 * 2)
            self.stream.width, self.stream.height = self.size
        if image.size != self.size:
            image = image.crop((0, 0, *self.size))
        frame = self.av.VideoFrame.from_image(image.convert("RGB"))
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> Path:
        for packet in self.stream.encode():  # flush the encoder
            self.container.mux(packet)
        self.container.close()
        return self.path


class GifWriter:
    """Frames kept and written as one looping GIF at the end (Pillow needs them all)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = path, fps
        self.frames: list[Image.Image] = []

    def write(self, image: Image.Image) -> None:
        self.frames.append(image.convert("RGB"))

    def close(self) -> Path:
        if self.frames:
            first, *rest = self.frames
            duration = max(20, round(1000 / self.fps))  # ms; browsers slow down shorter frames
            first.save(self.path, save_all=True, append_images=rest, duration=duration, loop=0)
        self.frames = []
        return self.path


def open_writer(stem: str | Path, fps: float, gif: bool | None = None) -> VideoWriter:
    """A writer of ``stem.mp4``, or of ``stem.gif`` when no mp4 encoder is present (``gif``
    True forces the GIF, False refuses it)."""
    stem = Path(stem)
    codec = None if gif else mp4_codec()
    if codec is not None:
        return Mp4Writer(stem.with_suffix(".mp4"), fps, codec)
    if gif is False:
        raise ConfigError("no mp4 encoder: pip install 'dino[video]'")
    return GifWriter(stem.with_suffix(".gif"), fps)


def _rate(fps: float) -> Fraction:
    if not fps > 0:
        raise ConfigError(f"fps: expected a number > 0, got {fps}")
    return Fraction(fps).limit_denominator(1001)
