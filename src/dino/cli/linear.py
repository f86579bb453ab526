"""``dino linear``: a linear classifier on frozen features (DINO section 4.1)."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import (
    add_backbone_flags,
    add_split_flags,
    non_negative_int,
    positive_float,
    positive_int,
)


def add(sub: Any) -> None:
    """The ``linear`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("linear", help="train a linear classifier on frozen features")
    add_backbone_flags(p)
    add_split_flags(p)
    p.add_argument(
        "--n_last_blocks", type=positive_int, default=4, help="[CLS] of this many last blocks"
    )
    p.add_argument(
        "--avgpool_patchtokens", action="store_true", help="append average-pooled patch tokens"
    )
    p.add_argument("--epochs", type=positive_int, default=100)
    p.add_argument(
        "--lr", type=positive_float, default=0.001, help="lr for a batch of 256 (scaled)"
    )
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--output_dir", default="output/linear", help="linear.pth and log.txt here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from dino.cli.backbone import open_backbone, open_folder
    from dino.data.transforms import eval_transform, linear_train_transform
    from dino.eval.features import feature_head
    from dino.eval.linear import train_linear
    from dino.progress import log

    b = open_backbone(args)
    train = open_folder(
        "--train_path", args.train_path, linear_train_transform(b.image_size), labelled=True
    )
    val = open_folder(
        "--val_path", args.val_path, eval_transform(b.image_size), True, train.classes
    )
    features = feature_head("lastn_cls", args.n_last_blocks, args.avgpool_patchtokens)
    result = train_linear(
        b.model,
        features,
        train,
        val,
        num_classes=len(train.classes),
        output_dir=args.output_dir,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        device=b.device,
        dtype=b.dtype,
        num_workers=args.num_workers,
        seed=args.seed,
        run_info={
            "n_last_blocks": args.n_last_blocks,
            "avgpool_patchtokens": args.avgpool_patchtokens,
            "classes": list(train.classes),
        },
    )
    five = f", top-5 {result.top5:.1f}%" if result.top5 is not None else ""
    log(
        f"linear probe: top-1 {result.top1:.1f}%{five} (best top-1 {result.best_top1:.1f}%); "
        f"classifier in {result.output_dir / 'linear.pth'}"
    )
