"""``dino crops``: a PNG of the multi-crop views that ``dino train`` would make of a few
images, with the same flags (and ``--config``), so a user sees what the augmentation does
to their data before training on it."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import positive_int
from dino.cli.train import add_config_flags

OWN = ("output", "n_images", "cell")  # this command's options; the rest are dino train's


def add(sub: Any) -> None:
    """The ``crops`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "crops",
        help="a PNG of the multi-crop views of a few images (takes dino train's flags)",
        description="Draw the 2 global and N local crops dino train makes of a few images "
        "of --data_path (none: the demo images). Every dino train flag is accepted; the crop "
        "flags (--global_crop_size, --local_crop_size, --global_crops_scale, "
        "--local_crops_scale, --local_crops_number), --augment_on (device: the batched "
        "crops of training on the device; loader: the PIL pipeline) and --seed shape the "
        "picture.",
    )
    p.add_argument("--output", default="crops.png", help="PNG to write (default: crops.png)")
    p.add_argument("--n_images", type=positive_int, default=4, help="rows: images drawn at random")
    p.add_argument("--cell", type=positive_int, default=128, help="pixels per crop in the PNG")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import dataclasses
    from pathlib import Path

    from dino.cli.train import config_from_args
    from dino.data.device_augment import DeviceMultiCrop
    from dino.hardware import resolve_device
    from dino.progress import log
    from dino.training.builders import build_train_images
    from dino.training.plan import CropSpec, resolve_augment_on
    from dino.viz.crops import crop_grid, crop_views, device_crop_views

    config = config_from_args(
        argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in OWN})
    )
    augment_on = resolve_augment_on(config, resolve_device(config.device))
    spec = CropSpec.of(dataclasses.replace(config, augment_on=augment_on))
    images = build_train_images(config.data_path, spec, config.follow_links)
    if spec.on_device:
        multicrop = DeviceMultiCrop(
            spec.global_crops_scale,
            spec.local_crops_scale,
            spec.local_crops_number,
            spec.global_crop_size,
            spec.local_crop_size,
        )
        views = device_crop_views(images, args.n_images, config.seed, multicrop)
    else:
        views = crop_views(images, args.n_images, config.seed)
    caption = (
        f"global crops: 2 x {spec.global_crop_size} px, scale {_span(spec.global_crops_scale)}; "
        f"local crops: {spec.local_crops_number} x {spec.local_crop_size} px, "
        f"scale {_span(spec.local_crops_scale)}; seed {config.seed}; made on the "
        + ("device (batched)" if spec.on_device else "loader (PIL)")
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    crop_grid(views, args.cell, caption).save(args.output)
    source = config.data_path or "the demo images"
    log(f"{caption}\n{len(views)} images of {source} -> {args.output}")


def _span(scale: tuple[float, float]) -> str:
    return f"{scale[0]:g}-{scale[1]:g} of the area"
