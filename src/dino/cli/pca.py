"""``dino pca``: pictures of the first principal components of the patch features
(DINOv2's figure 1) for one image or the images of a folder."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import add_backbone_flags, positive_int


def add(sub: Any) -> None:
    """The ``pca`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "pca",
        help="PNGs of the first principal components of the patch features (DINOv2 style)",
        description="Each image (resized and centre-cropped to --image_size, as dino embed "
        "sees it) beside its patches coloured by the first three principal components of the "
        "foreground patches; the foreground is where the first component of all patches, "
        "scaled to [0, 1], reaches --threshold. Components are fitted on all images jointly, "
        "so colours mean the same in every picture.",
    )
    add_backbone_flags(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="an image file")
    source.add_argument("--data_path", help="a folder of images, searched recursively")
    p.add_argument("--output_dir", default="pca", help="gets one <image name>.png per image")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="foreground: first component (scaled to [0, 1]) at least this; 0 keeps all",
    )
    p.add_argument(
        "--max_images", type=positive_int, default=100, help="the first this many of a folder"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from torchvision import transforms as T

    from dino.cli.backbone import features_of, names_of, open_backbone, open_folder
    from dino.data.folder import ImageList
    from dino.data.transforms import eval_transform
    from dino.distributed import is_main_process
    from dino.errors import ConfigError
    from dino.eval.features import feature_head
    from dino.progress import log
    from dino.viz.pca import foreground, pca_colours, save_pca_pictures

    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"threshold: expected a number in [0, 1], got {args.threshold}")
    b = open_backbone(args)
    transform = eval_transform(b.image_size)
    if args.image is not None:
        if not Path(args.image).is_file():
            raise ConfigError(f"--image: no such file {args.image}")
        images, root = ImageList([Path(args.image)], transform=transform), Path(args.image).parent
    else:
        images = open_folder(
            "--data_path", args.data_path, transform, follow_links=args.follow_links
        )
        root = Path(args.data_path)
        if len(images) > args.max_images:
            log(f"--data_path: the first {args.max_images} of {len(images)} images")
            images = images.subset(range(args.max_images))
    tokens, images = features_of(b, images, args, "patch features", feature_head("patch"))
    if not is_main_process():
        return
    mask = foreground(tokens, args.threshold)  # (N, h, w)
    colours = pca_colours(tokens, mask)
    shown = T.Compose(transform.transforms[:2])  # type: ignore[attr-defined]  # resize, crop
    pictures = [shown(images.load(i)) for i in range(len(images))]
    written = save_pca_pictures(pictures, colours, names_of(images, str(root)), args.output_dir)
    log(
        f"{len(written)} pictures of {tokens.shape[1]}x{tokens.shape[2]} patches "
        f"({mask.float().mean():.0%} foreground at --threshold {args.threshold}) in "
        f"{args.output_dir}"
    )
