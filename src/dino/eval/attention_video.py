"""Attention videos (the reference's ``video_generation.py``): the last block's [CLS]
attention on every frame, per head and averaged, as heatmaps and threshold masks overlaid on
the frames; written as numbered PNG frames and as one video per map.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from dino.data.video_io import VideoWriter, open_writer
from dino.eval.attention import attention_input, attention_overlays, cls_attention
from dino.progress import Progress


@dataclass(frozen=True)
class AttentionVideo:
    """What ``attention_video`` wrote: one video per map, and the number of frames in each."""

    videos: list[Path]
    n_frames: int


def resize_short_side(image: Image.Image, short_side: int | None) -> Image.Image:
    """``image`` with its short side ``short_side`` (bicubic), or unchanged for None."""
    if short_side is None or min(image.size) == short_side:
        return image
    scale = short_side / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


@torch.no_grad()
def attention_video(
    model: nn.Module,
    frames: Iterable[Image.Image],
    out_dir: str | Path,
    fps: float = 30.0,
    threshold: float = 0.6,
    interpolation: str = "bilinear",
    resize: int | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    gif: bool | None = None,
    total: int | None = None,
) -> AttentionVideo:
    """Attention of ``model`` (a ViT) on each of ``frames``, written to ``out_dir``.

    For each map name of ``attention_overlays`` (``attn-head{i}``, ``attn-mean``,
    ``mask-head{i}``, ``mask-mean``): the frames ``out_dir/<name>/00000.png``, ... and the video
    ``out_dir/<name>.mp4`` at ``fps`` (``.gif`` where no mp4 encoder is installed, or with
    ``gif`` True). Frames are first resized to the short side ``resize`` (if given); the
    network sees them with sides rounded down to multiples of the patch; the overlays have
    the resized frame's size. ``dtype`` runs the network under autocast.
    """
    device = device or torch.device("cpu")
    patch = int(getattr(model, "patch_size", 1))
    out = Path(out_dir)
    writers: dict[str, VideoWriter] = {}
    n = 0
    for image in Progress(frames, total or 0, "attention video"):
        frame = resize_short_side(image.convert("RGB"), resize)
        x = attention_input(frame, patch).to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            maps = cls_attention(model, x).cpu()  # (heads, h, w)
        for name, picture in attention_overlays(frame, maps, threshold, interpolation).items():
            if name not in writers:
                (out / name).mkdir(parents=True, exist_ok=True)
                writers[name] = open_writer(out / name, fps, gif)
            picture.save(out / name / f"{n:05d}.png", compress_level=1)
            writers[name].write(picture)
        n += 1
    return AttentionVideo([w.close() for w in writers.values()], n)
