"""Weighted k-NN classification on L2-normalised features (DINO section 4.1, Wu et al. 2018).

Memory stays bounded whatever the sizes: similarities are computed for ``chunk_size``
queries against ``train_chunk_size`` train items at a time, and the k best neighbours of
each query are merged across train chunks. For 100k train and 10k query features of 384
dimensions the largest temporary is one (1024, 65536) float block, 256 MiB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dino.eval.metrics import topk_accuracy


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
    train: Tensor, queries: Tensor, k: int, train_chunk_size: int = 65536
) -> tuple[Tensor, Tensor]:
    """The k largest dot products of each query with the train rows, best first.

    ``train`` (N, D), ``queries`` (q, D) -> ``(similarities (q, k), indices (q, k))``. The
    train rows are visited ``train_chunk_size`` at a time and the running top k is merged
    with each chunk's top k, so the result equals one top k over all rows (ties aside).
    """
    best_sims: Tensor | None = None
    best_idx: Tensor | None = None
    for start in range(0, train.shape[0], train_chunk_size):
        sims = queries @ train[start : start + train_chunk_size].T  # (q, chunk)
        sims, idx = sims.topk(min(k, sims.shape[1]), dim=1)
        idx = idx + start
        if best_sims is not None and best_idx is not None:
            sims, pick = torch.cat((best_sims, sims), dim=1).topk(k, dim=1)
            idx = torch.cat((best_idx, idx), dim=1).gather(1, pick)
        best_sims, best_idx = sims, idx
    assert best_sims is not None and best_idx is not None, "no train features"
    return best_sims, best_idx


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
    labels = train_labels.long().to(train.device)
    n_classes = num_classes or int(labels.max()) + 1
    k_max = min(max(ks), train.shape[0])
    scores = [torch.zeros(query_features.shape[0], n_classes) for _ in ks]
    for start in range(0, query_features.shape[0], chunk_size):
        q = F.normalize(query_features[start : start + chunk_size].float().to(train.device), dim=1)
        sims, idx = nearest_neighbours(train, q, k_max, train_chunk_size)  # (q, k_max)
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
