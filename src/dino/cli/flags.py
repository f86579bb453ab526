"""Flags the evaluation commands share, and argparse types whose errors stay on one line.

Nothing here imports torch: ``dino --help`` builds every parser from these.
"""

from __future__ import annotations

import argparse

from dino.coerce import parse_bool
from dino.config import DEVICES, MIN_WORKERS_CAP, PRECISIONS, load_yaml, max_workers
from dino.errors import ConfigError

POOLED_FEATURES = ("cls", "patch_mean", "cls_gem")  # one vector per image from one block
# Choices of the library's options, spelled here so that building a parser imports no torch
# (tests check them against dino.eval.search.INDEXES, copydetect.WHITENINGS, ...).
INDEXES = ("flat", "faiss")
WHITENINGS = ("reference", "normalized")
MULTISCALE_SIZES = ("factor", "patch")
LR_SCHEDULES = ("epoch", "iteration")
INTERPOLATIONS = ("bilinear", "bicubic")


def positive_int(text: str) -> int:
    """argparse type: an integer > 0 (a wrong value ends in a one-line usage error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def worker_count(text: str) -> int:
    """argparse type of --num_workers: as many loader processes as ``dino train`` allows."""
    value = non_negative_int(text)
    if value > max_workers():
        raise argparse.ArgumentTypeError(
            f"expected an integer in [0, {max_workers()}] (4 per CPU, at least "
            f"{MIN_WORKERS_CAP}), got {text!r}"
        )
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def bool_flag(text: str) -> bool:
    """argparse type of the reference's boolean flags: true/false, 1/0, on/off, yes/no."""
    try:
        return parse_bool("", text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None


def add_backbone_flags(
    parser: argparse.ArgumentParser,
    loader: bool = True,
    hardware: bool = True,
    image_size: tuple[int | None, str] | None = None,
    checkpoint_required: bool = True,
    folders: bool = True,
) -> None:
    """The flags every evaluation command shares: checkpoint, architecture, hardware, size
    (``hardware=False``: checkpoint and architecture only, for commands that run nothing;
    ``image_size``: the command's own default input size and its help; ``folders``: the
    command scans image folders, --follow_links). The reference's names are aliases:
    --pretrained_weights, --imsize, --batch_size_per_gpu."""
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        default=None,
        help="YAML file of this command's options (checkpoint: ..., nb_knn: [10, 20]); "
        "flags given here override it",
    )
    g = parser.add_argument_group("backbone and hardware")
    g.add_argument(
        "--checkpoint",
        "--pretrained_weights",
        dest="checkpoint",
        required=checkpoint_required,
        metavar="FILE",
        help="a dino train checkpoint, a published DINO full checkpoint or a backbone state dict",
    )
    g.add_argument(
        "--checkpoint_key",
        default="teacher",
        help="entry of a full checkpoint to use: teacher or student (default: teacher)",
    )
    g.add_argument(
        "--arch", default=None, help="build this named architecture instead of reading it"
    )
    g.add_argument(
        "--patch_size", type=positive_int, default=None, help="ViT patch size (default: read)"
    )
    g.add_argument(
        "--trust_checkpoint",
        action="store_true",
        help="allow arbitrary unpickling (can run code): only for files from a trusted source",
    )
    if not hardware:
        return
    g.add_argument("--device", default="auto", choices=DEVICES)
    g.add_argument("--precision", default="auto", choices=PRECISIONS)
    default, size_help = image_size or (
        None,
        "input side in pixels (default: the size the checkpoint was trained at)",
    )
    g.add_argument(
        "--image_size", "--imsize", dest="image_size", type=positive_int, default=default,
        help=size_help,
    )  # fmt: skip
    if folders:
        g.add_argument(
            "--follow_links",
            action="store_true",
            help="follow links to folders outside the image folders (else skipped and named)",
        )
    if loader:
        g.add_argument(
            "--batch_size",
            "--batch_size_per_gpu",
            dest="batch_size",
            type=positive_int,
            default=128,
            help="images per forward pass (per process under torchrun)",
        )
        g.add_argument("--num_workers", type=worker_count, default=2, help="data-loading processes")


def add_split_flags(parser: argparse.ArgumentParser) -> None:
    """--train_path and --val_path (labelled folders, one subfolder per class), or the
    reference's --data_path holding train/ and val/; ``split_paths`` resolves them."""
    parser.add_argument("--train_path", help="labelled folder: <class>/<images>")
    parser.add_argument("--val_path", help="labelled folder, same class names")
    parser.add_argument(
        "--data_path", help="a folder with train/ and val/ inside (the reference's layout)"
    )


def split_paths(args: argparse.Namespace, need_train: bool = True) -> tuple[str | None, str]:
    """(train folder, val folder) from --train_path / --val_path or --data_path."""
    if args.data_path is not None:
        if args.train_path is not None or args.val_path is not None:
            raise ConfigError("--data_path: give it, or --train_path and --val_path, not both")
        return f"{args.data_path}/train", f"{args.data_path}/val"
    if args.val_path is None or (need_train and args.train_path is None):
        missing = "--val_path" if args.val_path is None else "--train_path"
        raise ConfigError(f"{missing}: required (or --data_path with train/ and val/ inside)")
    return args.train_path, args.val_path


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    """Feature dumps (the reference's --dump_features / --load_features) and the index."""
    g = parser.add_argument_group("features on disk and search")
    g.add_argument(
        "--dump_features",
        metavar="DIR",
        default=None,
        help="extract into memory-mapped .npy shards in DIR (resumes where it stopped)",
    )
    g.add_argument(
        "--load_features",
        metavar="DIR",
        default=None,
        help="read features dumped by --dump_features (no checkpoint or images needed)",
    )
    g.add_argument(
        "--shard_size", type=positive_int, default=10_000, help="images per shard on disk"
    )
    g.add_argument(
        "--index",
        default="flat",
        choices=INDEXES,
        help="flat: exact search in blocks of bounded memory; faiss: faiss's exact index "
        "(pip install 'dino[scale]')",
    )


def yaml_flags(path: str) -> list[str]:
    """The options of a YAML file as command-line tokens, so that argparse checks them as it
    checks flags: ``nb_knn: [10, 20]`` -> ``--nb_knn 10 20``, ``multiscale: true`` ->
    ``--multiscale``; false and null leave the option at its default."""
    tokens: list[str] = []
    for key, value in load_yaml(path).items():
        if value is None or value is False:
            continue
        tokens.append(f"--{key}")
        if isinstance(value, list):
            tokens += [str(v) for v in value]
        elif value is not True:
            tokens.append(str(value))
    return tokens
