"""Accuracy, AP and mP@k against values computed by hand."""

import math

import numpy as np
import pytest
import torch

from dino.eval.metrics import (
    average_precision,
    positive_ranks,
    precision_at_k,
    relevance,
    retrieval_scores,
    revisited_relevance,
    topk_accuracy,
)


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]])
    targets = torch.tensor([2, 0, 1])
    top1, top2 = topk_accuracy(scores, targets, (1, 2))
    # Row 0 ranks 1, 2, 0; row 1 ranks 2, 0, 1 (tie towards the lower index); row 2 ranks 0, 1, 2.
    assert top1 == 0.0
    assert top2 == pytest.approx(100.0)


def test_average_precision_by_hand():
    # Relevant items at ranks 0 and 2 of 2: trapezoids (1 + 1)/2 * 1/2 + (1/2 + 2/3)/2 * 1/2.
    assert average_precision(np.array([0, 2]), 2) == pytest.approx(0.5 + 7 / 24)
    # One of two relevant items never retrieved: only the first step counts.
    assert average_precision(np.array([1]), 2) == pytest.approx((0 + 0.5) / 2 / 2)
    assert average_precision(np.array([0, 1, 2]), 3) == pytest.approx(1.0)
    assert average_precision(np.array([], dtype=np.int64), 3) == 0.0


def test_precision_at_k_by_hand():
    ranks = np.array([1, 2])  # 1-based positions 2 and 3
    assert precision_at_k(ranks, 1) == 0.0
    assert precision_at_k(ranks, 2) == pytest.approx(1 / 2)
    # k = 5 is capped at 3, the position of the last relevant item retrieved.
    assert precision_at_k(ranks, 5) == pytest.approx(2 / 3)
    assert precision_at_k(np.array([0, 1]), 10) == 1.0
    assert precision_at_k(np.array([], dtype=np.int64), 5) == 0.0


def test_junk_is_removed_before_ranking():
    ranking = np.array([3, 1, 0, 5, 2, 4])
    truth = relevance(ok=[0, 2], junk=[1, 5])
    # Without the junk items 1 and 5 the ranking is 3, 0, 2, 4: relevant at ranks 1 and 2.
    np.testing.assert_array_equal(positive_ranks(ranking, truth), [1, 2])
    scores = retrieval_scores(ranking[None], {0: truth}, ks=(1, 5))
    ap = (0 + 1 / 2) / 2 / 2 + (1 / 2 + 2 / 3) / 2 / 2
    assert scores.mean_ap == pytest.approx(100 * ap)
    assert scores.mean_precision == {1: 0.0, 5: pytest.approx(100 * 2 / 3)}


def test_retrieval_scores_average_queries_and_skip_those_without_relevant_items():
    rankings = np.array([[0, 1, 2], [2, 1, 0], [0, 1, 2]])
    truths = {0: relevance([0]), 1: relevance([0]), 2: relevance([], junk=[1])}
    scores = retrieval_scores(rankings, truths, ks=(1,))
    # Query 0: AP 1. Query 1: its relevant item at rank 2, AP = (0/2 + 1/3) / 2.
    assert scores.n_queries == 2
    assert scores.mean_ap == pytest.approx(100 * (1 + 1 / 6) / 2)
    assert scores.mean_precision[1] == pytest.approx(50.0)
    assert math.isnan(retrieval_scores(rankings, {}, ks=(1,)).mean_ap)


def test_revisited_splits():
    easy, hard, junk = [0, 1], [2], [3]
    assert revisited_relevance(easy, hard, junk, "easy") == relevance([0, 1], [2, 3])
    assert revisited_relevance(easy, hard, junk, "medium") == relevance([0, 1, 2], [3])
    assert revisited_relevance(easy, hard, junk, "hard") == relevance([2], [0, 1, 3])
    # A hard query whose easy images rank first loses nothing for them: they are junk.
    ranking = np.array([0, 1, 4, 2, 3])
    hard_truth = revisited_relevance(easy, hard, junk, "hard")
    np.testing.assert_array_equal(positive_ranks(ranking, hard_truth), [1])
    with pytest.raises(ValueError, match="valid: easy, medium, hard"):
        revisited_relevance(easy, hard, junk, "extreme")
