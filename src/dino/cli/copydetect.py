"""``dino copydetect``: copy detection mAP on an originals/copies layout, or near-duplicate
pairs (DINO section 4.2.2)."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import add_backbone_flags, positive_int


def add(sub: Any) -> None:
    """The ``copydetect`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("copydetect", help="copy detection: mAP on a layout, or near-duplicates")
    add_backbone_flags(p)
    p.add_argument("--data_path", required=True, help="originals/ + copies/ (or, --pairs, any)")
    p.add_argument("--whitening_path", default=None, help="other images to learn whitening on")
    p.add_argument(
        "--whitening_dim", type=positive_int, default=None, help="keep this many dimensions"
    )
    p.add_argument("--distractor_path", default=None, help="extra database images")
    p.add_argument("--pairs", action="store_true", help="list near-duplicate pairs instead")
    p.add_argument(
        "--threshold", type=float, default=0.7, help="--pairs: minimum whitened similarity"
    )
    p.add_argument("--output", default="pairs.csv", help="--pairs: CSV image_a,image_b,sim")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import torch.nn.functional as F
    from torch import Tensor

    from dino.cli.backbone import features_of, names_of, open_backbone, open_folder, write_csv
    from dino.data.folder import ImageList
    from dino.data.transforms import whole_image_transform
    from dino.errors import ConfigError, DataError
    from dino.eval.copydetect import (
        copy_detection_scores,
        fit_whitening,
        near_duplicate_pairs,
        read_copy_layout,
    )
    from dino.eval.features import feature_head
    from dino.progress import log, warn

    b = open_backbone(args)
    transform = whole_image_transform(b.image_size)
    learn = extra = None
    if args.whitening_path is not None:
        learn = open_folder("--whitening_path", args.whitening_path, transform)
    if args.distractor_path is not None:
        extra = open_folder("--distractor_path", args.distractor_path, transform)
    if args.pairs:
        images = open_folder("--data_path", args.data_path, transform)
    else:
        try:
            layout = read_copy_layout(args.data_path)
        except FileNotFoundError as e:
            raise ConfigError(f"--data_path: {e}") from None
    head = feature_head("cls_gem")

    def raw(images: ImageList, desc: str, complete: bool = False) -> tuple[Tensor, ImageList]:
        x, kept = features_of(b, images, args, desc, head)
        if complete and len(kept) < len(images):
            raise DataError(f"--data_path: every image of {desc} must be readable")
        return F.normalize(x, dim=1), kept

    whitening = None
    if learn is not None:
        whitening = fit_whitening(raw(learn, "whitening features")[0], args.whitening_dim)
        log(f"PCA whitening learned on {len(learn)} images: {whitening.dim} dimensions kept")
    else:
        warn(
            "no --whitening_path: descriptors are not whitened, so unrelated images look alike "
            "(similarities near 1) and thresholds mean little"
        )

    def describe(images: ImageList, desc: str, complete: bool = False) -> tuple[Tensor, ImageList]:
        x, kept = raw(images, desc, complete)
        return (whitening(x) if whitening is not None else x), kept

    if args.pairs:
        x, images = describe(images, "features")
        pairs = near_duplicate_pairs(x, args.threshold)
        names = names_of(images, args.data_path)
        rows = [(names[i], names[j], f"{s:.6f}") for i, j, s in pairs]
        write_csv(args.output, ["image_a", "image_b", "similarity"], rows)
        log(f"{len(pairs)} pairs with similarity >= {args.threshold} -> {args.output}")
        for a, c, sim in rows[:5]:
            log(f"  {sim}  {a}  {c}")
        return
    originals = describe(ImageList(layout.originals, transform=transform), "originals", True)[0]
    copies = describe(ImageList(layout.copies, transform=transform), "copies", True)[0]
    distractors = describe(extra, "distractors")[0] if extra is not None else None
    scores = copy_detection_scores(copies, originals, layout.copy_of, distractors)
    n_db = len(originals) + (len(distractors) if distractors is not None else 0)
    log(
        f"copy detection: {len(copies)} copies against {n_db} database images; "
        f"mAP {scores.mean_ap:.2f}, P@1 {scores.mean_precision[1]:.2f} "
        f"(P@1 by chance: {100 / n_db:.1f})"
    )
