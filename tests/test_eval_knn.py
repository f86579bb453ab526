"""Weighted k-NN: hand-computed votes, separable data, chunking, any number of classes."""

import math

import torch
import torch.nn.functional as F

from dino.eval.knn import knn_classify, knn_predict_scores
from dino.eval.search import nearest_neighbours, search


def test_weighted_votes_match_a_hand_computation():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[2.0, 0.0]])  # normalised to (1, 0)
    scores = knn_predict_scores(train, labels, query, k=3, temperature=0.5, num_classes=2)
    # Cosine similarities 1, 0.8, 0, -1: the 3 nearest vote exp(sim / 0.5).
    expected = torch.tensor([[math.exp(2.0), math.exp(1.6) + math.exp(0.0)]])
    torch.testing.assert_close(scores, expected)


def test_perfect_on_separable_features():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(3, 16), dim=1) * 5
    train_y = torch.arange(60) % 3
    query_y = torch.arange(30) % 3
    train_x = centres[train_y] + 0.1 * torch.randn(60, 16)
    query_x = centres[query_y] + 0.1 * torch.randn(30, 16)
    results = knn_classify(train_x, train_y, query_x, query_y, ks=(1, 10, 20))
    assert [r.top1 for r in results] == [100.0] * 3
    assert all(r.top5 is None for r in results)  # 3 classes: top-5 means nothing


def test_chunked_equals_unchunked():
    torch.manual_seed(0)
    train_x, train_y = torch.randn(500, 32), torch.randint(0, 7, (500,))
    query_x, query_y = torch.randn(90, 32), torch.randint(0, 7, (90,))
    whole = knn_predict_scores(train_x, train_y, query_x, 20, chunk_size=10_000)
    chunked = knn_predict_scores(train_x, train_y, query_x, 20, chunk_size=16, train_chunk_size=37)
    # Same neighbours and votes; BLAS may round a dot product differently per block shape,
    # so scores agree to float precision and the predictions exactly.
    torch.testing.assert_close(whole, chunked)
    assert torch.equal(whole.argmax(dim=1), chunked.argmax(dim=1))
    args = (train_x, train_y, query_x, query_y, (1, 5, 20))
    assert knn_classify(*args, chunk_size=10_000) == knn_classify(
        *args, chunk_size=7, train_chunk_size=50
    )
    sims, idx = search(query_x, train_x, 5, query_block=16, db_block=64)
    full = F.normalize(query_x, dim=1) @ F.normalize(train_x, dim=1).T
    torch.testing.assert_close(sims, full.topk(5, dim=1).values)
    assert torch.equal(idx, full.topk(5, dim=1).indices)


def test_a_thousand_classes_and_k_above_the_bank_size():
    torch.manual_seed(0)
    train_y = torch.arange(2000) % 1000
    centres = torch.randn(1000, 64)
    train_x = centres[train_y] + 0.05 * torch.randn(2000, 64)
    query_y = torch.arange(1000)
    query_x = centres + 0.05 * torch.randn(1000, 64)
    results = knn_classify(train_x, train_y, query_x, query_y, ks=(10, 5000))
    assert results[0].top1 == 100.0 and results[0].top5 == 100.0
    assert results[1].k == 5000 and results[1].top5 is not None  # k capped at the 2000 items


def test_bf16_candidate_search_matches_the_float32_search():
    torch.manual_seed(0)
    centres = torch.randn(20, 64)
    train = torch.nn.functional.normalize(
        centres[torch.randint(0, 20, (3000,))] + torch.randn(3000, 64), dim=1
    )
    queries = torch.nn.functional.normalize(
        centres[torch.randint(0, 20, (200,))] + torch.randn(200, 64), dim=1
    )
    exact_sims, exact_idx = nearest_neighbours(train, queries, 20)
    sims, idx = nearest_neighbours(train, queries, 20, train.to(torch.bfloat16))
    # Similarities are re-scored in float32: exact for the neighbours found.
    torch.testing.assert_close(sims, (queries[:, None] * train[idx]).sum(-1))
    # The neighbours are the float32 ones but for near-ties at the k-th place.
    same = torch.tensor(
        [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(idx, exact_idx, strict=True)]
    )
    assert same.float().mean() >= 19.9
    torch.testing.assert_close(sims[:, :10], exact_sims[:, :10], atol=1e-3, rtol=0)
