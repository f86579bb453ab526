"""Time and peak memory of weighted k-NN on random features (a benchmark: it prints).

    PYTHONPATH=src python benchmarks/knn_bench.py [--train 100000] [--queries 10000] [--dim 384]

Peak memory is the process's maximum resident set size (ru_maxrss), before and after the
k-NN, so the features' own size can be told apart from what the k-NN adds.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from dino.eval.knn import knn_classify


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train = torch.randn(args.train, args.dim)
    train_labels = torch.randint(0, args.classes, (args.train,))
    queries = torch.randn(args.queries, args.dim)
    query_labels = torch.randint(0, args.classes, (args.queries,))
    before = peak_rss_gib()
    start = time.perf_counter()
    results = knn_classify(train, train_labels, queries, query_labels)
    elapsed = time.perf_counter() - start
    print(
        f"k-NN {args.train} train x {args.queries} queries x {args.dim} dims, "
        f"{args.classes} classes, k = {', '.join(str(r.k) for r in results)}, "
        f"{torch.get_num_threads()} threads: {elapsed:.1f} s; peak RSS {peak_rss_gib():.2f} GiB "
        f"({before:.2f} GiB with the features alone)"
    )


if __name__ == "__main__":
    main()
