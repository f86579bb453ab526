"""Weighted k-NN classification on L2-normalised features (DINO section 4.1, Wu et al. 2018).

Memory stays bounded whatever the sizes: similarities are computed for ``chunk_size``
queries against ``train_chunk_size`` train items at a time, and the k best neighbours of
each query are merged across train chunks. For 100k train and 10k query features of 384
dimensions the largest temporary is one (1024, 65536) float block, 256 MiB. On CPUs with
bfloat16 units the neighbours are searched in bfloat16 and re-scored in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dino.eval.metrics import topk_accuracy
from dino.hardware import cpu_has_fast_bf16


@dataclass(frozen=True)
class KNNResult:
    k: int
    top1: float  # percent
    top5: float | None  # percent; None when fewer than 6 classes or k < 5 make it meaningless


def knn_predict_scores(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    k: int,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    train_chunk_size: int = 65536,
) -> Tensor:
    """Class scores (Q, C): each of the k most cosine-similar train items votes exp(sim / T).

    Features (N, D) and queries (Q, D) are L2-normalised here; labels are (N,) class indices.
    """
    return _knn_scores(
        train_features,
        train_labels,
        query_features,
        [k],
        temperature,
        num_classes,
        chunk_size,
        train_chunk_size,
    )[0]


def nearest_neighbours(
    train: Tensor,
    queries: Tensor,
    k: int,
    train_chunk_size: int = 65536,
    train_bf16: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The k largest dot products of each query with the train rows, best first.

    ``train`` (N, D), ``queries`` (q, D) -> ``(similarities (q, k), indices (q, k))``. The
    train rows are visited ``train_chunk_size`` at a time and the running top k is merged
    with each chunk's top k, so the result equals one top k over all rows (ties aside).

    With ``train_bf16`` (``train`` in bfloat16), each chunk's candidates come from a bfloat16
    product, ``k`` plus a margin of them per query, and are re-scored in float32: the
    similarities returned are exact, and the neighbours differ from a float32 search only
    where two of them tie within bfloat16's precision (about 0.01) at the k-th place.
    """
    best_sims: Tensor | None = None
    best_idx: Tensor | None = None
    queries_bf16 = None if train_bf16 is None else queries.to(torch.bfloat16)
    for start in range(0, train.shape[0], train_chunk_size):
        block = train[start : start + train_chunk_size]
        kk = min(k, block.shape[0])
        if train_bf16 is None or queries_bf16 is None:
            sims, idx = (queries @ block.T).topk(kk, dim=1)  # (q, kk)
        else:
            rough = queries_bf16 @ train_bf16[start : start + train_chunk_size].T
            candidates = rough.topk(min(kk + _margin(kk), block.shape[0]), dim=1).indices
            sims, idx = _rescore(block, queries, candidates).topk(kk, dim=1)
            idx = candidates.gather(1, idx)
        idx = idx + start
        if best_sims is not None and best_idx is not None:
            sims, pick = torch.cat((best_sims, sims), dim=1).topk(k, dim=1)
            idx = torch.cat((best_idx, idx), dim=1).gather(1, pick)
        best_sims, best_idx = sims, idx
    assert best_sims is not None and best_idx is not None, "no train features"
    return best_sims, best_idx


def _margin(k: int) -> int:
    """Extra bfloat16 candidates per query, so that rounding rarely changes the top k."""
    return 16 + k // 8


def _rescore(block: Tensor, queries: Tensor, candidates: Tensor, rows: int = 128) -> Tensor:
    """Float32 dot products of each query with its candidate rows of ``block``: (q, m)."""
    out = torch.empty(candidates.shape, dtype=queries.dtype, device=queries.device)
    for i in range(0, queries.shape[0], rows):  # (rows, m, D) at a time bounds the memory
        picked = block[candidates[i : i + rows]]
        out[i : i + rows] = torch.einsum("qmd,qd->qm", picked, queries[i : i + rows])
    return out


def _knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    ks: Sequence[int],
    temperature: float,
    num_classes: int | None,
    chunk_size: int,
    train_chunk_size: int,
) -> list[Tensor]:
    train = F.normalize(train_features.float(), dim=1)
    # On CPUs with bfloat16 units the search for candidates runs in bfloat16 (about 3x the
    # float32 speed), then the candidates are re-scored exactly; elsewhere all is float32.
    fast = train.device.type == "cpu" and cpu_has_fast_bf16() and train.shape[0] > 4 * max(ks)
    train_bf16 = train.to(torch.bfloat16) if fast else None
    labels = train_labels.long().to(train.device)
    n_classes = num_classes or int(labels.max()) + 1
    k_max = min(max(ks), train.shape[0])
    scores = [torch.zeros(query_features.shape[0], n_classes) for _ in ks]
    for start in range(0, query_features.shape[0], chunk_size):
        q = F.normalize(query_features[start : start + chunk_size].float().to(train.device), dim=1)
        sims, idx = nearest_neighbours(train, q, k_max, train_chunk_size, train_bf16)
        weights = (sims / temperature).exp()
        neighbour_labels = labels[idx]
        for out, k in zip(scores, ks, strict=True):
            kk = min(k, k_max)
            votes = torch.zeros(q.shape[0], n_classes, device=train.device)
            votes.scatter_add_(1, neighbour_labels[:, :kk], weights[:, :kk])
            out[start : start + q.shape[0]] = votes.cpu()
    return scores


def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    query_labels: Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    train_chunk_size: int = 65536,
) -> list[KNNResult]:
    """Top-1 / top-5 accuracy (percent) of weighted k-NN for every k in ``ks``.

    Train features (N, D) with labels (N,), queries (Q, D) with labels (Q,); any number of
    classes. Top-5 is reported only with more than 5 classes and k >= 5.
    """
    n_classes = num_classes or int(max(train_labels.max(), query_labels.max())) + 1
    all_scores = _knn_scores(
        train_features,
        train_labels,
        query_features,
        ks,
        temperature,
        n_classes,
        chunk_size,
        train_chunk_size,
    )
    results = []
    for k, scores in zip(ks, all_scores, strict=True):
        top1, top5 = topk_accuracy(scores, query_labels, (1, 5))
        meaningful = n_classes > 5 and k >= 5
        results.append(KNNResult(k, top1, top5 if meaningful else None))
    return results
