"""``dino copydetect``: copy detection mAP on an originals/copies layout, or near-duplicate
pairs (DINO section 4.2.2)."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import WHITENINGS, add_backbone_flags, add_store_flags, positive_int

REFERENCE_SIZE = 320  # the reference's --imsize for copy detection, with 224-px weights


def add(sub: Any) -> None:
    """The ``copydetect`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("copydetect", help="copy detection: mAP on a layout, or near-duplicates")
    size_help = (
        "square input side (default: the reference's 320 for weights trained at 224 px, "
        "scaled for others, e.g. 48 for 32-px weights with patch 8)"
    )
    add_backbone_flags(p, image_size=(None, size_help), checkpoint_required=False)
    p.add_argument("--data_path", required=True, help="originals/ + copies/ (or, --pairs, any)")
    p.add_argument("--whitening_path", default=None, help="other images to learn whitening on")
    p.add_argument(
        "--whitening",
        default="reference",
        choices=WHITENINGS,
        help="reference: raw descriptors, uncentred second moment, eigenvalues floored at "
        "1e-5 of the largest; normalized: L2 first, covariance, small directions dropped",
    )
    p.add_argument(
        "--whitening_dim", type=positive_int, default=None, help="keep this many dimensions"
    )
    p.add_argument(
        "--distractor_path",
        "--distractors_path",
        dest="distractor_path",
        default=None,
        help="extra database images",
    )
    p.add_argument("--pairs", action="store_true", help="list near-duplicate pairs instead")
    p.add_argument(
        "--threshold", type=float, default=0.7, help="--pairs: minimum whitened similarity"
    )
    p.add_argument(
        "--neighbours",
        type=positive_int,
        default=10,
        help="--pairs: each image is compared with its this many most similar (k-NN graph)",
    )
    p.add_argument("--output", default="pairs.csv", help="--pairs: CSV image_a,image_b,sim")
    add_store_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from dino.cli.backbone import write_csv
    from dino.cli.outputs import writable_file, writable_folder
    from dino.errors import ConfigError, DataError
    from dino.eval.copydetect import (
        copy_detection_scores,
        fit_whitening,
        near_duplicate_pairs,
        read_copy_layout,
    )
    from dino.eval.search import l2_normalize
    from dino.progress import log, warn

    if args.pairs:  # outputs are checked before any work
        writable_file("--output", args.output, {"--checkpoint": args.checkpoint})
    if args.dump_features is not None:
        writable_folder("--dump_features", args.dump_features)
    layout = None
    if not args.pairs:
        try:
            layout = read_copy_layout(args.data_path, args.follow_links)
        except FileNotFoundError as e:
            raise ConfigError(f"--data_path: {e}") from None
    describe = Descriptors(args, layout)
    prepare = l2_normalize
    if (learn := describe.of("whitening", args.whitening_path)) is not None:
        prepare = fit_whitening(learn.tensor(), args.whitening_dim, args.whitening)
        log(
            f"PCA whitening ({args.whitening}) learned on {len(learn)} images: "
            f"{prepare.dim} dimensions kept"
        )
    else:
        warn(
            "no --whitening_path: descriptors are not whitened, so unrelated images look alike "
            "(similarities near 1) and thresholds mean little"
        )
    if args.pairs:
        images = describe.of("images", args.data_path)
        assert images is not None
        pairs = near_duplicate_pairs(
            images.blocks, args.threshold, args.neighbours, args.index, prepare
        )
        rows = [(images.names[i], images.names[j], f"{s:.6f}") for i, j, s in pairs]
        write_csv(args.output, ["image_a", "image_b", "similarity"], rows)
        log(f"{len(pairs)} pairs with similarity >= {args.threshold} -> {args.output}")
        for a, c, sim in rows[:5]:
            log(f"  {sim}  {a}  {c}")
        return
    assert layout is not None
    originals, copies = describe.of("originals"), describe.of("copies")
    assert originals is not None and copies is not None
    if len(originals) < len(layout.originals) or len(copies) < len(layout.copies):
        raise DataError("--data_path: every original and copy must be readable")
    distractors = describe.of("distractors", args.distractor_path)
    extra = distractors.blocks if distractors is not None else None
    scores = copy_detection_scores(
        copies.tensor(), originals.tensor(), layout.copy_of, extra, index=args.index,
        prepare=prepare,
    )  # fmt: skip
    n_db = len(originals) + (len(distractors) if distractors is not None else 0)
    log(
        f"copy detection: {len(copies)} copies against {n_db} database images; "
        f"mAP {scores.mean_ap:.2f}, P@1 {scores.mean_precision[1]:.2f} "
        f"(P@1 by chance: {100 / n_db:.1f})"
    )


class Descriptors:
    """Raw [CLS] + GeM descriptors of each collection of the command, extracted (into
    --dump_features DIR/<name>) or read from --load_features DIR/<name>."""

    def __init__(self, args: argparse.Namespace, layout: Any) -> None:
        self.args, self.layout = args, layout
        self.b: Any = None

    def of(self, name: str, folder: str | None = None) -> Any:
        from pathlib import Path

        from dino.cli.backbone import collection, load_collection, names_of, open_folder
        from dino.data.folder import ImageList

        args = self.args
        if args.load_features is not None:
            stored = Path(args.load_features) / name
            return load_collection(args.load_features, name) if stored.exists() else None
        if name in ("originals", "copies"):
            files = getattr(self.layout, name)
            images = ImageList(files, transform=self.transform())
            names = [Path(f).relative_to(args.data_path).as_posix() for f in files]
        elif folder is None:
            return None
        else:
            images = open_folder(
                f"--{name}_path", folder, self.transform(), follow_links=args.follow_links
            )
            names = names_of(images, folder)
        b, dump = self.backbone(), args.dump_features
        return collection(b, images, args, f"{name} descriptors", names, self.head(),
                          Path(dump) / name if dump else None, self.what())  # fmt: skip

    def backbone(self) -> Any:
        from dino.cli.backbone import open_backbone

        if self.b is None:
            self.b = open_backbone(self.args, any_size=True, default_size=self._size)
        return self.b

    def _size(self, model: Any) -> int:
        """The reference's 320 px for a 224-px backbone, in proportion for others."""
        from dino.eval.load import native_image_size, patch_multiple

        patch = patch_multiple(model)
        return max(patch, round(native_image_size(model) * REFERENCE_SIZE / 224 / patch) * patch)

    def transform(self) -> Any:
        from dino.data.transforms import whole_image_transform

        return whole_image_transform(self.backbone().image_size)

    def head(self) -> Any:
        from dino.eval.features import feature_head

        return feature_head("cls_gem")

    def what(self) -> dict[str, Any]:
        from dino.cli.backbone import store_what

        return store_what(self.args, self.backbone(), features="cls_gem", resize="square")
