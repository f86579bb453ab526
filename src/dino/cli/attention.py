"""``dino attention``: PNG maps of the last block's [CLS] attention (DINO figure 1), of one
image or of every frame of a video (the reference's ``video_generation.py``)."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import add_backbone_flags, positive_float, positive_int


def add(sub: Any) -> None:
    """The ``attention`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("attention", help="PNG maps (or videos) of the last block's [CLS] attention")
    add_backbone_flags(p, loader=False)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--image",
        "--image_path",
        dest="image",
        help="an image file of any size, or a folder of them (maps in a subfolder per image)",
    )
    source.add_argument(
        "--video", help="a video file (mp4, ...; needs the video extra) or a folder of frames"
    )
    p.add_argument("--output_dir", default="attention", help="where the PNGs (and videos) go")
    p.add_argument("--threshold", type=float, default=0.6, help="mass kept by the masks")
    p.add_argument("--interpolation", default="bilinear", choices=["nearest", "bilinear"])
    v = p.add_argument_group("--video only")
    v.add_argument(
        "--fps",
        type=positive_float,
        default=None,
        help="of the videos written (default: the input's, 30 for a folder)",
    )
    v.add_argument(
        "--resize",
        type=positive_int,
        default=None,
        help="short side of the frames in pixels (default: the frames' own size)",
    )
    v.add_argument("--gif", action="store_true", help="write GIFs even where mp4 is possible")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from dino.cli.outputs import writable_folder
    from dino.errors import ConfigError

    writable_folder("--output_dir", args.output_dir)  # said before any work
    if args.video is not None:
        return run_video(args)
    if args.fps is not None or args.resize is not None or args.gif:
        raise ConfigError(
            "--fps, --resize and --gif apply to --video; for --image see --image_size"
        )
    from pathlib import Path

    import torch

    from dino.cli.backbone import open_backbone
    from dino.data.images import find_images, load_rgb
    from dino.distributed import is_main_process
    from dino.errors import DataError
    from dino.eval.attention import attention_input, cls_attention, save_attention_maps
    from dino.eval.load import patch_multiple
    from dino.progress import log, warn

    b = open_backbone(args)
    source = Path(args.image)
    files = find_images(source, args.follow_links) if source.is_dir() else [source]
    if not files:
        raise DataError(f"--image: no images in {source}")
    for path in files:
        out = Path(args.output_dir)
        if source.is_dir():  # one folder per image: <output_dir>/<its path, no extension>/
            out = out / path.relative_to(source).with_suffix("")
        try:
            image = load_rgb(path)
        except (OSError, ValueError) as e:
            if not source.is_dir():
                raise DataError(f"--image: cannot read {path} ({e})") from None
            warn(f"--image: skipped {path} ({e})")
            continue
        x = attention_input(image, patch_multiple(b.model), b.image_size)
        with torch.autocast(
            b.device.type, dtype=b.dtype or torch.float32, enabled=b.dtype is not None
        ):
            maps = cls_attention(b.model, x.to(b.device)).cpu()  # (heads, h, w)
        if not is_main_process():
            continue
        written = save_attention_maps(image, maps, out, args.threshold, args.interpolation)
        log(
            f"{maps.shape[0]} heads on a {maps.shape[1]}x{maps.shape[2]} patch grid: "
            f"{len(written)} PNGs of {image.width}x{image.height} px in {out}"
        )


def run_video(args: argparse.Namespace) -> None:
    import time

    from dino.cli.backbone import open_backbone
    from dino.data.video_io import open_frames
    from dino.distributed import is_main_process
    from dino.errors import ConfigError
    from dino.eval.attention_video import attention_video
    from dino.progress import log

    if args.image_size is not None:
        raise ConfigError("--image_size applies to --image; for --video see --resize")
    source = open_frames(args.video, args.follow_links)
    b = open_backbone(args)
    if not is_main_process():
        return
    start = time.perf_counter()
    written = attention_video(
        b.model,
        source.frames,
        args.output_dir,
        args.fps or source.fps,
        args.threshold,
        args.interpolation,
        args.resize,
        b.device,
        b.dtype,
        gif=True if args.gif else None,
        total=source.count,
    )
    seconds = time.perf_counter() - start
    kinds = sorted({p.suffix for p in written.videos})
    log(
        f"{written.n_frames} frames ({written.n_frames / seconds:.2f} frames/s): "
        f"{len(written.videos)} videos ({', '.join(kinds)}) and their frames in {args.output_dir}"
    )
