"""DAVIS 2017 J and F: hand-computed values on hand-made masks, the toolkit's conventions."""

import math

import numpy as np
import pytest

from dino.data.davis import davis_palette, read_label_png, save_indexed_png
from dino.errors import DataError
from dino.eval.davis import (
    boundary_f_measure,
    boundary_map,
    boundary_tolerance,
    davis_j_and_f,
    dilate_disk,
    frame_statistics,
    region_similarity,
    score_folder,
)


def box(shape, rows, cols, value=1):
    m = np.zeros(shape, np.uint8)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = value
    return m


def test_region_similarity_by_hand():
    empty = np.zeros((8, 8), bool)
    assert region_similarity(empty, empty) == 1.0  # nothing to find, nothing found
    square = box((8, 8), (2, 3), (2, 3))
    assert region_similarity(square, empty) == 0.0
    assert region_similarity(empty, square) == 0.0
    shifted = box((8, 8), (2, 3), (3, 4))
    assert region_similarity(square, shifted) == pytest.approx(2 / 6)
    one_pixel = box((8, 8), (5, 5), (5, 5))
    assert region_similarity(one_pixel, one_pixel) == 1.0


def test_boundary_of_one_pixel_is_offset_towards_the_origin():
    b = boundary_map(box((6, 6), (2, 2), (3, 3)))
    assert sorted(zip(*np.nonzero(b), strict=True)) == [(1, 2), (1, 3), (2, 2), (2, 3)]
    corner = boundary_map(box((6, 6), (0, 0), (0, 0)))
    assert sorted(zip(*np.nonzero(corner), strict=True)) == [(0, 0)]
    # The last row and column compare along the edge only; the last pixel is never a boundary.
    far = boundary_map(box((6, 6), (5, 5), (5, 5)))
    assert sorted(zip(*np.nonzero(far), strict=True)) == [(4, 4), (4, 5), (5, 4)]
    # A square [a..b]^2 has the outline of [a-1..b]^2 as its boundary.
    sq = boundary_map(box((12, 12), (6, 9), (6, 9)))
    assert sq.sum() == 16 and sq[5, 5:10].all() and sq[9, 5:10].all() and sq[5:10, 5].all()


def test_tolerance_is_ceil_of_0008_of_the_diagonal():
    assert boundary_tolerance((480, 854)) == 8  # DAVIS 480p: 0.008 x 979.6 = 7.84
    assert boundary_tolerance((20, 20)) == 1
    assert boundary_tolerance((20, 20), bound_th=3) == 3  # >= 1: pixels


def naive_dilation(mask: np.ndarray, radius: int) -> np.ndarray:
    out = np.zeros_like(mask, bool)
    for y, x in zip(*np.nonzero(mask), strict=True):
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                inside = 0 <= y + dy < mask.shape[0] and 0 <= x + dx < mask.shape[1]
                if dy * dy + dx * dx <= radius * radius and inside:
                    out[y + dy, x + dx] = True
    return out


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5, 8])
def test_disk_dilation_equals_a_naive_one(radius):
    rng = np.random.default_rng(radius)
    mask = rng.random((23, 31)) < 0.03
    mask[0, 0] = mask[-1, -1] = mask[0, -1] = True  # corners: nothing beyond the image
    assert np.array_equal(dilate_disk(mask, radius), naive_dilation(mask, radius))


def test_f_of_one_pixel_objects_by_hand():
    # 20 x 20 px: tolerance 1 px, a plus-shaped disk. The one-pixel object's boundary is the
    # 2 x 2 block ending at it; shifting the prediction right by s columns:
    truth = box((20, 20), (5, 5), (5, 5))
    expected = {0: 1.0, 1: 1.0, 2: 0.5, 3: 0.0}  # s = 2: half of each boundary matches
    for s, f in expected.items():
        assert boundary_f_measure(truth, box((20, 20), (5, 5), (5 + s, 5 + s))) == f


def test_f_conventions_for_empty_masks():
    empty = np.zeros((20, 20), np.uint8)
    obj = box((20, 20), (5, 8), (5, 8))
    assert boundary_f_measure(empty, empty) == 1.0
    assert boundary_f_measure(obj, empty) == 0.0  # precision 1, recall 0
    assert boundary_f_measure(empty, obj) == 0.0  # precision 0, recall 1


def test_f_of_a_half_found_square_by_hand():
    # Truth: the square rows/cols 6-9 (boundary: the 16-px outline of [5..9]^2). Prediction:
    # its left half, cols 6-7 (boundary: the 12-px outline of rows 5-9 x cols 5-7). With a
    # 1-px tolerance 11 of the 12 predicted boundary pixels match, and 11 of the 16 true ones:
    # F = 2 (11/12)(11/16) / (11/12 + 11/16) = 11/14.
    truth = box((12, 12), (6, 9), (6, 9))
    pred = box((12, 12), (6, 9), (6, 7))
    assert boundary_f_measure(truth, pred) == pytest.approx(11 / 14)
    assert region_similarity(truth, pred) == pytest.approx(8 / 16)


