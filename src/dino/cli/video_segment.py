"""``dino video-segment``: video object segmentation by label propagation, scored with DAVIS
2017 J and F (DINO section 4.2.3; the reference's ``eval_video_segmentation.py``)."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import add_backbone_flags, non_negative_int, positive_int


def add(sub: Any) -> None:
    """The ``video-segment`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "video-segment",
        help="segment videos by propagating their first frame's mask; DAVIS J&F",
    )
    add_backbone_flags(
        p,
        loader=False,
        image_size=(480, "short side of the frames in pixels (default 480)"),
        folders=False,
    )
    g = p.add_argument_group("videos")
    g.add_argument(
        "--data_path",
        required=True,
        help="a DAVIS 2017 layout: JPEGImages/<resolution>/<video>/*.jpg, Annotations/"
        "<resolution>/<video>/*.png (the first frame's at least), ImageSets/2017/*.txt",
    )
    g.add_argument("--videos", nargs="+", default=None, help="these videos (default: --imageset)")
    g.add_argument(
        "--imageset",
        default="ImageSets/2017/val.txt",
        help="list of videos, relative to --data_path (default: ImageSets/2017/val.txt)",
    )
    g.add_argument("--resolution", default="480p", help="folder under JPEGImages and Annotations")
    g.add_argument(
        "--output_dir", default="video_segmentation", help="gets <video>/<frame>.png and scores"
    )
    g = p.add_argument_group("label propagation")
    g.add_argument(
        "--n_last_frames", type=non_negative_int, default=7, help="recent frames in the context"
    )
    g.add_argument(
        "--size_mask_neighborhood",
        type=non_negative_int,
        default=12,
        help="window radius in patches (0: the whole frame)",
    )
    g.add_argument("--topk", type=positive_int, default=5, help="neighbours whose labels count")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dino.cli.backbone import open_backbone, write_csv
    from dino.data.davis import read_davis_video, read_label_png, save_indexed_png, video_names
    from dino.distributed import is_main_process
    from dino.eval.davis import score_folder
    from dino.eval.load import patch_multiple
    from dino.eval.video import segment_frames, vit_features
    from dino.progress import Progress, log

    names = video_names(args.data_path, args.imageset, args.videos)
    videos = [read_davis_video(args.data_path, name, args.resolution) for name in names]
    b = open_backbone(args)
    features = vit_features(b.model, b.device, b.dtype)
    out = Path(args.output_dir)
    for video in videos:
        first = read_label_png(video.annotations[video.frames[0].stem])
        masks = segment_frames(
            video.frames,
            first,
            features,
            patch_multiple(b.model),
            args.image_size,
            args.n_last_frames,
            args.size_mask_neighborhood,
            args.topk,
        )
        if is_main_process():
            save_indexed_png(out / video.name / f"{video.frames[0].stem}.png", first)
        pairs = zip(video.frames[1:], masks, strict=True)
        for frame, mask in Progress(pairs, len(video.frames) - 1, video.name):
            if is_main_process():
                save_indexed_png(out / video.name / f"{frame.stem}.png", mask)
    log(f"{len(videos)} videos segmented: palette PNGs in {out}/<video>/")
    scored = [v.name for v in videos if len(v.annotations) >= 3]  # first and last are not scored
    if not scored:
        log("not scored: no video has ground truth beyond its first and last frame")
        return
    annotations = Path(args.data_path) / "Annotations" / args.resolution
    scores = score_folder(annotations, out, scored)
    overall = scores.overall()
    log(f"DAVIS 2017 semi-supervised, {len(scores.objects)} objects in {len(scored)} videos:")
    log("  " + "  ".join(f"{k:>8s}" for k in overall))
    log("  " + "  ".join(f"{v:8.3f}" for v in overall.values()))
    for o in scores.objects:
        log(f"  {o.name:<24s} J-Mean {o.j.mean:.3f}  F-Mean {o.f.mean:.3f}")
    write_csv(
        str(out / "global_results.csv"), list(overall), [[f"{v:.6f}" for v in overall.values()]]
    )
    write_csv(
        str(out / "per-sequence_results.csv"),
        ["Sequence", "J-Mean", "F-Mean"],
        [[o.name, f"{o.j.mean:.6f}", f"{o.f.mean:.6f}"] for o in scores.objects],
    )
    log(
        f"J&F-Mean {overall['J&F-Mean']:.3f}; tables in {out / 'global_results.csv'} "
        f"and {out / 'per-sequence_results.csv'}"
    )
