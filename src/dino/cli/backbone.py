"""What every evaluation command does first: load the backbone, open folders, extract
features (through ``dino.eval.features.extract_features``), write CSV files."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from dino.cli import outputs
from dino.data.folder import ImageList, image_folder, labelled_folder
from dino.data.images import BadImageError
from dino.distributed import init_distributed, is_main_process, local_device
from dino.errors import ConfigError, DataError
from dino.eval.features import FeatureFn, Features, cls_features, extract_features
from dino.eval.load import (
    describe_backbone,
    input_channels,
    load_backbone,
    native_image_size,
    patch_multiple,
)
from dino.eval.store import FeatureSet, extract_to_store, open_store
from dino.hardware import autocast_dtype, resolve_device, resolve_precision
from dino.progress import log, warn


@dataclass(frozen=True)
class Backbone:
    """A loaded backbone and how to run it."""

    model: nn.Module
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None: fp32
    image_size: int
    channels: int = 3  # image channels the backbone takes (--in_chans of its training)


def open_backbone(
    args: argparse.Namespace,
    any_size: bool = False,
    default_size: Callable[[nn.Module], int] | None = None,
    any_channels: bool = False,
) -> Backbone:
    """Load ``--checkpoint`` strictly onto ``--device``; say what was built.

    The input size is ``--image_size``, else ``default_size(model)``, else the size the
    checkpoint was trained at. It must be a multiple of the patch size unless ``any_size``
    (protocols whose inputs the ViT crops to whole patches, as the reference's does).
    A backbone trained on other than RGB images (``--in_chans``) is refused unless
    ``any_channels`` (commands that read images with the backbone's channel count).
    """
    if args.checkpoint is None:
        raise ConfigError("--checkpoint: required (or --load_features DIR)")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    init_distributed(device.type)  # under torchrun: each process extracts its share
    device = local_device(device.type)
    model = load_backbone(
        args.checkpoint, args.checkpoint_key, args.arch, args.patch_size, args.trust_checkpoint
    )
    channels = input_channels(model)
    if channels != 3 and not any_channels:
        raise ConfigError(
            f"--checkpoint: {args.checkpoint} takes {channels}-channel images (--in_chans "
            f"{channels}); this command reads RGB images only (knn, linear and embed read any)"
        )
    size = args.image_size or (default_size or native_image_size)(model)
    if size % (multiple := patch_multiple(model)) and not any_size:
        raise ConfigError(f"image_size: expected a multiple of {multiple} (patch size), got {size}")
    log(
        f"{args.checkpoint} [{args.checkpoint_key}]: {describe_backbone(model)}; "
        f"{device.type} {precision}, inputs {size} px"
    )
    return Backbone(model.to(device), device, autocast_dtype(precision), size, channels)


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
    out = _extract(b, dataset, args, desc, features)
    if out.skipped:
        return out.features, dataset.subset(out.index.tolist())
    return out.features, dataset


def _extract(
    b: Backbone, dataset: ImageList, args: argparse.Namespace, desc: str, features: FeatureFn
) -> Features:
    try:
        out = extract_features(
            b.model, dataset, b.device, args.batch_size, args.num_workers, b.dtype, features, desc
        )
    except BadImageError as e:
        raise DataError(f"{desc}: {e}") from None
    _report_skipped(desc, out.skipped)
    return out


def _report_skipped(desc: str, skipped: list[str]) -> None:
    if skipped:
        shown = "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warn(f"{desc}: left out {len(skipped)} unreadable image(s): {shown}")


def collection(
    b: Backbone,
    dataset: ImageList,
    args: argparse.Namespace,
    desc: str,
    names: Sequence[str],
    features: FeatureFn = cls_features,
    store: Path | None = None,
    what: dict[str, Any] | None = None,
) -> FeatureSet:
    """Features of the readable images of ``dataset`` (named ``names``), in memory, or with
    ``store`` in memory-mapped shards there (resuming an interrupted extraction); ``what``
    identifies the features in the store."""
    if store is None:
        out = _extract(b, dataset, args, desc, features)
        rows = out.index.tolist()
        return FeatureSet.of(
            out.features, [names[i] for i in rows], out.labels.numpy(), dataset.classes
        )
    try:
        stored, skipped = extract_to_store(
            b.model, dataset, store, names, what or {}, args.shard_size, b.device,
            args.batch_size, args.num_workers, b.dtype, features, desc,
        )  # fmt: skip
    except BadImageError as e:
        raise DataError(f"{desc}: {e}") from None
    _report_skipped(desc, skipped)
    return stored


def store_what(args: argparse.Namespace, b: Backbone, **extra: Any) -> dict[str, Any]:
    """What identifies a command's features in a store: checkpoint, entry, input size, ..."""
    checkpoint = str(Path(args.checkpoint).resolve())
    return {"checkpoint": checkpoint, "checkpoint_key": args.checkpoint_key,
            "image_size": b.image_size, **extra}  # fmt: skip


def load_collection(folder: str, name: str) -> FeatureSet:
    """The features of one collection dumped under ``--load_features folder``."""
    return open_store(Path(folder) / name)


def open_folder(
    flag: str,
    path: str,
    transform: Callable[[Image.Image], Any],
    labelled: bool = False,
    classes: Sequence[str] | None = None,
    channels: int = 3,
    follow_links: bool = False,
) -> ImageList:
    """An image folder (labelled: one subfolder per class) of ``channels``-channel images;
    problems name the flag."""
    if not path.strip():  # Path("") is the current folder
        raise ConfigError(f"{flag}: expected a folder, got {path!r}")
    try:
        if labelled:
            return labelled_folder(path, transform, classes, channels, follow_links)
        return image_folder(path, transform, channels, follow_links)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{flag}: {e}") from None


def names_of(dataset: ImageList, root: str) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in dataset.images]  # type: ignore[arg-type]


def write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """``outputs.write_csv`` (cells quoted against formulas) on the main process only."""
    if is_main_process():
        outputs.write_csv(path, header, rows)


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
