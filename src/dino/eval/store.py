"""Features on disk for collections larger than memory: memory-mapped ``.npy`` shards,
written as extraction goes, and an interrupted extraction resumes at the first missing shard.

A store is a folder:

    store.json          what was extracted (checked on resume), item count, shard size, classes
    names.jsonl         every item's name, one JSON string a line, in collection order (a
                        name may hold a line break); stores of format 1 have names.txt,
                        one name a line, and are still read
    features-00000.npy  float32 (M_i, D): the readable items of rows [i S, (i + 1) S)
    items-00000.npy     int64 (M_i, 2): their position in the collection and their label

Every file is written under a temporary name and renamed, and a shard counts as done once
its ``items`` file exists, so a killed extraction loses at most the shard in progress.
``np.load("features-00000.npy", mmap_mode="r")`` needs nothing of this package.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from dino.data.images import BadImageError
from dino.distributed import barrier, is_distributed, is_main_process
from dino.errors import ConfigError, DataError
from dino.eval.features import FeatureFn, Features, cls_features, extract_features
from dino.progress import log

STORE_FILE = "store.json"
NAMES_FILE = "names.jsonl"  # format 2; format 1 stores have names.txt, one name a line


@dataclass(frozen=True)
class FeatureSet:
    """Features of the readable items of a collection, as row blocks in order (memory-mapped
    shards, or one array), with each row's name and label (-1: none)."""

    blocks: list[np.ndarray]  # (M_i, D) each
    names: list[str]  # (M,)
    labels: np.ndarray  # (M,) int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return int(self.blocks[0].shape[1]) if self.blocks else 0

    def tensor(self) -> Tensor:
        """All rows in memory, (M, D) float32: for sets that fit (queries, whitening)."""
        return torch.from_numpy(np.concatenate([np.asarray(b) for b in self.blocks]))

    @staticmethod
    def of(
        x: Tensor,
        names: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        classes: Sequence[str] = (),
    ) -> FeatureSet:
        """An in-memory set: features ``x`` (M, D) with a name and label per row."""
        return FeatureSet(
            [x.float().numpy()], list(names), np.asarray(labels, np.int64), list(classes)
        )


