"""Image retrieval: rank a database by cosine similarity, read ground truth (DINO section 4.2.1).

Ground truth names images by their path relative to the query / database folder, with or
without its extension, or by bare file name or stem when that is unique in the folder.
Three formats are read:

- JSON, a mapping ``{"query.jpg": {"ok": [...], "junk": [...]}}`` (``junk`` optional, or a
  plain list for ``ok``), or a list ``[{"query": "q.jpg", "ok": [...], "junk": [...]}]``;
- CSV, one row per relevant item: ``query,item`` or ``query,item,junk`` where the third
  column ``1`` / ``true`` / ``junk`` marks an item to ignore; an optional header row
  ``query,item[,junk]``;
- the revisited Oxford / Paris ``gnd_*.pkl`` (``imlist``, ``qimlist``, ``gnd`` with
  ``easy`` / ``hard`` / ``junk`` / ``bbx`` per query), read with an unpickler that builds
  nothing but plain containers and numpy arrays.
"""

from __future__ import annotations

import csv
import json
import math
import operator
import pickle
import reprlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dino.data.folder import ImageList
from dino.data.images import find_images, load_rgb
from dino.errors import DataError
from dino.eval.metrics import Relevance, relevance, revisited_relevance
from dino.eval.search import Rows, l2_normalize, n_rows, prepared, row_blocks


