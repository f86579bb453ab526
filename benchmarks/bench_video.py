"""Video object segmentation and attention videos: quality on the demo videos, speed at 480p.

    python benchmarks/bench_video.py --checkpoint run/checkpoint.pth   # J&F on the demo videos
    python benchmarks/bench_video.py --speed                            # ViT-S/8 at 480p

J&F (DAVIS 2017 semi-supervised definitions) on a DAVIS-layout folder (``--data_path``; by
default the demo videos of ``dino demo-data --video``, generated into a temporary folder) for
feature extractors with the same propagation (``dino video-segment``'s defaults): each
checkpoint's teacher, the untrained network of the first one's architecture (seed 0), and
the raw pixels of each patch (colour only, no network); and two references: the first mask
copied to every frame (no tracking), and the true masks reduced to the patch grid and
upsampled as propagated labels are (the best any per-patch labelling can score).

``--speed``: frames per second of ``dino video-segment`` for a ViT-S/8 (random weights) on
854 x 480 frames resized as the reference does (832 x 480: 60 x 104 patches): the network
on one frame plus one propagation step against a full context (the first frame and 7 recent
ones), per precision, each precision in a fresh process so that its peak memory (RSS) is its
own; and frames per second of ``dino attention --video`` on the same frames (per-head and
mean maps and masks, PNG frames and mp4).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dino.data.davis import read_davis_video, read_label_png, video_names
from dino.data.video_demo import demo_video, demo_videos, save_demo_videos
from dino.eval.attention_video import attention_video
from dino.eval.davis import davis_j_and_f
from dino.eval.load import backbone_spec, load_backbone
from dino.eval.video import (
    frame_size,
    frame_tensor,
    label_map,
    pixel_features,
    propagate_step,
    segment_frames,
    vit_features,
)
from dino.hardware import autocast_dtype
from dino.models import build_backbone, build_from_spec


def untrained_twin(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised network of ``model``'s architecture."""
    spec = backbone_spec(model.state_dict(), {"num_heads": model.num_heads})
    torch.manual_seed(seed)
    return build_from_spec(spec).eval()


def read_videos(root: Path) -> dict[str, tuple[list[Path], list[np.ndarray]]]:
    """Frames and masks of every video listed in ``root``'s ImageSets/2017/val.txt."""
    videos = {}
    for name in video_names(root, "ImageSets/2017/val.txt"):
        video = read_davis_video(root, name)
        videos[name] = (
            video.frames,
            [read_label_png(video.annotations[f.stem]) for f in video.frames],
        )
    return videos


def propagated(videos, features, patch: int, short_side: int) -> dict[str, list[np.ndarray]]:
    """Each video's first mask and the masks propagated from it."""
    return {
        name: [masks[0], *segment_frames(frames, masks[0], features, patch, short_side)]
        for name, (frames, masks) in videos.items()
    }


