"""DAVIS 2017 semi-supervised scores: J (region similarity) and F (contour accuracy).

As the DAVIS 2017 evaluation defines them (Perazzi et al. 2016, section 3; Pont-Tuset et al.
2017; the ``davis2017-evaluation`` toolkit):

- Objects are the ids 1..n of the first annotated frame (n = its largest id); void pixels
  (255) count as background. The first and the last annotated frames are not scored.
- J: intersection over union of one object's predicted and true masks; 1 when both are empty.
- F: the boundary F-measure. Boundaries are one pixel wide (``seg2bmap``: a pixel whose right,
  lower or lower-right neighbour differs; the last row and column compare along the edge);
  a boundary pixel matches when the other boundary lies within a disk of radius
  ceil(0.008 x image diagonal) pixels. Precision 1 and recall 0 (F = 0) when only the truth
  has a boundary, the reverse when only the prediction has one, F = 1 when neither has.
- Per object over its scored frames: mean; recall, the fraction of frames above 0.5; decay,
  the mean of the first quarter of frames minus that of the last quarter (4 bins whose edges
  are round(linspace(1, T, 5)) - 1, each bin including its right edge).
- Overall: each statistic averaged over all objects of all videos; J&F-Mean is the mean of
  J-Mean and F-Mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dino.data.davis import VOID_LABEL, read_label_png
from dino.errors import DataError

BOUND_TH = 0.008  # boundary tolerance, as a fraction of the image diagonal


def region_similarity(truth: np.ndarray, pred: np.ndarray) -> float:
    """J of two binary masks (H, W): |truth & pred| / |truth | pred|, 1 when both are empty."""
    _same_shape(truth, pred)
    truth, pred = truth.astype(bool), pred.astype(bool)
    union = int(np.count_nonzero(truth | pred))
    return 1.0 if union == 0 else np.count_nonzero(truth & pred) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary (H, W) bool of a binary mask, offset half a pixel towards the
    origin (``seg2bmap``, D. Martin 2003): where the right, lower or lower-right neighbour
    differs; the last row compares with its right neighbour only, the last column with the
    one below only, and the bottom-right pixel is never a boundary."""
    seg = mask.astype(bool)
    right, down, diag = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    down[:-1, :] = seg[1:, :]
    diag[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ right) | (seg ^ down) | (seg ^ diag)
    b[-1, :] = seg[-1, :] ^ right[-1, :]
    b[:, -1] = seg[:, -1] ^ down[:, -1]
    b[-1, -1] = False
    return b


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``mask`` (H, W) by the disk x^2 + y^2 <= radius^2 (skimage's ``disk``);
    pixels outside the image are empty. The disk is a stack of horizontal runs, one per row
    offset, and each run is a window sum of a cumulative sum: O(radius x H x W)."""
    h, w = mask.shape
    r = int(radius)
    padded = np.pad(mask.astype(bool), r)  # (H + 2r, W + 2r)
    csum = np.zeros((h + 2 * r, w + 2 * r + 1), np.int32)
    np.cumsum(padded, axis=1, out=csum[:, 1:])
    out = np.zeros((h, w), bool)
    for dy in range(-r, r + 1):
        half = math.isqrt(r * r - dy * dy)  # half-width of the disk's run at this row offset
        rows = csum[r + dy : r + dy + h]
        # pixels x - half .. x + half of the row, at padded columns x + r - half .. x + r + half
        out |= (rows[:, r + half + 1 : r + half + 1 + w] - rows[:, r - half : r - half + w]) > 0
    return out


def boundary_tolerance(shape: tuple[int, ...], bound_th: float = BOUND_TH) -> int:
    """Matching radius in pixels: ``bound_th`` itself when >= 1, else ceil(bound_th x diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm(shape)))


