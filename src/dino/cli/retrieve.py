"""``dino retrieve``: rank a database for query images; mAP with a ground truth (DINO 4.2.1)."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import POOLED_FEATURES, add_backbone_flags, positive_int


def add(sub: Any) -> None:
    """The ``retrieve`` subcommand of ``sub`` (an argparse subparsers action)."""
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from dino.cli.backbone import features_of, names_of, open_backbone, open_folder, write_rankings
    from dino.data.transforms import whole_image_transform
    from dino.errors import ConfigError, DataError
    from dino.eval.features import feature_head, multiscale
    from dino.eval.load import patch_multiple
    from dino.eval.metrics import REVISITED_SPLITS, Relevance, retrieval_scores
    from dino.eval.retrieval import (
        NameIndex,
        rank_database,
        read_ground_truth,
        read_revisited,
        revisited_images,
    )
    from dino.progress import log

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
