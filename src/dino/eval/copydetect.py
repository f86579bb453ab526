"""Copy detection (DINO section 4.2.2, Copydays "strong"): descriptors, whitening, mAP, pairs.

The descriptor of an image is its [CLS] token concatenated with GeM-pooled (p = 4) patch
tokens (feature head ``cls_gem``), L2-normalised, PCA-whitened with statistics learned on
other images, then L2-normalised again; cosine similarity compares two descriptors.

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

import torch
import torch.nn.functional as F
from torch import Tensor

from dino.config import ConfigError
from dino.data.images import find_images
from dino.errors import DataError
from dino.eval.metrics import RetrievalScores, relevance, retrieval_scores
from dino.eval.retrieval import rank_database


@dataclass(frozen=True)
class Whitening:
    """PCA whitening x -> (x - mean) @ projection, learned by ``fit_whitening``."""

    mean: Tensor  # (D,)
    projection: Tensor  # (D, d): principal directions scaled by 1 / sqrt(their variance)

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    def project(self, x: Tensor) -> Tensor:
        """Whitened coordinates (M, d) of descriptors (M, D): unit variance on the fit set."""
        return (x.float() - self.mean) @ self.projection

    def __call__(self, x: Tensor) -> Tensor:
        """Whitened and L2-normalised descriptors (M, d)."""
        return F.normalize(self.project(x), dim=1)


def fit_whitening(features: Tensor, dim: int | None = None, rel_eps: float = 1e-6) -> Whitening:
    """PCA whitening of ``features`` (N, D): mean, covariance eigen-decomposition, scaling.

    Keeps the ``dim`` (default: all) largest principal directions among those whose variance
    exceeds ``rel_eps`` times the largest, so that fewer images than dimensions do not
    divide by zero; ``Whitening.dim`` says how many were kept.
    """
    if features.shape[0] < 2:
        raise ConfigError("whitening: needs at least 2 images to learn from")
    x = features.double()
    mean = x.mean(dim=0)
    centred = x - mean  # (N, D)
    cov = centred.T @ centred / (x.shape[0] - 1)  # (D, D)
    variances, vectors = torch.linalg.eigh(cov)  # ascending
    variances, vectors = variances.flip(0), vectors.flip(1)
    keep = int((variances > rel_eps * variances[0]).sum())
    keep = min(keep, dim) if dim else keep
    projection = vectors[:, :keep] / variances[:keep].sqrt()  # (D, d)
    return Whitening(mean.float(), projection.float())


@dataclass(frozen=True)
class CopyLayout:
    originals: list[Path]
    copies: list[Path]
    copy_of: list[int]  # per copy, the index of its original


def read_copy_layout(root: str | Path) -> CopyLayout:
    """Originals and copies of ``root`` laid out as the module docstring says."""
    root = Path(root)
    originals = find_images(root / "originals")
    if not originals:
        raise DataError(f"{root / 'originals'}: no images")
    ids = {p.stem: i for i, p in enumerate(originals)}
    if len(ids) != len(originals):
        raise DataError(f"{root / 'originals'}: two originals share a name without extension")
    copies, copy_of = [], []
    for path in find_images(root / "copies"):
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
    copies: Tensor, originals: Tensor, copy_of: list[int], distractors: Tensor | None = None
) -> RetrievalScores:
    """mAP and mP@1 (percent) of finding each copy's original among originals + distractors.

    Descriptors: ``copies`` (Q, d), ``originals`` (N, d), ``distractors`` (M, d).
    """
    database = originals if distractors is None else torch.cat((originals, distractors))
    _, ranking = rank_database(copies, database)  # (Q, N + M)
    truths = {q: relevance([o]) for q, o in enumerate(copy_of)}
    return retrieval_scores(ranking.numpy(), truths, ks=(1,))


def near_duplicate_pairs(
    descriptors: Tensor, threshold: float, chunk_size: int = 1024
) -> list[tuple[int, int, float]]:
    """Pairs (i, j, similarity) with i < j and cosine similarity >= ``threshold``, best first.

    ``descriptors`` (N, d); similarities are computed ``chunk_size`` rows at a time.
    """
    x = F.normalize(descriptors.float(), dim=1)
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, x.shape[0], chunk_size):
        sims = x[start : start + chunk_size] @ x.T  # (chunk, N)
        rows = torch.arange(start, start + sims.shape[0]).view(-1, 1)
        above = (sims >= threshold) & (torch.arange(x.shape[0]).view(1, -1) > rows)
        for r, j in above.nonzero().tolist():
            pairs.append((start + r, j, float(sims[r, j])))
    return sorted(pairs, key=lambda p: -p[2])
