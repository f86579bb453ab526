"""Embeddings on disk in formats that open without this package: ``.npy`` plus a name list.

The names go to a JSON-lines file, one JSON string a line, so that every name stays on its
row: a file name may hold a line break, and bytes that are not UTF-8 (which Python reads as
lone surrogates; ``os.fsencode(name)`` gives the bytes back), and JSON escapes both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor


def names_path(output: str | Path) -> Path:
    """Where ``write_embeddings(output, ...)`` puts the names: FILE.jsonl beside FILE.npy."""
    return Path(output).with_suffix(".jsonl")


def write_embeddings(output: str | Path, features: Tensor, names: Sequence[str]) -> list[Path]:
    """Write ``features`` (N, D) to ``output`` with the suffix ``.npy`` (float32) and the N
    names, one JSON string a line in row order, to ``names_path(output)``; returns both paths.

    Read back with ``np.load("emb.npy")`` and ``[json.loads(line) for line in
    open("emb.jsonl")]``, or ``read_embeddings``.
    """
    if features.shape[0] != len(names):
        raise ValueError(f"{features.shape[0]} feature rows but {len(names)} names")
    array_path = Path(output).with_suffix(".npy")
    array_path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(n) + "\n" for n in names)  # ASCII: \n, \u2028 ... escaped
    names_path(array_path).write_text(lines, encoding="ascii")
    np.save(array_path, features.float().numpy())
    return [array_path, names_path(array_path)]


def read_embeddings(output: str | Path) -> tuple[np.ndarray, list[str]]:
    """The (N, D) array and the N names ``write_embeddings(output, ...)`` wrote; the one-name-
    a-line ``.txt`` of earlier versions is read where there is no ``.jsonl``."""
    array_path = Path(output).with_suffix(".npy")
    array, listing = np.load(array_path), names_path(array_path)
    if listing.exists():
        names = [json.loads(line) for line in listing.read_text(encoding="ascii").splitlines()]
    else:
        names = array_path.with_suffix(".txt").read_text().splitlines()
    return array, names
