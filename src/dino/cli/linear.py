"""``dino linear``: a linear classifier on frozen features (DINO section 4.1); with
``--evaluate --pretrained_linear FILE``, the accuracy of a trained one (the reference's
published ``*_linearweights.pth`` or our ``linear.pth``) on the validation split."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import (
    INTERPOLATIONS,
    LR_SCHEDULES,
    add_backbone_flags,
    add_split_flags,
    bool_flag,
    non_negative_int,
    positive_float,
    positive_int,
    split_paths,
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
        "--avgpool_patchtokens",
        nargs="?",
        const=True,
        default=False,
        type=bool_flag,
        metavar="BOOL",
        help="add the average-pooled patch tokens (the ViT-B setting, with --n_last_blocks 1)",
    )
    p.add_argument("--epochs", type=positive_int, default=100)
    p.add_argument(
        "--lr", type=positive_float, default=0.001, help="lr for a batch of 256 (scaled)"
    )
    p.add_argument(
        "--lr_schedule",
        default="epoch",
        choices=LR_SCHEDULES,
        help="cosine stepped once per epoch (the reference's) or at every iteration",
    )
    p.add_argument(
        "--train_interpolation",
        default="bilinear",
        choices=INTERPOLATIONS,
        help="of the RandomResizedCrop of the training images (the reference's: bilinear)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--output_dir", default="output/linear", help="linear.pth and log.txt here")
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="no training: report top-1 / top-5 of --pretrained_linear on --val_path",
    )
    p.add_argument(
        "--pretrained_linear",
        metavar="FILE",
        default=None,
        help="a trained classifier: the reference's *_linearweights.pth or a linear.pth",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from dino.errors import ConfigError

    if args.evaluate:
        evaluate(args)
        return
    if args.pretrained_linear is not None:
        raise ConfigError("--pretrained_linear: read with --evaluate only")
    train(args)


def train(args: argparse.Namespace) -> None:
    from dino.cli.backbone import open_backbone, open_folder
    from dino.cli.outputs import writable_folder
    from dino.data.transforms import eval_transform, linear_train_transform
    from dino.eval.features import feature_head
    from dino.eval.linear import train_linear
    from dino.progress import log

    train_path, val_path = split_paths(args)
    writable_folder("--output_dir", args.output_dir)  # said before any work
    b = open_backbone(args, any_channels=True)
    crops = linear_train_transform(b.image_size, args.train_interpolation, b.channels)
    kept = {"channels": b.channels, "follow_links": args.follow_links}
    train = open_folder("--train_path", str(train_path), crops, True, **kept)
    transform = eval_transform(b.image_size, b.channels)
    val = open_folder("--val_path", val_path, transform, True, train.classes, **kept)
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
        lr_schedule=args.lr_schedule,
        run_info={
            "n_last_blocks": args.n_last_blocks,
            "avgpool_patchtokens": args.avgpool_patchtokens,
            "lr_schedule": args.lr_schedule,
            "train_interpolation": args.train_interpolation,
            "classes": list(train.classes),
        },
    )
    five = f", top-5 {result.top5:.1f}%" if result.top5 is not None else ""
    log(
        f"linear probe: top-1 {result.top1:.1f}%{five} (best top-1 {result.best_top1:.1f}%); "
        f"classifier in {result.output_dir / 'linear.pth'}"
    )


def evaluate(args: argparse.Namespace) -> None:
    """Accuracy of ``--pretrained_linear`` on ``--val_path``. Without recorded class names
    (the reference's files), label i is the i-th class folder in sorted order, as in
    torchvision's ImageFolder, so the folder must hold every class of the classifier."""
    import torch

    from dino.cli.backbone import features_of, open_backbone, open_folder
    from dino.data.transforms import eval_transform
    from dino.errors import ConfigError
    from dino.eval.features import feature_head
    from dino.eval.linear import evaluate_linear, load_linear_head
    from dino.progress import log

    if args.pretrained_linear is None:
        raise ConfigError("--evaluate: give the classifier with --pretrained_linear FILE")
    _, val_path = split_paths(args, need_train=False)
    head = load_linear_head(args.pretrained_linear, args.trust_checkpoint)
    dim, outputs = head.classifier.linear.in_features, head.classifier.linear.out_features
    b = open_backbone(args, any_channels=True)
    transform = eval_transform(b.image_size, b.channels)
    kept = {"channels": b.channels, "follow_links": args.follow_links}
    val = open_folder("--val_path", val_path, transform, True, head.classes, **kept)
    if head.classes is None and len(val.classes) != outputs:
        raise ConfigError(
            f"--val_path: {len(val.classes)} class folders, but {args.pretrained_linear} has "
            f"{outputs} outputs; without recorded class names output i is the i-th folder "
            "in sorted order, so the folder needs all of them"
        )
    features = feature_head("lastn_cls", args.n_last_blocks, args.avgpool_patchtokens)
    with torch.no_grad():  # one blank image tells the feature width before the long pass
        blank = torch.zeros(1, 3, b.image_size, b.image_size, device=b.device)
        width = features(b.model, blank).shape[1]
    if width != dim:
        raise ConfigError(
            f"--pretrained_linear: the classifier reads {dim} features, --n_last_blocks "
            f"{args.n_last_blocks} --avgpool_patchtokens {str(args.avgpool_patchtokens).lower()} "
            f"gives {width} (the reference's heads: ViT-S --n_last_blocks 4; ViT-B "
            "--n_last_blocks 1 --avgpool_patchtokens true)"
        )
    x, val = features_of(b, val, args, "val features", features)
    top1, top5 = evaluate_linear(head.classifier.to(b.device), x, torch.tensor(val.labels))
    five = f", top-5 {top5:.1f}%" if top5 is not None else ""
    log(f"{args.pretrained_linear} on {len(val)} val images: top-1 {top1:.1f}%{five}")
