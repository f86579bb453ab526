"""``dino knn``: weighted k-NN classification on [CLS] features (DINO section 4.1)."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import add_backbone_flags, add_split_flags, positive_float, positive_int


def add(sub: Any) -> None:
    """The ``knn`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("knn", help="weighted k-NN classification on [CLS] features")
    add_backbone_flags(p)
    add_split_flags(p)
    p.add_argument(
        "--nb_knn", type=positive_int, nargs="+", default=[10, 20, 100, 200], metavar="K"
    )
    p.add_argument(
        "--temperature", type=positive_float, default=0.07, help="vote weight exp(sim / T)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import torch

    from dino.cli.backbone import features_of, open_backbone, open_folder
    from dino.data.transforms import eval_transform
    from dino.eval.knn import knn_classify
    from dino.progress import log

    b = open_backbone(args)
    transform = eval_transform(b.image_size)
    train = open_folder("--train_path", args.train_path, transform, labelled=True)
    val = open_folder("--val_path", args.val_path, transform, True, train.classes)
    train_x, train = features_of(b, train, args, "train features")
    val_x, val = features_of(b, val, args, "val features")
    results = knn_classify(
        train_x,
        torch.tensor(train.labels),
        val_x,
        torch.tensor(val.labels),
        args.nb_knn,
        args.temperature,
        len(train.classes),
    )
    log(
        f"weighted k-NN (T={args.temperature}): {len(val)} queries, {len(train)} train images, "
        f"{len(train.classes)} classes"
    )
    for r in results:
        five = f"  top-5 {r.top5:5.1f}%" if r.top5 is not None else ""
        log(f"  k={r.k:<4d} top-1 {r.top1:5.1f}%{five}")
