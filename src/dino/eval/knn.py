"""Weighted k-NN classification on L2-normalised features (DINO section 4.1, Wu et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


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
) -> Tensor:
    """Class scores (Q, C): each of the k most cosine-similar train items votes exp(sim / T).

    Features are L2-normalised here; queries are processed ``chunk_size`` at a time so the
    similarity matrix never exceeds (chunk_size, N) floats.
    """
    return _knn_scores(
        train_features, train_labels, query_features, [k], temperature, num_classes, chunk_size
    )[0]


def _knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    ks: Sequence[int],
    temperature: float,
    num_classes: int | None,
    chunk_size: int,
) -> list[Tensor]:
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long().to(train.device)
    n_classes = num_classes or int(labels.max()) + 1
    k_max = min(max(ks), train.shape[0])
    scores = [torch.zeros(query_features.shape[0], n_classes) for _ in ks]
    for start in range(0, query_features.shape[0], chunk_size):
        q = F.normalize(query_features[start : start + chunk_size].float().to(train.device), dim=1)
        sims, idx = (q @ train.T).topk(k_max, dim=1)  # (q, k_max), sorted high to low
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
) -> list[KNNResult]:
    """Top-1 / top-5 accuracy (percent) of weighted k-NN for every k in ``ks``."""
    n_classes = num_classes or int(max(train_labels.max(), query_labels.max())) + 1
    all_scores = _knn_scores(
        train_features, train_labels, query_features, ks, temperature, n_classes, chunk_size
    )
    target = query_labels.long().view(-1, 1)
    results = []
    for k, scores in zip(ks, all_scores, strict=True):
        ranked = scores.argsort(dim=1, descending=True, stable=True)
        top1 = (ranked[:, :1] == target).any(1).float().mean().item() * 100
        top5 = None
        if n_classes > 5 and k >= 5:
            top5 = (ranked[:, :5] == target).any(1).float().mean().item() * 100
        results.append(KNNResult(k, top1, top5))
    return results