def test_statistics_mean_recall_and_the_quartile_decay():
    s = frame_statistics([1.0, 0.9, 0.8, 0.2, 0.1, 0.6])
    # 6 frames: bin edges round(linspace(1, 6, 5)) - 1 = [0, 1, 3, 4, 5]; the first bin is
    # frames 0-1, the last frames 4-5.
    assert s.mean == pytest.approx(0.6)
    assert s.recall == pytest.approx(4 / 6)
    assert s.decay == pytest.approx((1.0 + 0.9) / 2 - (0.1 + 0.6) / 2)
    ten = frame_statistics(np.arange(10) / 10)  # edges [0, 2, 5, 7, 9]: frames 0-2 and 7-9
    assert ten.decay == pytest.approx(0.1 - 0.8)
    assert frame_statistics([0.5]).decay == 0.0 and frame_statistics([0.5]).recall == 0.0
    assert math.isnan(frame_statistics([]).mean)


def two_object_video():
    """Three 12 x 12 frames; objects 1 (rows/cols 1-3) and 2 (rows/cols 6-9)."""
    truth = box((12, 12), (1, 3), (1, 3), 1) + box((12, 12), (6, 9), (6, 9), 2)
    pred = box((12, 12), (1, 3), (1, 3), 1) + box((12, 12), (6, 9), (6, 7), 2)
    garbage = np.full((12, 12), 1, np.uint8)  # first and last frames are not scored
    return [truth, truth, truth], [garbage, pred, garbage]


def test_two_objects_overall_scores():
    truth, pred = two_object_video()
    scores = davis_j_and_f({"v": truth}, {"v": pred})
    assert [o.name for o in scores.objects] == ["v_1", "v_2"]
    assert scores.objects[0].j_frames == (1.0,) and scores.objects[0].f_frames == (1.0,)
    assert scores.objects[1].j_frames == (0.5,)
    assert scores.objects[1].f_frames == pytest.approx((11 / 14,))
    overall = scores.overall()
    columns = "J&F-Mean J-Mean J-Recall J-Decay F-Mean F-Recall F-Decay"
    assert list(overall) == columns.split()
    assert overall["J-Mean"] == pytest.approx(0.75)
    assert overall["J-Recall"] == pytest.approx(0.5)  # 0.5 is not above 0.5
    assert overall["F-Mean"] == pytest.approx((1 + 11 / 14) / 2)
    assert scores.jf_mean == pytest.approx((0.75 + (1 + 11 / 14) / 2) / 2)


def test_a_missing_or_hidden_object_and_void_pixels():
    truth, pred = two_object_video()
    only_one = np.where(pred[1] == 2, 0, pred[1]).astype(np.uint8)
    scores = davis_j_and_f({"v": truth}, {"v": [pred[0], only_one, pred[2]]})
    assert scores.objects[1].j_frames == (0.0,) and scores.objects[1].f_frames == (0.0,)
    # Object 2 hidden in the truth and not predicted: found perfectly. Void counts as background.
    hidden = np.where(truth[1] == 2, 255, truth[1]).astype(np.uint8)
    scores = davis_j_and_f({"v": [truth[0], hidden, truth[2]]}, {"v": [pred[0], only_one, pred[2]]})
    assert scores.objects[1].j_frames == (1.0,) and scores.objects[1].f_frames == (1.0,)
    with pytest.raises(DataError, match="object id 3"):
        davis_j_and_f({"v": truth}, {"v": [pred[0], pred[1] * 3 // 2, pred[2]]})


def test_scores_of_palette_pngs_in_the_davis_layout(tmp_path):
    truth, pred = two_object_video()
    for i, (t, p) in enumerate(zip(truth, pred, strict=True)):
        save_indexed_png(tmp_path / "Annotations" / "v" / f"{i:05d}.png", t)
        if 0 < i < 2:  # the toolkit reads predictions of the scored frames only
            save_indexed_png(tmp_path / "results" / "v" / f"{i:05d}.png", p)
    from_files = score_folder(tmp_path / "Annotations", tmp_path / "results", ["v"])
    assert from_files == davis_j_and_f({"v": truth}, {"v": pred})
    assert np.array_equal(read_label_png(tmp_path / "results" / "v" / "00001.png"), pred[1])
    palette = davis_palette()
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    (tmp_path / "results" / "v" / "00001.png").unlink()
    with pytest.raises(DataError, match="no prediction"):
        score_folder(tmp_path / "Annotations", tmp_path / "results", ["v"])
