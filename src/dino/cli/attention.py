"""``dino attention``: PNG maps of the last block's [CLS] attention (DINO figure 1)."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import add_backbone_flags


def add(sub: Any) -> None:
    """The ``attention`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("attention", help="PNG maps of the last block's [CLS] attention")
    add_backbone_flags(p, loader=False)
    p.add_argument("--image", required=True, help="an image file of any size")
    p.add_argument("--output_dir", default="attention", help="where the PNGs go")
    p.add_argument("--threshold", type=float, default=0.6, help="mass kept by the masks")
    p.add_argument("--interpolation", default="bilinear", choices=["nearest", "bilinear"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from dino.cli.backbone import open_backbone
    from dino.data.images import load_rgb
    from dino.distributed import is_main_process
    from dino.errors import DataError
    from dino.eval.attention import attention_input, cls_attention, save_attention_maps
    from dino.eval.load import patch_multiple
    from dino.progress import log

    b = open_backbone(args)
    try:
        image = load_rgb(args.image)
    except (OSError, ValueError) as e:
        raise DataError(f"--image: cannot read {args.image} ({e})") from None
    x = attention_input(image, patch_multiple(b.model), b.image_size)
    maps = cls_attention(b.model, x.to(b.device)).cpu()  # (heads, h, w)
    if not is_main_process():
        return
    paths = save_attention_maps(image, maps, args.output_dir, args.threshold, args.interpolation)
    log(
        f"{maps.shape[0]} heads on a {maps.shape[1]}x{maps.shape[2]} patch grid: {len(paths)} "
        f"PNGs of {image.width}x{image.height} px in {args.output_dir}"
    )
