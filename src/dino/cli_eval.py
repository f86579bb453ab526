"""The evaluation subcommands of ``dino``: knn, linear, embed, retrieve, copydetect, attention.

Every command loads its backbone the same way (``add_backbone_flags`` / ``open_backbone``)
and extracts features through ``dino.eval.features.extract_features``. User errors raise
ConfigError or CheckpointError, which ``dino.cli.main`` prints as one line (exit 2).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from dino.config import DEVICES, PRECISIONS, ConfigError
from dino.data.demo import demo_splits, save_demo_folders
from dino.data.folder import ImageList, image_folder, labelled_folder
from dino.data.images import BadImageError, load_rgb
from dino.data.transforms import eval_transform, linear_train_transform, whole_image_transform
from dino.distributed import init_distributed, is_main_process, local_device
from dino.errors import DataError
from dino.eval.attention import attention_input, cls_attention, save_attention_maps
from dino.eval.copydetect import (
    copy_detection_scores,
    fit_whitening,
    near_duplicate_pairs,
    read_copy_layout,
)
from dino.eval.embed import write_embeddings
from dino.eval.features import (
    FeatureFn,
    cls_features,
    extract_features,
    feature_head,
    multiscale,
)
from dino.eval.knn import knn_classify
from dino.eval.linear import train_linear
from dino.eval.load import describe_backbone, load_backbone, native_image_size, patch_multiple
from dino.eval.metrics import REVISITED_SPLITS, Relevance, retrieval_scores
from dino.eval.retrieval import (
    NameIndex,
    rank_database,
    read_ground_truth,
    read_revisited,
    revisited_images,
)
from dino.hardware import autocast_dtype, resolve_device, resolve_precision
from dino.progress import log, warn

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


def add_backbone_flags(parser: argparse.ArgumentParser, loader: bool = True) -> None:
    """The flags every evaluation command shares: checkpoint, architecture, hardware, size."""
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
    g.add_argument("--device", default="auto", choices=DEVICES)
    g.add_argument("--precision", default="auto", choices=PRECISIONS)
    g.add_argument(
        "--image_size",
        type=positive_int,
        default=None,
        help="input side in pixels (default: the size the checkpoint was trained at)",
    )
    if loader:
        g.add_argument(
            "--batch_size", type=positive_int, default=128, help="images per forward pass"
        )
        g.add_argument(
            "--num_workers", type=non_negative_int, default=2, help="data-loading processes"
        )


def add_split_flags(parser: argparse.ArgumentParser) -> None:
    """--train_path and --val_path: labelled folders, one subfolder per class."""
    parser.add_argument("--train_path", required=True, help="labelled folder: <class>/<images>")
    parser.add_argument("--val_path", required=True, help="labelled folder, same class names")


@dataclass(frozen=True)
class Backbone:
    """A loaded backbone and how to run it."""

    model: nn.Module
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None: fp32
    image_size: int


def open_backbone(args: argparse.Namespace) -> Backbone:
    """Load ``--checkpoint`` strictly onto ``--device``; say what was built."""
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    init_distributed(device.type)  # under torchrun: each process extracts its share
    device = local_device(device.type)
    model = load_backbone(
        args.checkpoint, args.checkpoint_key, args.arch, args.patch_size, args.trust_checkpoint
    )
    size = args.image_size or native_image_size(model)
    if size % (multiple := patch_multiple(model)):
        raise ConfigError(f"image_size: expected a multiple of {multiple} (patch size), got {size}")
    log(
        f"{args.checkpoint} [{args.checkpoint_key}]: {describe_backbone(model)}; "
        f"{device.type} {precision}, inputs {size} px"
    )
    return Backbone(model.to(device), device, autocast_dtype(precision), size)


def features_of(
    b: Backbone,
    dataset: ImageList,
    args: argparse.Namespace,
    desc: str,
    features: FeatureFn = cls_features,
) -> tuple[Tensor, ImageList]:
    """Features (M, D) of the readable images of ``dataset``, and ``dataset`` narrowed to them.

    Files that cannot be decoded are reported once and left out, with their labels.
    """
    try:
        out = extract_features(
            b.model, dataset, b.device, args.batch_size, args.num_workers, b.dtype, features, desc
        )
    except BadImageError as e:
        raise DataError(f"{desc}: {e}") from None
    if out.skipped:
        shown = "; ".join(out.skipped[:5]) + (" ..." if len(out.skipped) > 5 else "")
        warn(f"{desc}: left out {len(out.skipped)} unreadable image(s): {shown}")
        return out.features, dataset.subset(out.index.tolist())
    return out.features, dataset


def open_folder(
    flag: str,
    path: str,
    transform: Callable[[Image.Image], Any],
    labelled: bool = False,
    classes: Sequence[str] | None = None,
) -> ImageList:
    """An image folder (labelled: one subfolder per class); problems name the flag."""
    try:
        if labelled:
            return labelled_folder(path, transform, classes)
        return image_folder(path, transform)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{flag}: {e}") from None


def names_of(dataset: ImageList, root: str) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in dataset.images]  # type: ignore[arg-type]


# --- knn ---------------------------------------------------------------------------------


def cmd_knn(args: argparse.Namespace) -> None:
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


# --- linear ------------------------------------------------------------------------------


def cmd_linear(args: argparse.Namespace) -> None:
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
        len(train.classes),
        args.output_dir,
        args.epochs,
        args.lr,
        args.batch_size,
        b.device,
        b.dtype,
        args.num_workers,
        args.seed,
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


# --- embed -------------------------------------------------------------------------------


def cmd_embed(args: argparse.Namespace) -> None:
    b = open_backbone(args)
    images = open_folder("--data_path", args.data_path, eval_transform(b.image_size))
    x, images = features_of(b, images, args, "features", feature_head(args.features))
    if not is_main_process():
        return
    paths = write_embeddings(args.output, x, names_of(images, args.data_path))
    log(f"{x.shape[0]} x {x.shape[1]} {args.features} features -> {paths[0]} (names: {paths[1]})")


# --- retrieve ----------------------------------------------------------------------------


def cmd_retrieve(args: argparse.Namespace) -> None:
    b = open_backbone(args)
    transform = whole_image_transform(b.image_size)
    features = feature_head(args.features)
    if args.multiscale:
        features = multiscale(features, multiple=patch_multiple(b.model))
    truths: dict[str, dict[int, Relevance]] = {}
    if args.ground_truth is not None and args.ground_truth.endswith(".pkl"):
        revisited = read_revisited(args.ground_truth)
        try:
            queries, database = revisited_images(
                revisited, args.database_path, args.query_path or args.database_path, transform
            )
        except FileNotFoundError as e:
            raise DataError(f"--database_path / --query_path: {e}") from None
        query_x, kept_q = features_of(b, queries, args, "query features", features)
        db_x, kept_db = features_of(b, database, args, "database features", features)
        if len(kept_q) < len(queries) or len(kept_db) < len(database):
            raise DataError("--ground_truth: the revisited protocol needs every listed image")
        query_names, db_names = revisited.qimlist, revisited.imlist
        truths = {split: revisited.relevance(split) for split in REVISITED_SPLITS}
    else:
        if args.query_path is None:
            raise ConfigError("query_path: required (except with a revisited gnd_*.pkl)")
        queries = open_folder("--query_path", args.query_path, transform)
        database = open_folder("--database_path", args.database_path, transform)
        query_x, queries = features_of(b, queries, args, "query features", features)
        db_x, database = features_of(b, database, args, "database features", features)
        query_names = names_of(queries, args.query_path)
        db_names = names_of(database, args.database_path)
        if args.ground_truth is not None:
            truths["all"] = read_ground_truth(
                args.ground_truth,
                NameIndex(query_names, args.query_path),
                NameIndex(db_names, args.database_path),
            )
    sims, ranking = rank_database(query_x, db_x)
    write_rankings(args.output, sims, ranking, query_names, db_names, args.top)
    log(f"ranked {len(db_names)} database images for {len(query_names)} queries -> {args.output}")
    for split, truth in truths.items():
        scores = retrieval_scores(ranking.numpy(), truth, args.ks)
        mp = "  ".join(f"mP@{k} {v:.2f}" for k, v in scores.mean_precision.items())
        log(f"  {split:<7s} mAP {scores.mean_ap:.2f}  {mp}  ({scores.n_queries} queries)")


def write_rankings(
    path: str,
    sims: Tensor,
    ranking: Tensor,
    query_names: Sequence[str],
    db_names: Sequence[str],
    top: int,
) -> None:
    """CSV rows query,rank,item,similarity for the ``top`` best items of every query."""
    best, scores = ranking[:, :top].tolist(), sims[:, :top].tolist()
    rows = [
        (name, r + 1, db_names[i], f"{s:.6f}")
        for name, items, sim in zip(query_names, best, scores, strict=True)
        for r, (i, s) in enumerate(zip(items, sim, strict=True))
    ]
    write_csv(path, ["query", "rank", "item", "similarity"], rows)


# --- copydetect --------------------------------------------------------------------------


def cmd_copydetect(args: argparse.Namespace) -> None:
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


def write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if not is_main_process():
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows(rows)


# --- attention ---------------------------------------------------------------------------


def cmd_attention(args: argparse.Namespace) -> None:
    b = open_backbone(args)
    try:
        image = load_rgb(args.image)
    except (OSError, ValueError) as e:
        raise DataError(f"--image: cannot read {args.image} ({e})") from None
    x = attention_input(image, patch_multiple(b.model), b.image_size)
    maps = cls_attention(b.model, x.to(b.device)).cpu()  # (heads, h, w)
    if not is_main_process():
        return
    paths = save_attention_maps(image, maps, args.output_dir, args.threshold, args.interpolation)
    log(
        f"{maps.shape[0]} heads on a {maps.shape[1]}x{maps.shape[2]} patch grid: {len(paths)} "
        f"PNGs of {image.width}x{image.height} px in {args.output_dir}"
    )


# --- demo-data ---------------------------------------------------------------------------


def cmd_demo_data(args: argparse.Namespace) -> None:
    folders = save_demo_folders(demo_splits(args.n_train, args.n_val, args.seed), args.out_dir)
    log(f"demo data: {args.n_train} images in {folders['train']}, {args.n_val} in {folders['val']}")


# --- the parsers -------------------------------------------------------------------------


def add_eval_commands(sub: Any) -> None:
    """Add the evaluation subcommands to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("knn", help="weighted k-NN classification on [CLS] features")
    add_backbone_flags(p)
    add_split_flags(p)
    p.add_argument(
        "--nb_knn", type=positive_int, nargs="+", default=[10, 20, 100, 200], metavar="K"
    )
    p.add_argument(
        "--temperature", type=positive_float, default=0.07, help="vote weight exp(sim / T)"
    )
    p.set_defaults(func=cmd_knn)

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
    p.set_defaults(func=cmd_linear)

    p = sub.add_parser("embed", help="write the features of every image of a folder")
    add_backbone_flags(p)
    p.add_argument("--data_path", required=True, help="folder of images, searched recursively")
    p.add_argument("--output", required=True, help="FILE.npy; the image names go to FILE.txt")
    p.add_argument("--features", default="cls", choices=POOLED_FEATURES)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("retrieve", help="rank a database folder for query images")
    add_backbone_flags(p)
    p.add_argument("--query_path", default=None, help="folder of query images")
    p.add_argument("--database_path", required=True, help="folder of database images")
    p.add_argument(
        "--ground_truth", default=None, help="JSON, CSV or revisited gnd_*.pkl (see README)"
    )
    p.add_argument("--features", default="cls", choices=POOLED_FEATURES)
    p.add_argument("--multiscale", action="store_true", help="average scales 1, 1/sqrt 2, 1/2")
    p.add_argument("--output", default="ranking.csv", help="CSV query,rank,item,similarity")
    p.add_argument("--top", type=positive_int, default=100, help="database items written per query")
    p.add_argument("--ks", type=positive_int, nargs="+", default=[1, 5, 10], help="k of mP@k")
    p.set_defaults(func=cmd_retrieve)

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
    p.set_defaults(func=cmd_copydetect)

    p = sub.add_parser("attention", help="PNG maps of the last block's [CLS] attention")
    add_backbone_flags(p, loader=False)
    p.add_argument("--image", required=True, help="an image file of any size")
    p.add_argument("--output_dir", default="attention", help="where the PNGs go")
    p.add_argument("--threshold", type=float, default=0.6, help="mass kept by the masks")
    p.add_argument("--interpolation", default="bilinear", choices=["nearest", "bilinear"])
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("demo-data", help="write the demo's labelled images to a folder")
    p.add_argument("out_dir", help="gets train/<class>/*.png and val/<class>/*.png")
    p.add_argument("--n_train", type=positive_int, default=2500)
    p.add_argument("--n_val", type=positive_int, default=1000)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=cmd_demo_data)