def rank_database(queries: Tensor, database: Rows, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Every database item for every query, most cosine-similar first.

    ``queries`` (Q, D), ``database`` (N, D) -> ``(similarities (Q, N), indices (Q, N))``.
    Holds (Q, N) results: for large collections see ``ranked_blocks`` or ``search``.
    """
    parts = list(ranked_blocks(queries, database, chunk_size))
    return torch.cat([s for _, s, _ in parts]), torch.cat([i for _, _, i in parts])


def ranked_blocks(
    queries: Rows, database: Rows, rows: int | None = None, memory: int = 2**30
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Full rankings a few queries at a time: ``(first query row, similarities (q, N),
    indices (q, N))``, most cosine-similar first. ``rows`` queries at a time (default: as
    many as fit in ``memory`` bytes of similarities and indices), so that exact mAP over a
    whole database never holds the (Q, N) matrix."""
    n = n_rows(database)
    rows = rows or max(1, memory // (12 * max(n, 1)))  # float32 + int64 per item
    q = prepared(queries, l2_normalize)  # (Q, D)
    for start in range(0, q.shape[0], rows):
        block = q[start : start + rows]
        sims = torch.empty(block.shape[0], n)
        for db_start, db in row_blocks(database, 65536):
            sims[:, db_start : db_start + db.shape[0]] = block @ l2_normalize(db).T
        s, i = sims.sort(dim=1, descending=True)  # (q, N)
        yield start, s, i


class NameIndex:
    """Find an item by its relative path, that path without extension, its name or its stem.

    ``names`` are the relative paths (``a/b.jpg``) of a folder's images, in dataset order.
    """

    def __init__(self, names: Sequence[str], where: str = "the folder") -> None:
        self.where = where
        self.keys: dict[str, int | None] = {}  # None: the key names several items
        for i, name in enumerate(names):
            rel = PurePosixPath(name)
            for key in {name, str(rel.with_suffix("")), rel.name, rel.stem}:
                self.keys[key] = i if self.keys.get(key, i) == i else None

    def __call__(self, name: str, source: str) -> int:
        name = str(name).strip()
        index = self.keys.get(name)
        if index is None:
            why = "names several images" if name in self.keys else "is not an image"
            raise DataError(f"{source}: {name!r} {why} of {self.where}")
        return index


def read_ground_truth(
    path: str | Path, queries: NameIndex, database: NameIndex
) -> dict[int, Relevance]:
    """Relevant and junk database indices per query index, from a JSON or CSV file."""
    return match_ground_truth(parse_ground_truth(path), path, queries, database)


def parse_ground_truth(path: str | Path) -> list[Entry]:
    """The (query, relevant items, junk items) names of a JSON or CSV file, not yet matched
    to images: a malformed file is refused before any feature is extracted."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such ground-truth file")
    return _read_csv(path) if path.suffix.lower() == ".csv" else _read_json(path)


def match_ground_truth(
    entries: list[Entry], path: str | Path, queries: NameIndex, database: NameIndex
) -> dict[int, Relevance]:
    """``entries`` (read from ``path``) as database indices per query index."""
    found: dict[int, tuple[set[int], set[int]]] = {}
    for query, items, junk in entries:
        ok_set, junk_set = found.setdefault(queries(query, str(path)), (set(), set()))
        ok_set.update(database(i, str(path)) for i in items)
        junk_set.update(database(i, str(path)) for i in junk)
    return {q: relevance(ok, junk) for q, (ok, junk) in found.items()}


Entry = tuple[str, list[str], list[str]]  # query, relevant items, junk items


def _read_json(path: Path) -> list[Entry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply for ground truth") from None
    if isinstance(data, Mapping):
        data = [
            {"query": q, **(v if isinstance(v, Mapping) else {"ok": v})} for q, v in data.items()
        ]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a mapping of queries or a list of entries")
    entries = []
    for n, entry in enumerate(data):
        if not isinstance(entry, Mapping) or "query" not in entry or "ok" not in entry:
            raise DataError(f"{path}: each entry needs 'query' and 'ok', got {_short(entry)}")
        where = f"{path}: entry {n} ({_short(entry['query'])})"
        entries.append(
            (
                _name(entry["query"], f"{where} query"),
                _names(entry["ok"], f"{where} 'ok'"),
                _names(entry.get("junk", []), f"{where} 'junk'"),
            )
        )
    return entries


def _names(items: Any, where: str) -> list[str]:
    if not isinstance(items, list):
        raise DataError(f"{where}: expected a list of image names, got {_short(items)}")
    return [_name(i, where) for i in items]


def _name(item: Any, where: str) -> str:
    """An image name: a string, or a number such as 12 for "12.jpg"."""
    if isinstance(item, str) or (isinstance(item, int | float) and not isinstance(item, bool)):
        return str(item)
    raise DataError(f"{where}: {_short(item)} is not an image name")


def _short(value: Any) -> str:
    """``repr(value)`` cut short: a malformed file's values can be huge or deeply nested."""
    return reprlib.repr(value)


def _read_csv(path: Path) -> list[Entry]:
    rows: list[tuple[int, list[str]]] = []  # (line of the file, cells)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                if row and any(c.strip() for c in row):
                    rows.append((reader.line_num, row))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None
    if rows and [c.strip().lower() for c in rows[0][1]] in (
        ["query", "item"],
        ["query", "item", "junk"],
    ):
        rows = rows[1:]
    entries = []
    for line, row in rows:
        if len(row) not in (2, 3):
            raise DataError(
                f"{path}: line {line} has {len(row)} columns, expected query,item[,junk]"
            )
        is_junk = len(row) == 3 and row[2].strip().lower() in ("1", "true", "yes", "junk")
        item = [row[1].strip()]
        entries.append((row[0].strip(), [] if is_junk else item, item if is_junk else []))
    return entries


@dataclass(frozen=True)
class RevisitedGroundTruth:
    """A revisited Oxford / Paris ``gnd_*.pkl``: database and query names, per-query sets."""

    imlist: list[str]  # database image names (no extension)
    qimlist: list[str]  # query image names
    easy: list[list[int]]  # per query, indices into imlist
    hard: list[list[int]]
    junk: list[list[int]]
    bbx: list[tuple[float, float, float, float] | None]  # query crop (x1, y1, x2, y2)

    def relevance(self, split: str) -> dict[int, Relevance]:
        """Per query index, the ground truth of the Easy, Medium or Hard split."""
        return {
            q: revisited_relevance(self.easy[q], self.hard[q], self.junk[q], split)
            for q in range(len(self.qimlist))
        }


class _ArraysOnly(pickle.Unpickler):
    """Builds plain containers and numpy arrays; any other class or function is refused."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to build {module}.{name}")
        return super().find_class(module, name)


def read_revisited(path: str | Path) -> RevisitedGroundTruth:
    """Read a revisited Oxford / Paris ground-truth pickle without running code from it.

    Raises DataError naming the file and the entry that is malformed: a name that is not a
    string, an index that is not an integer or not in ``imlist``, a box that is not four
    finite numbers with x1 < x2 and y1 < y2.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _ArraysOnly(f).load()
    except FileNotFoundError:
        raise DataError(f"{path}: no such ground-truth file") from None
    except Exception as e:  # whatever malformed bytes make the unpickler raise
        raise DataError(f"{path}: not a revisited ground-truth pickle ({e})") from None
    if not isinstance(data, Mapping) or not {"imlist", "qimlist", "gnd"} <= set(data):
        raise DataError(f"{path}: expected a mapping with imlist, qimlist and gnd")
    imlist = _name_list(data["imlist"], f"{path}: imlist")
    qimlist = _name_list(data["qimlist"], f"{path}: qimlist")
    gnd = data["gnd"]
    if not isinstance(gnd, list | tuple) or not all(isinstance(g, Mapping) for g in gnd):
        raise DataError(f"{path}: gnd must be a list of mappings, one per query, got {_short(gnd)}")
    if len(gnd) != len(qimlist):
        raise DataError(f"{path}: {len(gnd)} gnd entries for {len(qimlist)} queries")

    def indices(key: str) -> list[list[int]]:
        return [
            _indices(g.get(key, []), len(imlist), f"{path}: gnd[{q}][{key!r}]")
            for q, g in enumerate(gnd)
        ]

    return RevisitedGroundTruth(
        imlist,
        qimlist,
        indices("easy"),
        indices("hard"),
        indices("junk"),
        [_box(g.get("bbx"), f"{path}: gnd[{q}]['bbx']") for q, g in enumerate(gnd)],
    )


def _indices(values: Any, n: int, where: str) -> list[int]:
    """``values`` as indices into a list of ``n`` images."""
    if not _is_list(values):
        raise DataError(f"{where}: expected a list of indices into imlist, got {_short(values)}")
    out = []
    for value in values:
        try:
            i = operator.index(value)
        except TypeError:
            raise DataError(f"{where}: {_short(value)} is not an index") from None
        if not 0 <= i < n:
            raise DataError(f"{where}: index {i} is outside imlist (0..{n - 1})")
        out.append(i)
    return out


def _is_list(values: Any) -> bool:
    """A list, tuple or 1-d array (what the revisited files hold)."""
    return isinstance(values, list | tuple) or (isinstance(values, np.ndarray) and values.ndim == 1)


def _name_list(names: Any, where: str) -> list[str]:
    if not _is_list(names):
        raise DataError(f"{where}: expected a list of image names, got {_short(names)}")
    for name in names:
        if not isinstance(name, str):
            raise DataError(f"{where}: {_short(name)} is not an image name")
    return [str(n) for n in names]


def _box(box: Any, where: str) -> tuple[float, float, float, float] | None:
    """A query's crop (x1, y1, x2, y2), or None where there is none."""
    if box is None:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected 4 numbers x1, y1, x2, y2, got {_short(box)}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or not (x1 < x2 and y1 < y2):
        raise DataError(f"{where}: ({x1}, {y1}, {x2}, {y2}) is not a box with x1 < x2, y1 < y2")
    return x1, y1, x2, y2


def revisited_images(
    truth: RevisitedGroundTruth,
    database_root: str | Path,
    query_root: str | Path,
    transform: Callable[[Image.Image], Any],
    crop_queries: bool = False,
    follow_links: bool = False,
) -> tuple[ImageList, ImageList]:
    """(queries, database) in the order of ``qimlist`` / ``imlist``. Queries are whole
    images, as the reference's eval_image_retrieval.py reads them; ``crop_queries`` crops
    them to their ``bbx`` first, as the revisited benchmark's own code does."""
    database_root, query_root = Path(database_root), Path(query_root)
    db_files = find_images(database_root, follow_links)
    find_db = NameIndex(
        [f.relative_to(database_root).as_posix() for f in db_files], str(database_root)
    )
    database = [db_files[find_db(n, "imlist")] for n in truth.imlist]
    q_files = find_images(query_root, follow_links)
    find_q = NameIndex([f.relative_to(query_root).as_posix() for f in q_files], str(query_root))
    queries: list[Any] = []
    for name, box in zip(truth.qimlist, truth.bbx, strict=True):
        path = q_files[find_q(name, "qimlist")]
        queries.append(load_rgb(path).crop(box) if crop_queries and box is not None else path)
    return ImageList(queries, transform=transform), ImageList(database, transform=transform)
