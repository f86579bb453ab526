"""Search in blocks, the symmetric k-NN graph and faiss, each against the brute-force
definition; features read from memory-mapped shards."""

import builtins

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dino.errors import ConfigError
from dino.eval.search import knn_graph, search


def brute_force(queries, database, k):
    """The definition: every cosine similarity, sorted."""
    sims = F.normalize(queries, dim=1) @ F.normalize(database, dim=1).T
    return sims.topk(min(k, database.shape[0]), dim=1)


def test_blocked_search_equals_brute_force():
    torch.manual_seed(0)
    queries, database = torch.randn(70, 24), torch.randn(1000, 24) * 3
    expected_sims, expected_idx = brute_force(queries, database, 15)
    sims, idx = search(queries, database, 15, query_block=16, db_block=97)
    assert torch.equal(idx, expected_idx)
    torch.testing.assert_close(sims, expected_sims)
    sims, idx = search(queries, database[:7], 15)  # k above the database size
    assert sims.shape == (70, 7)


def test_search_reads_memory_mapped_shards(tmp_path):
    """Shards on disk (dino.eval.store's layout) are read block by block, in order."""
    torch.manual_seed(0)
    database = torch.randn(500, 16)
    shards = []
    for i, part in enumerate(database.split(180)):
        np.save(tmp_path / f"s{i}.npy", part.numpy())
        shards.append(np.load(tmp_path / f"s{i}.npy", mmap_mode="r"))
    queries = torch.randn(20, 16)
    sims, idx = search(queries, shards, 10, db_block=64)
    assert torch.equal(idx, brute_force(queries, database, 10).indices)


def test_knn_graph_equals_the_brute_force_graph():
    torch.manual_seed(0)
    x = torch.randn(300, 16)
    x[200:] = x[:100] + 0.3 * torch.randn(100, 16)  # some close pairs
    sims = F.normalize(x, dim=1) @ F.normalize(x, dim=1).T
    sims.fill_diagonal_(-torch.inf)
    expected = sims.topk(5, dim=1)
    got_sims, got_idx = knn_graph(x, 5, block=64)
    assert torch.equal(got_idx, expected.indices)
    torch.testing.assert_close(got_sims, expected.values)
    # Above a threshold: the same lists, cut there (places left empty: -inf, index -1).
    got_sims, got_idx = knn_graph(x, 5, threshold=0.8, block=64)
    above = expected.values >= 0.8
    assert torch.equal(got_idx[above], expected.indices[above])
    assert torch.all(got_idx[~above] == -1) and torch.all(got_sims[~above] == -torch.inf)


def test_faiss_index_gives_the_flat_neighbours():
    pytest.importorskip("faiss")
    torch.manual_seed(0)
    queries, database = torch.randn(30, 32), torch.randn(2000, 32)
    flat_sims, flat_idx = search(queries, database, 10)
    sims, idx = search(queries, [database[:900], database[900:]], 10, index="faiss")
    assert torch.equal(idx, flat_idx)
    torch.testing.assert_close(sims, flat_sims, rtol=0, atol=1e-5)


def test_without_faiss_the_error_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ConfigError, match=r"--index faiss: .*pip install 'dino\[scale\]'"):
        search(torch.randn(2, 4), torch.randn(5, 4), 2, index="faiss")
    with pytest.raises(ConfigError, match="unknown 'hnsw'; valid: flat, faiss"):
        search(torch.randn(2, 4), torch.randn(5, 4), 2, index="hnsw")
