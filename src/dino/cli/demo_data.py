"""``dino demo-data``: the demo's labelled images, written to a folder."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import non_negative_int, positive_int


def add(sub: Any) -> None:
    """The ``demo-data`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("demo-data", help="write the demo's labelled images to a folder")
    p.add_argument("out_dir", help="gets train/<class>/*.png and val/<class>/*.png")
    p.add_argument("--n_train", type=positive_int, default=2500)
    p.add_argument("--n_val", type=positive_int, default=1000)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from dino.data.demo import demo_splits, save_demo_folders
    from dino.progress import log

    folders = save_demo_folders(demo_splits(args.n_train, args.n_val, args.seed), args.out_dir)
    log(f"demo data: {args.n_train} images in {folders['train']}, {args.n_val} in {folders['val']}")
