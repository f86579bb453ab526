"""``dino retrieve``: rank a database for query images; mAP with a ground truth (DINO 4.2.1)."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import (
    MULTISCALE_SIZES,
    POOLED_FEATURES,
    add_backbone_flags,
    add_store_flags,
    bool_flag,
    positive_int,
)


def add(sub: Any) -> None:
    """The ``retrieve`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("retrieve", help="rank a database folder for query images")
    add_backbone_flags(p, checkpoint_required=False)
    p.add_argument("--query_path", default=None, help="folder of query images")
    p.add_argument("--database_path", default=None, help="folder of database images")
    p.add_argument(
        "--ground_truth", default=None, help="JSON, CSV or revisited gnd_*.pkl (see README)"
    )
    p.add_argument(
        "--data_path",
        default=None,
        help="the reference's layout: DIR/<dataset>/jpg and DIR/<dataset>/gnd_<dataset>.pkl",
    )
    p.add_argument("--dataset", default=None, help="with --data_path: roxford5k, rparis6k, ...")
    p.add_argument("--features", default="cls", choices=POOLED_FEATURES)
    p.add_argument(
        "--resize",
        default="thumbnail",
        choices=["thumbnail", "square"],
        help="thumbnail: long side --image_size, aspect kept (the reference's); square: the "
        "whole image squashed to --image_size x --image_size",
    )
    p.add_argument(
        "--multiscale",
        nargs="?",
        const=True,
        default=False,
        type=bool_flag,
        metavar="BOOL",
        help="average scales 1, 1/sqrt 2, 1/2",
    )
    p.add_argument(
        "--multiscale_sizes",
        default="factor",
        choices=MULTISCALE_SIZES,
        help="factor: sides x scale, the ViT drops the partial patch (the reference's); "
        "patch: sides rounded to whole patches",
    )
    p.add_argument(
        "--crop_queries",
        nargs="?",
        const=True,
        default=False,
        type=bool_flag,
        metavar="BOOL",
        help="revisited Oxford / Paris: crop queries to their box (the reference's DINO "
        "script does not)",
    )
    p.add_argument("--output", default="ranking.csv", help="CSV query,rank,item,similarity")
    p.add_argument("--top", type=positive_int, default=100, help="database items written per query")
    p.add_argument("--ks", type=positive_int, nargs="+", default=[1, 5, 10], help="k of mP@k")
    add_store_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import torch

    from dino.cli.backbone import write_rankings
    from dino.eval.metrics import merge_scores, retrieval_scores
    from dino.eval.retrieval import ranked_blocks
    from dino.eval.search import search
    from dino.progress import log

    resolve_reference_layout(args)
    check_outputs(args)
    queries, database, truths = collections(args)
    q, db = queries.tensor(), database.blocks
    if not truths:
        sims, ranking = search(q, db, args.top, args.index)
    else:  # exact mAP needs whole rankings: a few queries at a time
        tops = []
        parts: dict[str, list[Any]] = {split: [] for split in truths}
        for start, block_sims, block_ranking in ranked_blocks(q, db):
            tops.append((block_sims[:, : args.top], block_ranking[:, : args.top]))
            rows = range(start, start + block_ranking.shape[0])
            for split, truth in truths.items():
                mine = {r - start: truth[r] for r in rows if r in truth}
                parts[split].append(retrieval_scores(block_ranking.numpy(), mine, args.ks))
        sims, ranking = torch.cat([s for s, _ in tops]), torch.cat([r for _, r in tops])
    write_rankings(args.output, sims, ranking, queries.names, database.names, args.top)
    log(f"ranked {len(database)} database images for {len(queries)} queries -> {args.output}")
    for split in truths:
        scores = merge_scores(parts[split])
        mp = "  ".join(f"mP@{k} {v:.2f}" for k, v in scores.mean_precision.items())
        log(f"  {split:<7s} mAP {scores.mean_ap:.2f}  {mp}  ({scores.n_queries} queries)")


def resolve_reference_layout(args: argparse.Namespace) -> None:
    """--data_path DIR --dataset NAME (the reference's flags) -> the folder and ground truth."""
    from pathlib import Path

    from dino.errors import ConfigError

    if (args.data_path is None) != (args.dataset is None):
        raise ConfigError("--data_path / --dataset: give both (DIR/<dataset>/jpg is read)")
    if args.data_path is None:
        return
    if args.database_path is not None or args.ground_truth is not None:
        raise ConfigError("--data_path: replaces --database_path and --ground_truth")
    root = Path(args.data_path) / args.dataset
    args.database_path = str(root / "jpg")
    args.ground_truth = str(root / f"gnd_{args.dataset}.pkl")


def check_outputs(args: argparse.Namespace) -> None:
    """--output (neither the ground truth nor the checkpoint) and --dump_features must be
    writable: said before any work."""
    from dino.cli.outputs import writable_file, writable_folder

    inputs = {"--ground_truth": args.ground_truth, "--checkpoint": args.checkpoint}
    writable_file("--output", args.output, inputs)
    if args.dump_features is not None:
        writable_folder("--dump_features", args.dump_features)


def collections(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """Query and database features and the ground truth per split ({} without one)."""
    from pathlib import Path

    from dino.cli.backbone import (
        collection,
        load_collection,
        names_of,
        open_backbone,
        open_folder,
        store_what,
    )
    from dino.data.transforms import thumbnail_transform, whole_image_transform
    from dino.errors import ConfigError, DataError
    from dino.eval.features import feature_head, multiscale
    from dino.eval.load import patch_multiple
    from dino.eval.metrics import REVISITED_SPLITS
    from dino.eval.retrieval import (
        NameIndex,
        match_ground_truth,
        parse_ground_truth,
        read_revisited,
        revisited_images,
    )

    revisited, entries = None, None  # ground truth read (and checked) before any work
    if args.ground_truth is not None and args.ground_truth.endswith(".pkl"):
        revisited = read_revisited(args.ground_truth)
    elif args.query_path is None and args.load_features is None:
        raise ConfigError("--query_path: required (except with a revisited gnd_*.pkl)")
    elif args.ground_truth is not None:
        entries = parse_ground_truth(args.ground_truth)
    if args.load_features is not None:
        queries = load_collection(args.load_features, "queries")
        database = load_collection(args.load_features, "database")
    else:
        if args.database_path is None:
            raise ConfigError("--database_path: required (or --data_path and --dataset)")
        b = open_backbone(args, any_size=True)
        resize = thumbnail_transform if args.resize == "thumbnail" else whole_image_transform
        transform = resize(b.image_size)
        features = feature_head(args.features)
        if args.multiscale:
            features = multiscale(features, multiple=patch_multiple(b.model),
                                  sizes=args.multiscale_sizes)  # fmt: skip
        what = store_what(args, b, features=args.features, resize=args.resize,
                          multiscale=args.multiscale, sizes=args.multiscale_sizes,
                          crop_queries=args.crop_queries)  # fmt: skip
        dump = Path(args.dump_features) if args.dump_features else None
        if revisited is not None:
            try:
                qs, db = revisited_images(
                    revisited, args.database_path, args.query_path or args.database_path,
                    transform, args.crop_queries, args.follow_links,
                )  # fmt: skip
            except FileNotFoundError as e:
                raise DataError(f"--database_path / --query_path: {e}") from None
            q_names, db_names = revisited.qimlist, revisited.imlist
        else:
            links = args.follow_links
            qs = open_folder("--query_path", args.query_path, transform, follow_links=links)
            db = open_folder("--database_path", args.database_path, transform, follow_links=links)
            q_names, db_names = names_of(qs, args.query_path), names_of(db, args.database_path)
        queries = collection(b, qs, args, "query features", q_names, features,
                             dump and dump / "queries", what)  # fmt: skip
        database = collection(b, db, args, "database features", db_names, features,
                              dump and dump / "database", what)  # fmt: skip
    if revisited is not None:
        if queries.names != revisited.qimlist or database.names != revisited.imlist:
            raise DataError("--ground_truth: the revisited protocol needs every listed image")
        return queries, database, {s: revisited.relevance(s) for s in REVISITED_SPLITS}
    if entries is None:
        return queries, database, {}
    q_root = args.query_path or "queries"
    truth = match_ground_truth(
        entries,
        args.ground_truth,
        NameIndex(queries.names, q_root),
        NameIndex(database.names, args.database_path or "database"),
    )
    return queries, database, {"all": truth}