def extract_to_store(
    model: nn.Module,
    dataset: Dataset,
    folder: str | Path,
    names: Sequence[str],
    what: dict[str, Any],
    shard_size: int = 10_000,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    num_workers: int = 0,
    dtype: torch.dtype | None = None,
    features: FeatureFn = cls_features,
    desc: str = "features",
) -> tuple[FeatureSet, list[str]]:
    """Extract the features of ``dataset`` (``(image, label)`` items named ``names``) into
    the store ``folder``, skipping the shards already there; returns the whole set (memory
    mapped) and the "path: reason" of the images left out by this call.

    ``what`` (plain values: checkpoint, feature head, input size, ...) is saved and must
    match on resume, as must the names; a store of other features is refused.
    """
    folder = Path(folder)
    count = len(dataset)  # type: ignore[arg-type]
    if count != len(names):
        raise ValueError(f"{count} items but {len(names)} names")
    meta = {
        "format": 2,
        "count": count,
        "shard_size": shard_size,
        "names_sha1": hashlib.sha1("\n".join(names).encode("utf-8", "surrogatepass")).hexdigest(),
        "what": what,
        "classes": list(getattr(dataset, "classes", [])),
    }
    _start_or_check(folder, meta, names)
    skipped: list[str] = []
    shards = range(0, (count + shard_size - 1) // shard_size)
    todo = [i for i in shards if not (folder / f"items-{i:05d}.npy").exists()]
    if is_distributed():
        barrier()  # every process has its list before the first process writes a shard
    if len(todo) < len(shards):
        log(f"{folder}: {len(shards) - len(todo)} of {len(shards)} shards already extracted")
    for i in todo:
        rows = range(i * shard_size, min((i + 1) * shard_size, count))
        title = f"{desc} (shard {i + 1}/{len(shards)})" if len(shards) > 1 else desc
        try:
            out = extract_features(
                model,
                Subset(dataset, rows),
                device,
                batch_size,
                num_workers,
                dtype,
                features,
                title,
            )
        except BadImageError as e:  # not one readable image in the shard
            none = torch.empty(0, dtype=torch.long)
            out = Features(torch.empty(0, _dim(folder)), none, none, [f"shard {i}: {e}"])
        skipped += out.skipped
        if is_main_process():
            items = torch.stack((out.index + rows.start, out.labels), dim=1).numpy()
            _save_npy(folder / f"features-{i:05d}.npy", out.features.numpy())
            _save_npy(folder / f"items-{i:05d}.npy", items)  # last: the shard is done
    if is_distributed():
        barrier()
    return open_store(folder), skipped


def _dim(folder: Path) -> int:
    done = sorted(folder.glob("features-*.npy"))
    if not done:
        raise DataError(f"{folder}: none of the images of the first shard could be read")
    return int(np.load(done[0], mmap_mode="r").shape[1])


def _start_or_check(folder: Path, meta: dict[str, Any], names: Sequence[str]) -> None:
    path = folder / STORE_FILE
    if path.exists():
        saved = _read_meta(folder)
        for key, value in meta.items():
            if key != "format" and saved.get(key) != value:  # format 1 stores resume too
                raise ConfigError(
                    f"{folder}: holds other features ({key}: {saved.get(key)!r}, this run: "
                    f"{value!r}); use another folder"
                )
        return
    if not is_main_process():
        return
    folder.mkdir(parents=True, exist_ok=True)
    _write_text(folder / NAMES_FILE, "".join(json.dumps(n) + "\n" for n in names))
    _write_text(path, json.dumps(meta, indent=1))  # last: the store exists


def open_store(folder: str | Path) -> FeatureSet:
    """The features of a store, memory-mapped; every shard must have been extracted. A
    malformed file stops here with a DataError naming it (nothing is read past it)."""
    folder = Path(folder)
    if not (folder / STORE_FILE).is_file():
        raise ConfigError(f"{folder}: no features stored here ({STORE_FILE} missing)")
    meta = _read_meta(folder)
    names = _read_names(folder)
    n_shards = (meta["count"] + meta["shard_size"] - 1) // meta["shard_size"]
    blocks: list[np.ndarray] = []
    items: list[np.ndarray] = []
    for i in range(n_shards):
        if not (folder / f"items-{i:05d}.npy").exists():
            raise DataError(f"{folder}: shard {i} of {n_shards} is missing; extract again")
        block, rows = _read_shard(folder, i)
        if blocks and block.shape[0] and blocks[0].shape[1] != block.shape[1]:
            raise DataError(
                f"{folder}: shard {i} has {block.shape[1]} dims, shard 0 {blocks[0].shape[1]}"
            )
        if rows.size and (rows[:, 0].min() < 0 or rows[:, 0].max() >= len(names)):
            raise DataError(f"{folder}: shard {i} names items beyond the {len(names)} names")
        blocks.append(block)
        items.append(rows)
    rows = np.concatenate(items) if items else np.empty((0, 2), np.int64)
    return FeatureSet(
        [b for b in blocks if b.shape[0]],
        [names[i] for i in rows[:, 0]],
        rows[:, 1].copy(),
        list(meta["classes"]),
    )


def _read_meta(folder: Path) -> dict[str, Any]:
    """``store.json``, checked: a count, a positive shard size and class names."""
    path = folder / STORE_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: not readable as JSON ({e})") from None
    ok = (
        isinstance(meta, dict)
        and _is_int(meta.get("count"), 0)
        and _is_int(meta.get("shard_size"), 1)
        and isinstance(meta.setdefault("classes", []), list)
        and all(isinstance(c, str) for c in meta["classes"])
    )
    if not ok:
        raise DataError(
            f"{path}: not a feature store's description (expected count >= 0, shard_size "
            ">= 1 and a list of class names); extract again into an empty folder"
        )
    return meta


def _is_int(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _read_names(folder: Path) -> list[str]:
    path = folder / NAMES_FILE if (folder / NAMES_FILE).exists() else folder / "names.txt"
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        if path.name == "names.txt":
            return text.splitlines()  # format 1
        names = [json.loads(line) for line in text.splitlines()]
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not readable ({e}); extract again") from None
    if not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: expected one JSON string a line")
    return names


def _read_shard(folder: Path, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Shard ``i``'s features (M, D) floats, memory-mapped, and items (M, 2) integers
    (index, label); a DataError names the file that is not that."""
    features, items = folder / f"features-{i:05d}.npy", folder / f"items-{i:05d}.npy"
    try:
        block = np.load(features, mmap_mode="r")  # pickled objects are refused
        rows = np.load(items)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{folder}: shard {i} is not readable ({e}); extract again") from None
    if block.ndim != 2 or block.dtype.kind != "f":
        raise DataError(f"{features}: expected (N, D) floats, got {block.dtype} {block.shape}")
    if rows.ndim != 2 or rows.shape != (block.shape[0], 2) or rows.dtype.kind not in "iu":
        raise DataError(
            f"{items}: expected ({block.shape[0]}, 2) integers (one row a feature), "
            f"got {rows.dtype} {rows.shape}"
        )
    return block, rows


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_reference_knn_dump(folder: str | Path) -> tuple[FeatureSet, FeatureSet]:
    """(train, test) features saved by the reference's eval_knn.py ``--dump_features``:
    trainfeat.pth, testfeat.pth (L2-normalised, (N, D)) and trainlabels.pth,
    testlabels.pth, read weights-only. Rows are named by their position."""
    from dino.checkpoint import check_finite, load_file

    folder = Path(folder)

    def split(name: str) -> FeatureSet:
        x, y = load_file(folder / f"{name}feat.pth"), load_file(folder / f"{name}labels.pth")
        if not isinstance(x, Tensor) or not isinstance(y, Tensor) or len(x) != len(y):
            raise DataError(f"{folder}: {name}feat.pth / {name}labels.pth are not matching tensors")
        if x.ndim != 2 or y.ndim != 1 or not x.is_floating_point():
            raise DataError(
                f"{folder}: {name}feat.pth must be (N, D) floats, {name}labels.pth (N,)"
            )
        check_finite({f"{name}feat.pth": x}, str(folder))
        return FeatureSet.of(x.cpu(), [str(i) for i in range(len(x))], y.cpu().long().numpy())

    return split("train"), split("test")
