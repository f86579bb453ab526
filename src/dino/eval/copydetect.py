"""Copy detection (DINO section 4.2.2, Copydays "strong"): descriptors, whitening, mAP, pairs.

The descriptor of an image is its [CLS] token concatenated with GeM-pooled (p = 4) patch
tokens (feature head ``cls_gem``), PCA-whitened with statistics learned on other images
(``fit_whitening``: the reference's method by default), then L2-normalised; cosine
similarity compares two descriptors.

Evaluation layout (Copydays-style), below one folder:

    originals/<id>.<ext>                 one image per id
    copies/<id>/<anything>.<ext>         its modified copies, or
    copies/<id>_<anything>.<ext>

Every copy is a query, the originals (plus optional distractor images) the database, and
the copy's own original the one relevant item.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dino.config import ConfigError
from dino.data.images import find_images
from dino.errors import DataError
from dino.eval.metrics import RetrievalScores, relevance, retrieval_scores
from dino.eval.search import Prepare, Rows, knn_graph, l2_normalize, search

WHITENINGS = ("reference", "normalized")


@dataclass(frozen=True)
class Whitening:
    """PCA whitening x -> (x - mean) @ projection, learned by ``fit_whitening``; with
    ``normalize_input`` the descriptors are L2-normalised first (the ``normalized`` method)."""

    mean: Tensor  # (D,)
    projection: Tensor  # (D, d): principal directions scaled by 1 / sqrt(their eigenvalue)
    normalize_input: bool = False

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    def project(self, x: Tensor) -> Tensor:
        """Whitened coordinates (M, d) of raw descriptors (M, D)."""
        x = x.float()
        if self.normalize_input:
            x = F.normalize(x, dim=1)
        return (x - self.mean) @ self.projection

    def __call__(self, x: Tensor) -> Tensor:
        """Whitened and L2-normalised descriptors (M, d)."""
        return F.normalize(self.project(x), dim=1)


def fit_whitening(features: Tensor, dim: int | None = None, method: str = "reference") -> Whitening:
    """PCA whitening learned on the raw descriptors ``features`` (N, D) of other images.

    ``reference`` (the reference's eval_copy_detection.py): centred by the mean of
    ``features``, the principal directions of their uncentred second moment X^T X / N, each
    scaled by 1 / sqrt(its eigenvalue), eigenvalues below 1e-5 of the largest raised to that
    floor; every direction is kept (``dim``: the largest ``dim``).

    ``normalized``: the descriptors are L2-normalised first, the directions are those of
    their covariance (centred, N - 1), and directions whose variance is below 1e-6 of the
    largest are dropped instead of floored, so that fewer images than dimensions never
    divide by a near-zero variance; ``Whitening.dim`` says how many were kept.
    """
    if method not in WHITENINGS:
        raise ConfigError(f"whitening: unknown {method!r}; valid: {', '.join(WHITENINGS)}")
    if features.shape[0] < 2:
        raise ConfigError("whitening: needs at least 2 images to learn from")
    x = features.double()
    if method == "normalized":
        x = F.normalize(x, dim=1)
    mean = x.mean(dim=0)
    if method == "reference":
        moment = x.T @ x / x.shape[0]  # (D, D), not centred: as the reference
    else:
        centred = x - mean
        moment = centred.T @ centred / (x.shape[0] - 1)  # (D, D) covariance
    values, vectors = torch.linalg.eigh(moment)  # ascending
    values, vectors = values.flip(0), vectors.flip(1)
    if method == "reference":
        values = values.clamp(min=1e-5 * float(values[0]))
        keep = values.shape[0]
    else:
        keep = int((values > 1e-6 * values[0]).sum())
    keep = min(keep, dim) if dim else keep
    projection = vectors[:, :keep] / values[:keep].sqrt()  # (D, d)
    return Whitening(mean.float(), projection.float(), method == "normalized")


@dataclass(frozen=True)
class CopyLayout:
    originals: list[Path]
    copies: list[Path]
    copy_of: list[int]  # per copy, the index of its original


def read_copy_layout(root: str | Path, follow_links: bool = False) -> CopyLayout:
    """Originals and copies of ``root`` laid out as the module docstring says (links to
    folders outside them followed only with ``follow_links``)."""
    root = Path(root)
    originals = find_images(root / "originals", follow_links)
    if not originals:
        raise DataError(f"{root / 'originals'}: no images")
    ids = {p.stem: i for i, p in enumerate(originals)}
    if len(ids) != len(originals):
        raise DataError(f"{root / 'originals'}: two originals share a name without extension")
    copies, copy_of = [], []
    for path in find_images(root / "copies", follow_links):
        rel = path.relative_to(root / "copies")
        if len(rel.parts) > 1:
            original = rel.parts[0] if rel.parts[0] in ids else None
        else:
            matches = [i for i in ids if rel.stem == i or rel.stem.startswith(i + "_")]
            original = max(matches, key=len) if matches else None
        if original is None:
            raise DataError(f"{path}: names no original of {root / 'originals'}")
        copies.append(path)
        copy_of.append(ids[original])
    if not copies:
        raise DataError(f"{root / 'copies'}: no images")
    return CopyLayout(originals, copies, copy_of)


def copy_detection_scores(
    copies: Rows,
    originals: Rows,
    copy_of: list[int],
    distractors: Rows | None = None,
    top: int = 20,
    index: str = "flat",
    prepare: Prepare = l2_normalize,
) -> RetrievalScores:
    """mAP and mP@1 (percent) of finding each copy's original among originals + distractors.

    Descriptors ``copies`` (Q, D), ``originals`` (N, D), ``distractors`` (M, D) go through
    ``prepare`` (a ``Whitening``, or L2 normalisation for descriptors already whitened) and
    are compared by inner product. As in the reference, only the ``top`` (20) most similar
    database images of a copy are ranked: an original further down adds nothing to its AP.
    """
    database = _blocks(originals) + (_blocks(distractors) if distractors is not None else [])
    _, ranking = search(copies, database, top, index, prepare)  # (Q, top)
    truths = {q: relevance([o]) for q, o in enumerate(copy_of)}
    return retrieval_scores(ranking.numpy(), truths, ks=(1,))


def _blocks(x: Rows) -> list[Tensor | np.ndarray]:
    return [x] if isinstance(x, (Tensor, np.ndarray)) else list(x)


def near_duplicate_pairs(
    descriptors: Rows,
    threshold: float,
    neighbours: int = 10,
    index: str = "flat",
    prepare: Prepare = l2_normalize,
) -> list[tuple[int, int, float]]:
    """Pairs (i, j, similarity), i < j, best first: the edges of the k-NN graph of
    ``descriptors`` (N, d) whose cosine similarity (after ``prepare``) reaches ``threshold``.

    Each image is joined to at most its ``neighbours`` most similar others, so the result
    holds N x k candidates instead of N^2 / 2 pairs (``knn_graph``: exact, in blocks; or
    faiss); a group of more than ``neighbours`` + 1 copies of one image keeps, for each
    member, only its ``neighbours`` closest.
    """
    if index == "flat":
        sims, idx = knn_graph(descriptors, neighbours, prepare, threshold)  # (N, k)
    else:
        sims, idx = search(descriptors, descriptors, neighbours + 1, index, prepare)
    rows = torch.arange(sims.shape[0]).view(-1, 1).expand_as(idx)
    keep = (idx != rows) & (sims >= threshold)
    a, b, s = rows[keep], idx[keep], sims[keep]
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    order = torch.argsort(-s, stable=True)  # best first; a pair found twice keeps its best
    lo, hi, s = lo[order], hi[order], s[order]
    key = lo * sims.shape[0] + hi
    _, first = np.unique(key.numpy(), return_index=True)
    first = np.sort(first)
    return list(zip(lo[first].tolist(), hi[first].tolist(), s[first].tolist(), strict=True))
