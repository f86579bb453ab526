"""Embeddings on disk in formats that open without this package: ``.npy`` plus a name list."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor


def write_embeddings(output: str | Path, features: Tensor, names: Sequence[str]) -> list[Path]:
    """Write ``features`` (N, D) to ``output`` (float32 ``.npy``) and the N names, one a line
    in row order, to the same path with ``.txt``; returns both paths.

    Read back with ``np.load("emb.npy")`` and ``open("emb.txt").read().splitlines()``.
    """
    if features.shape[0] != len(names):
        raise ValueError(f"{features.shape[0]} feature rows but {len(names)} names")
    array_path = Path(output).with_suffix(".npy")
    names_path = array_path.with_suffix(".txt")
    array_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(array_path, features.float().numpy())
    names_path.write_text("".join(f"{n}\n" for n in names))
    return [array_path, names_path]
