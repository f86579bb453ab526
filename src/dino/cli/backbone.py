"""What every evaluation command does first: load the backbone, open folders, extract
features (through ``dino.eval.features.extract_features``), write CSV files."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from dino.data.folder import ImageList, image_folder, labelled_folder
from dino.data.images import BadImageError
from dino.distributed import init_distributed, is_main_process, local_device
from dino.errors import ConfigError, DataError
from dino.eval.features import FeatureFn, cls_features, extract_features
from dino.eval.load import describe_backbone, load_backbone, native_image_size, patch_multiple
from dino.hardware import autocast_dtype, resolve_device, resolve_precision
from dino.progress import log, warn


@dataclass(frozen=True)
class Backbone:
    """A loaded backbone and how to run it."""

    model: nn.Module
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None: fp32
    image_size: int


def open_backbone(args: argparse.Namespace) -> Backbone:
    """Load ``--checkpoint`` strictly onto ``--device``; say what was built."""
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    init_distributed(device.type)  # under torchrun: each process extracts its share
    device = local_device(device.type)
    model = load_backbone(
        args.checkpoint, args.checkpoint_key, args.arch, args.patch_size, args.trust_checkpoint
    )
    size = args.image_size or native_image_size(model)
    if size % (multiple := patch_multiple(model)):
        raise ConfigError(f"image_size: expected a multiple of {multiple} (patch size), got {size}")
    log(
        f"{args.checkpoint} [{args.checkpoint_key}]: {describe_backbone(model)}; "
        f"{device.type} {precision}, inputs {size} px"
    )
    return Backbone(model.to(device), device, autocast_dtype(precision), size)


def features_of(
    b: Backbone,
    dataset: ImageList,
    args: argparse.Namespace,
    desc: str,
    features: FeatureFn = cls_features,
) -> tuple[Tensor, ImageList]:
    """Features (M, D) of the readable images of ``dataset``, and ``dataset`` narrowed to them.

    Files that cannot be decoded are reported once and left out, with their labels.
    """
    try:
        out = extract_features(
            b.model, dataset, b.device, args.batch_size, args.num_workers, b.dtype, features, desc
        )
    except BadImageError as e:
        raise DataError(f"{desc}: {e}") from None
    if out.skipped:
        shown = "; ".join(out.skipped[:5]) + (" ..." if len(out.skipped) > 5 else "")
        warn(f"{desc}: left out {len(out.skipped)} unreadable image(s): {shown}")
        return out.features, dataset.subset(out.index.tolist())
    return out.features, dataset


def open_folder(
    flag: str,
    path: str,
    transform: Callable[[Image.Image], Any],
    labelled: bool = False,
    classes: Sequence[str] | None = None,
) -> ImageList:
    """An image folder (labelled: one subfolder per class); problems name the flag."""
    try:
        if labelled:
            return labelled_folder(path, transform, classes)
        return image_folder(path, transform)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{flag}: {e}") from None


def names_of(dataset: ImageList, root: str) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in dataset.images]  # type: ignore[arg-type]


def write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if not is_main_process():
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows(rows)


def write_rankings(
    path: str,
    sims: Tensor,
    ranking: Tensor,
    query_names: Sequence[str],
    db_names: Sequence[str],
    top: int,
) -> None:
    """CSV rows query,rank,item,similarity for the ``top`` best items of every query."""
    best, scores = ranking[:, :top].tolist(), sims[:, :top].tolist()
    rows = [
        (name, r + 1, db_names[i], f"{s:.6f}")
        for name, items, sim in zip(query_names, best, scores, strict=True)
        for r, (i, s) in enumerate(zip(items, sim, strict=True))
    ]
    write_csv(path, ["query", "rank", "item", "similarity"], rows)
