"""Weighted k-NN classification on L2-normalised features (DINO section 4.1, Wu et al. 2018).

The neighbours come from ``dino.eval.search``: by default an exact search in blocks of
``chunk_size`` queries x ``train_chunk_size`` train items, whose k best are merged across
blocks (for 100k train and 10k query features of 384 dimensions the largest temporary is one
(1024, 65536) float block, 256 MiB; on CPUs with bfloat16 units candidates are searched in
bfloat16 and re-scored in float32), or faiss with ``index="faiss"``. Train features may be
a memory-mapped array or its shards (``dino.eval.store``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dino.eval.metrics import topk_accuracy
from dino.eval.search import Rows, n_rows, search


@dataclass(frozen=True)
class KNNResult:
    k: int
    top1: float  # percent
    top5: float | None  # percent; None when fewer than 6 classes or k < 5 make it meaningless


def knn_predict_scores(
    train_features: Rows,
    train_labels: Tensor,
    query_features: Rows,
    k: int,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    train_chunk_size: int = 65536,
    index: str = "flat",
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
        index,
    )[0]


def _knn_scores(
    train_features: Rows,
    train_labels: Tensor,
    query_features: Rows,
    ks: Sequence[int],
    temperature: float,
    num_classes: int | None,
    chunk_size: int,
    train_chunk_size: int,
    index: str = "flat",
) -> list[Tensor]:
    labels = train_labels.long().cpu()  # the search returns CPU indices
    n_classes = num_classes or int(labels.max()) + 1
    k_max = min(max(ks), n_rows(train_features))
    sims, idx = search(
        query_features,
        train_features,
        k_max,
        index,
        query_block=chunk_size,
        db_block=train_chunk_size,
    )  # (Q, k_max) each: cosine similarities, best first
    scores = [torch.zeros(sims.shape[0], n_classes) for _ in ks]
    for start in range(0, sims.shape[0], chunk_size):
        weights = (sims[start : start + chunk_size] / temperature).exp()
        neighbour_labels = labels[idx[start : start + chunk_size]]
        for out, k in zip(scores, ks, strict=True):
            kk = min(k, k_max)
            votes = torch.zeros(weights.shape[0], n_classes)
            votes.scatter_add_(1, neighbour_labels[:, :kk], weights[:, :kk])
            out[start : start + weights.shape[0]] = votes
    return scores


def knn_classify(
    train_features: Rows,
    train_labels: Tensor,
    query_features: Rows,
    query_labels: Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    train_chunk_size: int = 65536,
    index: str = "flat",
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
        index,
    )
    results = []
    for k, scores in zip(ks, all_scores, strict=True):
        top1, top5 = topk_accuracy(scores, query_labels, (1, 5))
        meaningful = n_classes > 5 and k >= 5
        results.append(KNNResult(k, top1, top5 if meaningful else None))
    return results
