"""Flags the evaluation commands share, and argparse types whose errors stay on one line.

Nothing here imports torch: ``dino --help`` builds every parser from these.
"""

from __future__ import annotations

import argparse

from dino.coerce import parse_bool
from dino.config import DEVICES, PRECISIONS, load_yaml
from dino.errors import ConfigError

POOLED_FEATURES = ("cls", "patch_mean", "cls_gem")  # one vector per image from one block


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
    image_size: tuple[int, str] | None = None,
) -> None:
    """The flags every evaluation command shares: checkpoint, architecture, hardware, size
    (``hardware=False``: checkpoint and architecture only, for commands that run nothing;
    ``image_size``: the command's own default input size and its help)."""
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
        required=True,
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
    g.add_argument("--image_size", type=positive_int, default=default, help=size_help)
    if loader:
        g.add_argument(
            "--batch_size", type=positive_int, default=128, help="images per forward pass"
        )
        g.add_argument(
            "--num_workers", type=non_negative_int, default=2, help="data-loading processes"
        )


def add_split_flags(parser: argparse.ArgumentParser, train_required: bool = True) -> None:
    """--train_path and --val_path: labelled folders, one subfolder per class."""
    parser.add_argument(
        "--train_path", required=train_required, help="labelled folder: <class>/<images>"
    )
    parser.add_argument("--val_path", required=True, help="labelled folder, same class names")


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
