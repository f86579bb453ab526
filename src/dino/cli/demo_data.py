"""``dino demo-data``: the demo's labelled images, or its videos with masks, written to a folder."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import non_negative_int, positive_int


def add(sub: Any) -> None:
    """The ``demo-data`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("demo-data", help="write the demo's labelled images (or videos) to a folder")
    p.add_argument(
        "out_dir",
        help="gets train/<class>/*.png and val/<class>/*.png; with --video, the DAVIS 2017 layout",
    )
    p.add_argument("--n_train", type=positive_int, default=2500)
    p.add_argument("--n_val", type=positive_int, default=1000)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument(
        "--video",
        action="store_true",
        help="write videos of moving shapes with their masks (JPEGImages/480p/<video>/*.jpg, "
        "Annotations/480p/<video>/*.png, ImageSets/2017/val.txt)",
    )
    p.add_argument("--n_videos", type=positive_int, default=6, help="with --video")
    p.add_argument("--n_frames", type=positive_int, default=24, help="per video, with --video")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from dino.cli.outputs import writable_folder
    from dino.progress import log

    writable_folder("out_dir", args.out_dir)  # said before the images are drawn

    if args.video:
        from dino.data.video_demo import demo_videos, save_demo_videos

        videos = demo_videos(args.n_videos, args.n_frames, args.seed)
        root = save_demo_videos(videos, args.out_dir)
        log(f"demo videos: {len(videos)} x {args.n_frames} frames with masks in {root}")
        return
    from dino.data.demo import demo_splits, save_demo_folders

    folders = save_demo_folders(demo_splits(args.n_train, args.n_val, args.seed), args.out_dir)
    log(f"demo data: {args.n_train} images in {folders['train']}, {args.n_val} in {folders['val']}")
