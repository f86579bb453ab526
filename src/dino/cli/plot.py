"""``dino plot``: the curves of a training run, from its log.txt, as one PNG."""

from __future__ import annotations

import argparse
from typing import Any


def add(sub: Any) -> None:
    """The ``plot`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "plot",
        help="a PNG of a training run's curves (loss vs ln K, entropies, k-NN, rank, lr)",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a dino train output folder, or its log.txt")
    p.add_argument("--output", default=None, help="PNG to write (default: RUN_DIR/curves.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from dino.viz.curves import find_log, plot_curves, read_log

    path = find_log(args.run)
    records = read_log(path)
    output = args.output or str(path.parent / "curves.png")
    plot_curves(records, output, str(path.parent))
    print(f"{len(records)} epoch(s) of {path} -> {output}")
