"""``dino embed``: the features of every image of a folder, to a .npy file."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import POOLED_FEATURES, add_backbone_flags
from dino.viz.embedding_map import MAP_METHODS


def add(sub: Any) -> None:
    """The ``embed`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("embed", help="write the features of every image of a folder")
    add_backbone_flags(p)
    p.add_argument("--data_path", required=True, help="folder of images, searched recursively")
    p.add_argument(
        "--output",
        required=True,
        help="FILE.npy; the image names go to FILE.jsonl beside it, one JSON string a line",
    )
    p.add_argument(
        "--features",
        default="cls",
        choices=(*POOLED_FEATURES, "patch"),
        help="one vector per image, or patch: per-patch features (N, h, w, D)",
    )
    p.add_argument(
        "--plot",
        nargs="?",
        const="auto",
        choices=MAP_METHODS,
        help="also write FILE.png, a 2-D map of the embeddings (patch: their mean) coloured by "
        "class folder: t-SNE, or UMAP when umap-learn is installed (auto)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from dino.cli.backbone import features_of, names_of, open_backbone, open_folder
    from dino.data.transforms import eval_transform
    from dino.distributed import is_main_process
    from dino.eval.embed import write_embeddings
    from dino.eval.features import feature_head
    from dino.progress import log

    if args.plot:
        from dino.viz.embedding_map import map_method

        map_method(args.plot)  # a missing package is said before any feature is extracted
    check_outputs(args)
    b = open_backbone(args, any_channels=True)
    transform = eval_transform(b.image_size, b.channels)
    images = open_folder(
        "--data_path",
        args.data_path,
        transform,
        channels=b.channels,
        follow_links=args.follow_links,
    )
    x, images = features_of(b, images, args, "features", feature_head(args.features))
    if not is_main_process():
        return
    names = names_of(images, args.data_path)
    paths = write_embeddings(args.output, x, names)
    shape = " x ".join(map(str, x.shape))
    log(f"{shape} {args.features} features -> {paths[0]} (names: {paths[1]})")
    if args.plot:
        from dino.viz.embedding_map import plot_map

        pooled = x.flatten(1, -2).mean(dim=1) if x.dim() == 4 else x  # (N, h, w, D) -> (N, D)
        log(plot_map(pooled.numpy(), names, args.plot, paths[0].with_suffix(".png")))


def check_outputs(args: argparse.Namespace) -> None:
    """--output must name a FILE.npy that can be written, with FILE.jsonl (and FILE.png with
    --plot) beside it, none of them the checkpoint: said before any work."""
    from pathlib import Path

    from dino.cli.outputs import writable_file
    from dino.errors import ConfigError
    from dino.eval.embed import names_path

    output = Path(args.output)
    if output.suffix != ".npy":
        raise ConfigError(
            f"--output: expected a FILE.npy name (the names go to FILE.jsonl), got {output}"
        )
    inputs = {"--checkpoint": args.checkpoint}
    beside = [names_path(output)] + ([output.with_suffix(".png")] if args.plot else [])
    for path in (output, *beside):
        writable_file("--output", path, inputs)
