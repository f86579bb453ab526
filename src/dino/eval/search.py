"""Top-k search by inner product, for retrieval, near-duplicate graphs and k-NN classification.

``search(queries, database, k)`` returns, for every query row, the k database rows with the
largest inner product after ``prepare`` (by default L2 normalisation: cosine similarity).
Two indexes give the same neighbours:

- ``flat`` (default): exact search in blocks. The database is visited ``db_block`` rows at a
  time and each block is compared with ``query_block`` queries at a time; the running top k
  of every query is merged with each block's. Memory holds the prepared queries (Q, D), one
  database block and one (query_block, db_block) similarity block, never the (Q, N) matrix:
  1,000 queries against 1,000,000 features of 384 dims need under 1 GiB beyond the features.
  On CPUs with bfloat16 units, each block's candidates come from a bfloat16 product and are
  re-scored in float32 (the similarities returned are exact; see ``nearest_neighbours``).
- ``faiss``: faiss's exact ``IndexFlatIP`` (on the GPUs faiss sees when ``device`` is cuda),
  from the optional ``scale`` extra (``pip install 'dino[scale]'``); it holds a float32
  copy of the prepared database.

``queries`` and ``database`` are tensors, numpy arrays (memory-mapped ones are read block by
block) or sequences of such row blocks in order (the shards of ``dino.eval.store``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dino.errors import ConfigError
from dino.hardware import cpu_has_fast_bf16

INDEXES = ("flat", "faiss")

Rows = Tensor | np.ndarray | Sequence[Tensor | np.ndarray]  # one matrix, or its row blocks
Prepare = Callable[[Tensor], Tensor]  # (M, D) float32 -> (M, D') float32, row by row


def l2_normalize(x: Tensor) -> Tensor:
    return F.normalize(x, dim=1)


def _parts(x: Rows) -> list[Tensor | np.ndarray]:
    return [x] if isinstance(x, (Tensor, np.ndarray)) else list(x)


def n_rows(x: Rows) -> int:
    """Number of rows of a matrix or of its row blocks together."""
    return sum(int(p.shape[0]) for p in _parts(x))


def row_blocks(x: Rows, rows: int) -> Iterator[tuple[int, Tensor]]:
    """``(first row, float32 CPU tensor of at most rows rows)`` over ``x`` in order; a
    memory-mapped array is read one block at a time."""
    start = 0
    for part in _parts(x):
        for i in range(0, int(part.shape[0]), rows):
            block = part[i : i + rows]
            if isinstance(block, np.ndarray):
                block = torch.from_numpy(np.array(block, dtype=np.float32))  # a copy: writable
            yield start + i, block.float()
        start += int(part.shape[0])


def prepared(x: Rows, prepare: Prepare, rows: int = 65536) -> Tensor:
    """All rows of ``x`` through ``prepare``, as one (M, D') float32 tensor."""
    return torch.cat([prepare(block) for _, block in row_blocks(x, rows)])


def search(
    queries: Rows,
    database: Rows,
    k: int,
    index: str = "flat",
    prepare: Prepare = l2_normalize,
    query_block: int = 1024,
    db_block: int = 65536,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """The k best database rows of every query: ``(similarities (Q, k'), indices (Q, k'))``,
    best first, with k' = min(k, N). See the module docstring for the indexes."""
    if index not in INDEXES:
        raise ConfigError(f"index: unknown {index!r}; valid: {', '.join(INDEXES)}")
    k = min(k, n_rows(database))
    if k <= 0:
        raise ConfigError("search: the database is empty")
    q = prepared(queries, prepare)  # (Q, D')
    if index == "faiss":
        return _faiss_search(q, database, k, prepare, db_block, torch.device(device))
    fast = cpu_has_fast_bf16() and torch.device(device).type == "cpu"
    best_sims = torch.full((q.shape[0], k), -torch.inf)
    best_idx = torch.full((q.shape[0], k), -1, dtype=torch.long)
    for start, raw in row_blocks(database, db_block):
        block = prepare(raw.to(device))  # (B, D')
        bf16 = block.to(torch.bfloat16) if fast and block.shape[0] > 4 * k else None
        for qs in range(0, q.shape[0], query_block):
            sims, idx = nearest_neighbours(block, q[qs : qs + query_block].to(device), k, bf16)
            sims, idx = sims.cpu(), idx.cpu() + start
            merged, pick = torch.cat((best_sims[qs : qs + query_block], sims), dim=1).topk(k, dim=1)
            best_idx[qs : qs + query_block] = torch.cat(
                (best_idx[qs : qs + query_block], idx), dim=1
            ).gather(1, pick)
            best_sims[qs : qs + query_block] = merged
    return best_sims, best_idx


def knn_graph(
    x: Rows,
    k: int,
    prepare: Prepare = l2_normalize,
    threshold: float = -math.inf,
    block: int = 4096,
) -> tuple[Tensor, Tensor]:
    """For every row of ``x`` (N, D), its k most similar other rows after ``prepare`` among
    those at ``threshold`` or above: ``(similarities (N, k'), indices (N, k'))``,
    k' = min(k, N - 1), best first; places left empty hold -inf and index -1.

    Exact. The similarity is symmetric, so each pair of ``block``-row blocks is multiplied
    once and serves both blocks' lists; only rows with a similarity at the threshold are
    ranked, so a high threshold (near-duplicates) costs little beyond the products. Memory:
    the prepared rows, the (N, k) lists and one (block, block) product.
    """
    xp = prepared(x, prepare)  # (N, D)
    n = xp.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        raise ConfigError("knn graph: needs at least 2 rows")
    sims = torch.full((n, k), -torch.inf)
    idx = torch.full((n, k), -1, dtype=torch.long)

    def merge(s: Tensor, first_row: int, first_col: int) -> None:
        """Merge the candidates of block ``s`` (rows from first_row, columns from
        first_col) into the lists of the rows that have one at the threshold."""
        rows = (s >= threshold).any(dim=1).nonzero().flatten()
        if not len(rows):
            return
        top_s, top_i = s[rows].topk(min(k, s.shape[1]), dim=1)
        at = rows + first_row
        both, pick = torch.cat((sims[at], top_s), dim=1).topk(k, dim=1)
        idx[at] = torch.cat((idx[at], top_i + first_col), dim=1).gather(1, pick)
        sims[at] = both

    for a in range(0, n, block):
        for b in range(a, n, block):
            s = xp[a : a + block] @ xp[b : b + block].T  # (block, block)
            if a == b:
                s.fill_diagonal_(-torch.inf)  # not its own neighbour
            merge(s, a, b)
            if a != b:
                merge(s.T, b, a)
    sims[sims < threshold] = -torch.inf
    idx[sims == -torch.inf] = -1
    return sims, idx


def nearest_neighbours(
    block: Tensor, queries: Tensor, k: int, block_bf16: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The k largest dot products of each query (q, D) with the rows of ``block`` (B, D):
    ``(similarities (q, k'), indices (q, k'))``, k' = min(k, B), best first.

    With ``block_bf16`` (``block`` in bfloat16), candidates come from a bfloat16 product, k
    plus a margin of them per query, and are re-scored in float32: the similarities are
    exact, and the neighbours differ from a float32 search only where two tie within
    bfloat16's precision (about 0.01) at the k-th place.
    """
    kk = min(k, block.shape[0])
    if block_bf16 is None:
        return (queries @ block.T).topk(kk, dim=1)  # (q, kk)
    rough = queries.to(torch.bfloat16) @ block_bf16.T  # (q, B)
    candidates = rough.topk(min(kk + _margin(kk), block.shape[0]), dim=1).indices
    sims, pick = _rescore(block, queries, candidates).topk(kk, dim=1)
    return sims, candidates.gather(1, pick)


def _margin(k: int) -> int:
    """Extra bfloat16 candidates per query, so that rounding rarely changes the top k."""
    return 16 + k // 8


def _rescore(block: Tensor, queries: Tensor, candidates: Tensor, rows: int = 128) -> Tensor:
    """Float32 dot products of each query with its candidate rows of ``block``: (q, m)."""
    out = torch.empty(candidates.shape, dtype=queries.dtype, device=queries.device)
    for i in range(0, queries.shape[0], rows):  # (rows, m, D) at a time bounds the memory
        picked = block[candidates[i : i + rows]]
        out[i : i + rows] = torch.einsum("qmd,qd->qm", picked, queries[i : i + rows])
    return out


def import_faiss(flag: str = "--index faiss") -> Any:
    """The faiss module, or a one-line error naming the extra that brings it."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            f"{flag}: faiss is not installed; pip install 'dino[scale]' (faiss-cpu), or "
            "faiss-gpu for GPUs"
        ) from None
    return faiss


def _faiss_search(
    queries: Tensor, database: Rows, k: int, prepare: Prepare, db_block: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    faiss = import_faiss()
    index = faiss.IndexFlatIP(queries.shape[1])
    if device.type == "cuda" and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    for _, block in row_blocks(database, db_block):
        index.add(np.ascontiguousarray(prepare(block).numpy(), dtype=np.float32))
    sims, idx = index.search(np.ascontiguousarray(queries.numpy(), dtype=np.float32), k)
    return torch.from_numpy(sims), torch.from_numpy(idx).long()