def patch_grid_truth(videos, patch: int, short_side: int) -> dict[str, list[np.ndarray]]:
    """The true masks seen at the patch grid and upsampled as propagated labels are: the
    best that labels per patch can score."""
    out = {}
    for name, (_, masks) in videos.items():
        c = int(masks[0].max()) + 1
        size = frame_size(*masks[0].shape, short_side, patch)
        grid = (size[0] // patch, size[1] // patch)
        out[name] = []
        for m in masks:
            small = np.asarray(Image.fromarray(m).resize(grid[::-1], Image.Resampling.NEAREST))
            one_hot = torch.nn.functional.one_hot(torch.from_numpy(small.astype(np.int64)), c)
            out[name].append(label_map(one_hot.permute(2, 0, 1).float(), size, m.shape))
    return out


def quality(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_path) if args.data_path else Path(tmp) / "demo_video"
        if not args.data_path:
            save_demo_videos(demo_videos(6, 24, seed=0), root)
        videos = read_videos(root)
        truth = {name: masks for name, (_, masks) in videos.items()}
        networks = {c: load_backbone(c) for c in args.checkpoint}
        first = next(iter(networks.values()))
        patch = int(first.patch_size)
        rows = [
            (f"teacher of {Path(c).parent.name}/{Path(c).name}", vit_features(n))
            for c, n in networks.items()
        ]
        rows += [
            (
                "untrained (architecture of the first, seed 0)",
                vit_features(untrained_twin(first)),
            ),
            ("pixels (colour only, no network)", lambda x: pixel_features(x, patch)),
        ]
        print(f"{root}: {len(videos)} videos, short side {args.image_size} px, patch {patch}")
        print(
            f"{'features':48s} {'J&F':>6s} {'J':>6s} {'F':>6s} {'J-Rec':>6s} {'F-Rec':>6s}"
            f" {'time':>7s}"
        )
        results = []
        for name, features in rows:
            start = time.perf_counter()
            pred = propagated(videos, features, patch, args.image_size)
            results.append((name, pred, time.perf_counter() - start))
        results.append(
            (
                "(first mask copied to every frame)",
                {n: [m[0]] * len(m) for n, m in truth.items()},
                0.0,
            )
        )
        results.append(
            (
                "(true masks at the patch grid: the ceiling)",
                patch_grid_truth(videos, patch, args.image_size),
                0.0,
            )
        )
        for name, pred, seconds in results:
            s = davis_j_and_f(truth, pred).overall()
            print(
                f"{name:48s} {100 * s['J&F-Mean']:6.1f} {100 * s['J-Mean']:6.1f} "
                f"{100 * s['F-Mean']:6.1f} {100 * s['J-Recall']:6.1f} {100 * s['F-Recall']:6.1f} "
                f"{seconds:6.1f}s"
            )


def measure(precision: str, frames: int, out_dir: str) -> dict[str, float]:
    """One precision's speed and peak memory (run in a fresh process)."""
    torch.manual_seed(0)
    model = build_backbone("vit_small", patch_size=8).eval()
    dtype = autocast_dtype(precision)
    video = demo_video("bench", 0, n_frames=frames + 1, size=(480, 854))
    size = frame_size(480, 854, 480, 8)
    features = vit_features(model, dtype=dtype)
    feats = [features(frame_tensor(video.frames[0], size))]  # warm-up
    start = time.perf_counter()
    feats += [features(frame_tensor(f, size)) for f in video.frames[1:]]
    t_features = (time.perf_counter() - start) / frames
    h, w, _ = feats[0].shape
    keys = torch.nn.functional.normalize(torch.stack([feats[0]] * 8), dim=-1)  # (8, h, w, D)
    values = torch.rand(8, 4, h, w)  # 8 context frames, 3 objects + background
    target = torch.nn.functional.normalize(feats[-1], dim=-1)
    propagate_step(target, keys, values, radius=12, topk=5)  # warm-up
    start = time.perf_counter()
    for _ in range(3):
        propagate_step(target, keys, values, radius=12, topk=5)
    t_propagate = (time.perf_counter() - start) / 3
    attention_video(model, video.frames[:1], Path(out_dir) / "warm", dtype=dtype)
    start = time.perf_counter()
    attention_video(model, video.frames[1:], Path(out_dir) / "attn", dtype=dtype)
    t_attention = (time.perf_counter() - start) / frames
    return {
        "precision": precision,
        "grid": f"{h}x{w}",
        "features_s": t_features,
        "propagate_s": t_propagate,
        "segment_fps": 1 / (t_features + t_propagate),
        "attention_fps": 1 / t_attention,
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def speed(args: argparse.Namespace) -> None:
    rows = []
    for precision in args.precisions:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, __file__, "--one", precision, "--frames", str(args.frames)]
            out = subprocess.run([*cmd, "--out", tmp], capture_output=True, text=True)
        lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not lines:
            raise SystemExit(f"{precision} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        rows.append(json.loads(lines[-1][7:]))
    print(f"ViT-S/8, 854x480 frames at 832x480 ({rows[0]['grid']} patches), {args.frames} frames")
    head = "precision  network s/frame  propagation s/frame  segment fps  attention fps  peak GiB"
    print(head)
    for r in rows:
        print(
            f"{r['precision']:9s}  {r['features_s']:15.2f}  {r['propagate_s']:19.2f}  "
            f"{r['segment_fps']:11.3f}  {r['attention_fps']:13.3f}  {r['peak_gib']:8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", nargs="+", help="trained networks to score (J&F table)")
    parser.add_argument("--data_path", help="a DAVIS-layout folder (default: the demo videos)")
    parser.add_argument("--image_size", type=int, default=96, help="short side for J&F")
    parser.add_argument("--speed", action="store_true", help="the 480p speed table")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--frames", type=int, default=2, help="timed frames per precision")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one precision's run
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args.frames, args.out)))
    elif args.speed:
        speed(args)
    elif args.checkpoint:
        quality(args)
    else:
        parser.error("give --checkpoint (J&F table) or --speed")


if __name__ == "__main__":
    main()
