"""The one metrics module: classification accuracy and retrieval mAP / mP@k.

Retrieval metrics follow the revisited Oxford / Paris benchmark (Radenović et al. 2018),
which DINO reports (section 4.2.1): junk items are removed from a ranking before it is
scored, average precision interpolates the precision-recall curve with trapezoids, and
mP@k caps k at the rank of the last relevant item retrieved. The same definitions score
every ranking here (retrieval with any ground truth, copy detection), so numbers compare.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def topk_accuracy(scores: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> list[float]:
    """Percent of rows of ``scores`` (N, C) whose target (N,) is among the k best classes.

    Ties between class scores are broken towards the lower class index.
    """
    ranked = scores.argsort(dim=1, descending=True, stable=True)  # (N, C)
    hits = ranked == targets.long().view(-1, 1).to(ranked.device)  # (N, C)
    return [hits[:, :k].any(dim=1).float().mean().item() * 100 for k in ks]


def effective_rank(features: Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp(H(p)), p_k = s_k / sum(s) + eps over the singular
    values s of ``features`` (N, D). About 1 when every row is the same point (collapse), up
    to min(N, D) when the rows spread over every dimension. Needs no labels."""
    s = torch.linalg.svdvals(features.double())
    p = s / s.sum().clamp_min(1e-300) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def mean_pairwise_cosine(features: Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct rows of ``features`` (N, D), N >= 2.

    1 when every row points the same way. Not centred: an untrained ViT's [CLS] features
    share a large common component (about 0.93 on small grey images)."""
    x = F.normalize(features.double(), dim=1)
    n = x.shape[0]
    total = x.sum(dim=0)  # sum_ij x_i . x_j = ||sum_i x_i||^2, in O(N D)
    return float((total @ total - n) / (n * (n - 1)))


@dataclass(frozen=True)
class Relevance:
    """Ground truth of one query: database indices that are relevant (``ok``) or ignored."""

    ok: frozenset[int]
    junk: frozenset[int] = frozenset()


def relevance(ok: Iterable[int], junk: Iterable[int] = ()) -> Relevance:
    """A Relevance from any iterables of indices; an index in both counts as relevant."""
    ok_set = frozenset(int(i) for i in ok)
    return Relevance(ok_set, frozenset(int(i) for i in junk) - ok_set)


def positive_ranks(ranking: np.ndarray, truth: Relevance) -> np.ndarray:
    """0-based ranks of the relevant items in ``ranking`` (N,) once junk items are removed."""
    kept = ranking[~np.isin(ranking, list(truth.junk))]
    return np.flatnonzero(np.isin(kept, list(truth.ok))).astype(np.int64)


def average_precision(ranks: np.ndarray, n_relevant: int) -> float:
    """AP of one query from the 0-based ranks of its retrieved relevant items (sorted).

    Each relevant item adds a recall step of 1 / n_relevant times the mean of the precision
    just before it (j / r, or 1 at rank 0) and at it ((j + 1) / (r + 1)), where it is the
    j-th relevant item (from 0) at rank r. Relevant items never retrieved add nothing.
    """
    if n_relevant <= 0:
        raise ValueError("average precision needs at least one relevant item")
    ap = 0.0
    for j, r in enumerate(ranks.tolist()):
        before = 1.0 if r == 0 else j / r
        at = (j + 1) / (r + 1)
        ap += (before + at) / 2 / n_relevant
    return ap


def precision_at_k(ranks: np.ndarray, k: int) -> float:
    """Precision at k, with k capped at the 1-based rank of the last relevant item retrieved.

    The cap (revisited benchmark) keeps a query with fewer relevant items than k from being
    penalised once all of them are ranked first. No relevant item retrieved gives 0.
    """
    if len(ranks) == 0:
        return 0.0
    kq = min(int(ranks.max()) + 1, k)
    return float((ranks < kq).sum()) / kq


@dataclass(frozen=True)
class RetrievalScores:
    mean_ap: float  # percent
    mean_precision: dict[int, float]  # k -> mP@k, percent
    n_queries: int  # queries scored (those with at least one relevant item)


def retrieval_scores(
    rankings: np.ndarray, truths: Mapping[int, Relevance], ks: Sequence[int] = (1, 5, 10)
) -> RetrievalScores:
    """mAP and mP@k (percent) of ``rankings`` (Q, N) database indices, best first.

    ``truths`` maps a query's row to its ground truth; rows without an entry, and queries
    with no relevant item, are not scored.
    """
    aps: list[float] = []
    precisions: dict[int, list[float]] = {k: [] for k in ks}
    for q, truth in truths.items():
        if not truth.ok:
            continue
        ranks = positive_ranks(rankings[q], truth)
        aps.append(average_precision(ranks, len(truth.ok)))
        for k in ks:
            precisions[k].append(precision_at_k(ranks, k))
    return RetrievalScores(
        _mean_percent(aps), {k: _mean_percent(v) for k, v in precisions.items()}, len(aps)
    )


def merge_scores(parts: Sequence[RetrievalScores]) -> RetrievalScores:
    """The scores of disjoint sets of queries together (means weighted by query counts)."""
    scored = [p for p in parts if p.n_queries]
    n = sum(p.n_queries for p in scored)
    if not n:
        return parts[0] if parts else RetrievalScores(math.nan, {}, 0)

    def mean(values: list[float]) -> float:
        return sum(v * p.n_queries for v, p in zip(values, scored, strict=True)) / n

    ks = scored[0].mean_precision
    return RetrievalScores(
        mean([p.mean_ap for p in scored]),
        {k: mean([p.mean_precision[k] for p in scored]) for k in ks},
        n,
    )


def _mean_percent(values: list[float]) -> float:
    return 100 * float(np.mean(values)) if values else math.nan


REVISITED_SPLITS = ("easy", "medium", "hard")


def revisited_relevance(
    easy: Iterable[int], hard: Iterable[int], junk: Iterable[int], split: str
) -> Relevance:
    """Ground truth of one revisited Oxford / Paris query for the Easy, Medium or Hard split.

    Easy: easy images are relevant, hard ones ignored. Medium: easy and hard are relevant.
    Hard: hard images are relevant, easy ones ignored. Junk images are always ignored.
    """
    easy, hard, junk = set(easy), set(hard), set(junk)
    if split == "easy":
        return relevance(easy, junk | hard)
    if split == "medium":
        return relevance(easy | hard, junk)
    if split == "hard":
        return relevance(hard, junk | easy)
    raise ValueError(f"unknown split {split!r}; valid: {', '.join(REVISITED_SPLITS)}")
