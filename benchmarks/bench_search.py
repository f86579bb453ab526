"""Search at the scale of real collections: time and peak memory (a benchmark: it prints).

    python benchmarks/bench_search.py            # both targets, flat and (if installed) faiss
    python benchmarks/bench_search.py --database 100000 --pairs_n 20000   # a quick run

1. Retrieval: 1,000 queries against 1,000,000 random 384-d features, the 100 most
   cosine-similar per query (``dino.eval.search``), with ``--index flat`` (exact, in blocks)
   and ``--index faiss``; target: peak memory under 4 GiB.
2. Near-duplicate pairs: 200,000 random 384-d features of which 1,000 are planted copies
   (another row plus noise, cosine about 0.99): the k-NN graph (10 neighbours) at threshold
   0.9 (``near_duplicate_pairs``); target: every planted pair found.

Each measurement runs in a process of its own, so that its peak resident memory (ru_maxrss,
features included) is its own; the features alone are reported beside it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def random_features(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g)


def retrieval(args: argparse.Namespace, index: str) -> dict[str, float]:
    from dino.eval.search import search

    database = random_features(args.database, args.dim, 0)
    queries = random_features(args.queries, args.dim, 1)
    features = peak_rss_gib()
    start = time.perf_counter()
    sims, idx = search(queries, database, args.top, index)
    seconds = time.perf_counter() - start
    torch.save(idx, f"{args.scratch}/top-{index}.pt")
    assert sims.shape == (args.queries, args.top)
    return {"seconds": seconds, "peak_gib": peak_rss_gib(), "features_gib": features}


def pairs(args: argparse.Namespace, index: str) -> dict[str, float]:
    from dino.eval.copydetect import near_duplicate_pairs

    x = random_features(args.pairs_n, args.dim, 2)
    g = torch.Generator().manual_seed(3)
    copies = torch.randperm(args.pairs_n, generator=g)[: 2 * args.planted].view(2, -1)
    originals, planted = copies[0], copies[1]
    x[planted] = x[originals] + 0.1 * torch.randn(args.planted, args.dim, generator=g)
    features = peak_rss_gib()
    start = time.perf_counter()
    found = near_duplicate_pairs(x, args.threshold, args.neighbours, index)
    seconds = time.perf_counter() - start
    expected = {
        (min(a, b), max(a, b)) for a, b in zip(originals.tolist(), planted.tolist(), strict=True)
    }
    got = {(i, j) for i, j, _ in found}
    return {
        "seconds": seconds,
        "peak_gib": peak_rss_gib(),
        "features_gib": features,
        "planted_found": len(expected & got),
        "other_pairs": len(got - expected),
    }


def child(args: argparse.Namespace) -> None:
    task, index = args.one
    out = (retrieval if task == "retrieval" else pairs)(args, index)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--top", type=int, default=100)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--pairs_n", type=int, default=200_000)
    parser.add_argument("--planted", type=int, default=1_000)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--neighbours", type=int, default=10)
    parser.add_argument("--indexes", nargs="+", default=["flat", "faiss"])
    parser.add_argument("--scratch", default="/tmp", help="where the rankings are compared")
    parser.add_argument("--one", nargs=2, metavar=("TASK", "INDEX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return child(args)
    try:
        import faiss  # noqa: F401
    except ImportError:
        print("faiss is not installed (pip install 'dino[scale]'): flat only")
        args.indexes = [i for i in args.indexes if i != "faiss"]
    flags = [a for a in sys.argv[1:] if a != "--indexes" and a not in args.indexes]
    print(f"{torch.get_num_threads()} threads; torch {torch.__version__}")
    for task in ("retrieval", "pairs"):
        for index in args.indexes:
            cmd = [sys.executable, __file__, *flags, "--one", task, index]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            if task == "retrieval":
                what = f"{args.queries} x {args.database:,} x {args.dim}-d, top {args.top}"
            else:
                what = (
                    f"pairs in {args.pairs_n:,} x {args.dim}-d, {args.planted} planted: "
                    f"{r['planted_found']} found, {r['other_pairs']} others"
                )
            print(
                f"{task:9s} {index:5s} {what}: {r['seconds']:.1f} s, peak {r['peak_gib']:.2f} GiB "
                f"({r['features_gib']:.2f} GiB with the features alone)"
            )
    if set(args.indexes) == {"flat", "faiss"}:
        flat = torch.load(f"{args.scratch}/top-flat.pt")
        faiss_top = torch.load(f"{args.scratch}/top-faiss.pt")
        same = sum(
            len(set(a) & set(b)) for a, b in zip(flat.tolist(), faiss_top.tolist(), strict=True)
        )
        print(f"retrieval: flat and faiss agree on {100 * same / flat.numel():.2f}% of the top")


if __name__ == "__main__":
    main()
