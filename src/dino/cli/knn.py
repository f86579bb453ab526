"""``dino knn``: weighted k-NN classification on [CLS] features (DINO section 4.1)."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import (
    add_backbone_flags,
    add_split_flags,
    add_store_flags,
    positive_float,
    positive_int,
    split_paths,
)


def add(sub: Any) -> None:
    """The ``knn`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("knn", help="weighted k-NN classification on [CLS] features")
    add_backbone_flags(p, checkpoint_required=False)
    add_split_flags(p)
    p.add_argument(
        "--nb_knn", type=positive_int, nargs="+", default=[10, 20, 100, 200], metavar="K"
    )
    p.add_argument(
        "--temperature", type=positive_float, default=0.07, help="vote weight exp(sim / T)"
    )
    add_store_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import torch

    from dino.eval.knn import knn_classify
    from dino.progress import log

    if args.load_features is not None:
        train, val = load_features(args.load_features)
    else:
        train, val = extract(args)
    results = knn_classify(
        train.blocks,
        torch.from_numpy(train.labels),
        val.tensor(),
        torch.from_numpy(val.labels),
        args.nb_knn,
        args.temperature,
        len(train.classes) or None,
        index=args.index,
    )
    classes = len(train.classes) or int(max(train.labels.max(), val.labels.max())) + 1
    log(
        f"weighted k-NN (T={args.temperature}): {len(val)} queries, {len(train)} train images, "
        f"{classes} classes"
    )
    for r in results:
        five = f"  top-5 {r.top5:5.1f}%" if r.top5 is not None else ""
        log(f"  k={r.k:<4d} top-1 {r.top1:5.1f}%{five}")


def extract(args: argparse.Namespace) -> tuple[Any, Any]:
    """Train and val features of the labelled folders (dumped with --dump_features)."""
    from pathlib import Path

    from dino.cli.backbone import collection, names_of, open_backbone, open_folder, store_what
    from dino.cli.outputs import writable_folder
    from dino.data.transforms import eval_transform

    train_path, val_path = split_paths(args)
    assert train_path is not None
    if args.dump_features is not None:  # said before any work
        writable_folder("--dump_features", args.dump_features)
    b = open_backbone(args, any_channels=True)
    transform = eval_transform(b.image_size, b.channels)
    kept = {"channels": b.channels, "follow_links": args.follow_links}
    train = open_folder("--train_path", train_path, transform, True, **kept)
    val = open_folder("--val_path", val_path, transform, True, train.classes, **kept)
    dump = Path(args.dump_features) if args.dump_features else None
    what = store_what(args, b, features="cls", transform="eval")
    return (
        collection(b, train, args, "train features", names_of(train, train_path),
                   store=dump and dump / "train", what=what),
        collection(b, val, args, "val features", names_of(val, val_path),
                   store=dump and dump / "val", what=what),
    )  # fmt: skip


def load_features(folder: str) -> tuple[Any, Any]:
    """Features dumped by ``dino knn --dump_features``, or by the reference's eval_knn.py
    (trainfeat.pth, testfeat.pth, trainlabels.pth, testlabels.pth)."""
    from pathlib import Path

    from dino.cli.backbone import load_collection
    from dino.eval.store import read_reference_knn_dump

    if (Path(folder) / "trainfeat.pth").exists():
        return read_reference_knn_dump(folder)
    return load_collection(folder, "train"), load_collection(folder, "val")