def boundary_f_measure(truth: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """F of two binary masks (H, W): the F-measure of boundary precision and recall, a boundary
    pixel matching when the other boundary is within ``boundary_tolerance`` pixels."""
    _same_shape(truth, pred)
    radius = boundary_tolerance(pred.shape, bound_th)
    pred_b, truth_b = boundary_map(pred), boundary_map(truth)
    n_pred, n_truth = int(pred_b.sum()), int(truth_b.sum())
    if n_pred == 0 or n_truth == 0:  # the toolkit's conventions for a missing boundary
        precision, recall = float(n_pred == 0), float(n_truth == 0)
    else:
        pred_b, truth_b = _around(pred_b, truth_b, radius)
        precision = np.count_nonzero(pred_b & dilate_disk(truth_b, radius)) / n_pred
        recall = np.count_nonzero(truth_b & dilate_disk(pred_b, radius)) / n_truth
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Statistics:
    """Mean, recall (fraction of frames > 0.5) and decay of one measure over frames."""

    mean: float
    recall: float
    decay: float


def frame_statistics(values: Sequence[float]) -> Statistics:
    """DAVIS's ``db_statistics`` of per-frame values (NaN-free); NaN for no frame at all.

    The toolkit casts the bin edges to uint8, which wraps past 256 frames; they stay exact
    integers here (the same bins up to 256 frames).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return Statistics(math.nan, math.nan, math.nan)
    edges = (np.round(np.linspace(1, v.size, 5) + 1e-10) - 1).astype(np.int64)
    first, last = v[edges[0] : edges[1] + 1], v[edges[3] : edges[4] + 1]
    return Statistics(float(v.mean()), float((v > 0.5).mean()), float(first.mean() - last.mean()))


@dataclass(frozen=True)
class ObjectScores:
    """Scores of one object (``<video>_<id>``, the toolkit's name) over its scored frames."""

    name: str
    j_frames: tuple[float, ...]
    f_frames: tuple[float, ...]

    @property
    def j(self) -> Statistics:
        return frame_statistics(self.j_frames)

    @property
    def f(self) -> Statistics:
        return frame_statistics(self.f_frames)


@dataclass(frozen=True)
class DavisScores:
    """Per-object scores and the overall figures of the DAVIS 2017 semi-supervised task."""

    objects: tuple[ObjectScores, ...]

    def overall(self) -> dict[str, float]:
        """J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay (0..1), in the order
        of the toolkit's global results table; each averaged over all objects."""
        j = [o.j for o in self.objects]
        f = [o.f for o in self.objects]

        def avg(stats: list[Statistics], field: str) -> float:
            return float(np.mean([getattr(s, field) for s in stats])) if stats else math.nan

        out = {"J&F-Mean": (avg(j, "mean") + avg(f, "mean")) / 2}
        for letter, stats in (("J", j), ("F", f)):
            for field in ("mean", "recall", "decay"):
                out[f"{letter}-{field.capitalize()}"] = avg(stats, field)
        return out

    @property
    def jf_mean(self) -> float:
        return self.overall()["J&F-Mean"]


def object_scores(
    video: str,
    truth: Sequence[np.ndarray],
    pred: Sequence[np.ndarray],
    n_objects: int,
    bound_th: float = BOUND_TH,
) -> list[ObjectScores]:
    """J and F per frame of objects 1..``n_objects`` of one video, over the scored frames only.

    ``truth`` and ``pred``: the label maps (H, W) of the same frames; void (255) in the truth
    counts as background. A predicted id above ``n_objects`` is an error, as in the toolkit.
    """
    if len(truth) != len(pred):
        raise DataError(f"{video}: {len(pred)} predicted frames for {len(truth)} annotated")
    found = max((int(p.max()) for p in pred), default=0)
    if found > n_objects:
        raise DataError(f"{video}: a prediction holds object id {found}, but there are {n_objects}")
    js: list[list[float]] = [[] for _ in range(n_objects)]
    fs: list[list[float]] = [[] for _ in range(n_objects)]
    for t, p in zip(truth, pred, strict=True):
        t = np.where(t == VOID_LABEL, 0, t)
        for k in range(n_objects):
            js[k].append(region_similarity(t == k + 1, p == k + 1))
            fs[k].append(boundary_f_measure(t == k + 1, p == k + 1, bound_th))
    return [ObjectScores(f"{video}_{k + 1}", tuple(js[k]), tuple(fs[k])) for k in range(n_objects)]


def davis_j_and_f(
    ground_truth: Mapping[str, Sequence[np.ndarray]],
    predictions: Mapping[str, Sequence[np.ndarray]],
    bound_th: float = BOUND_TH,
) -> DavisScores:
    """J and F of every object of every video (DAVIS 2017, semi-supervised).

    ``ground_truth[video]``: the label maps (H, W) of all its annotated frames in order;
    ``predictions[video]``: one label map per annotated frame, the same frames. The first
    frame defines the objects; the first and last frames are not scored.
    """
    objects: list[ObjectScores] = []
    for video, truth in ground_truth.items():
        if video not in predictions:
            raise DataError(f"{video}: no predictions")
        pred = predictions[video]
        if len(pred) != len(truth):
            raise DataError(f"{video}: {len(pred)} predicted frames for {len(truth)} annotated")
        n_objects = _n_objects(truth[0])
        objects += object_scores(video, truth[1:-1], pred[1:-1], n_objects, bound_th)
    return DavisScores(tuple(objects))


def score_folder(
    annotations: str | Path,
    results: str | Path,
    videos: Sequence[str],
    bound_th: float = BOUND_TH,
) -> DavisScores:
    """Scores of the palette PNGs ``results/<video>/<frame>.png`` against the annotations
    ``annotations/<video>/<frame>.png`` (e.g. ``DAVIS/Annotations/480p``), as the toolkit
    reads them: every annotated frame of a video is predicted, by frame name."""
    objects: list[ObjectScores] = []
    for video in videos:
        truth_paths = sorted((Path(annotations) / video).glob("*.png"))
        if not truth_paths:
            raise DataError(f"{video}: no annotation in {Path(annotations) / video}")
        n_objects = _n_objects(read_label_png(truth_paths[0]))
        scored = truth_paths[1:-1]
        missing = [p.name for p in scored if not (Path(results) / video / p.name).is_file()]
        if missing:
            raise DataError(f"{video}: no prediction {Path(results) / video / missing[0]}")
        truth = [read_label_png(p) for p in scored]
        pred = [read_label_png(Path(results) / video / p.name) for p in scored]
        objects += object_scores(video, truth, pred, n_objects, bound_th)
    return DavisScores(tuple(objects))


def _around(a: np.ndarray, b: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` cut to the box holding both their pixels plus ``margin``: the matches
    are the same, and dilating the box is faster than dilating the frame."""
    rows = np.flatnonzero((a | b).any(axis=1))
    cols = np.flatnonzero((a | b).any(axis=0))
    r0, r1 = max(0, rows[0] - margin), rows[-1] + margin + 1
    c0, c1 = max(0, cols[0] - margin), cols[-1] + margin + 1
    return a[r0:r1, c0:c1], b[r0:r1, c0:c1]


def _n_objects(first: np.ndarray) -> int:
    return int(np.where(first == VOID_LABEL, 0, first).max())


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 2:
        raise DataError(f"masks of shapes {a.shape} and {b.shape}: expected two equal (H, W)")
