"""Does DINO learn on a few thousand small images, and does it ever destroy the features?

    python benchmarks/bench_small_data.py                          # both data sets, all recipes
    python benchmarks/bench_small_data.py --data digits --recipes auto reference --epochs 30

Data, generated or shipped, never downloaded:
- ``demo``: the built-in demo set, 2500 training images of ten grey shapes (32 px), 1000
  held-out images;
- ``digits``: scikit-learn's bundled handwritten digits (1797 8x8 images, 10 classes),
  upscaled to 32 px (bicubic), 360 held out (a fixed random split), 1437 for training.
  Needs scikit-learn (``pip install -e ".[bench]"``).

Model: the bench config of benchmarks/bench_train.py (ViT 192 dims, depth 6, 3 heads, patch
4; 2 x 32-px + 6 x 16-px crops; head 2048-256-K; batch 128; AdamW; drop path 0.1).

Recipes: ``reference`` (the paper's values), ``auto`` (the default), and ``auto`` with each
anti-collapse term alone: ``center`` (neither term), ``sinkhorn`` (Sinkhorn-Knopp centering
only), ``koleo`` (the KoLeo term only).

Prints, per data set, the weighted k-NN top-1 (k = 20, T = 0.07) of the teacher on the
held-out split after every epoch under each recipe, the effective rank and mean cosine of
its features at the end, the wall time, and the floors: k-NN on raw pixels and on the
untrained network (and chance).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from bench_train import PRESETS  # run as a script: benchmarks/ is on sys.path
from PIL import Image

from dino.config import RECIPE_FIELDS, build_config
from dino.data.demo import DemoSplits, demo_splits, save_demo_folders
from dino.eval.knn import knn_classify
from dino.training.trainer import train

# The bench config; K (out_dim) is left to the recipe under test.
BENCH = {k: v for k, v in PRESETS["bench"].items() if k not in ("out_dim", "image_size")}
BENCH.update(drop_path_rate=0.1, num_workers=1, eval_every=1, saveckp_freq=1000)
RECIPES: dict[str, dict[str, object]] = {
    "reference": {"recipe": "reference"},
    "auto": {"recipe": "auto"},
    "center": {"recipe": "auto", "centering": "center", "koleo_weight": 0.0},
    "sinkhorn": {"recipe": "auto", "centering": "sinkhorn", "koleo_weight": 0.0},
    "koleo": {"recipe": "auto", "centering": "center", "koleo_weight": 0.1},
}
# Epochs per data set: about 570 iterations at batch 128 (the limit is 600).
EPOCHS = {"demo": 30, "digits": 52}


def digits_splits(n_val: int = 360, size: int = 32, seed: int = 0) -> DemoSplits:
    """scikit-learn's bundled digits, upscaled to ``size`` px, with ``n_val`` held out."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("digits needs scikit-learn: pip install -e '.[bench]'") from None
    digits = load_digits()
    pixels = (digits.images / 16.0 * 255).round().astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    images = [Image.fromarray(a).resize((size, size), Image.Resampling.BICUBIC) for a in pixels]
    order = np.random.default_rng(seed).permutation(len(images))
    val, train_ = order[:n_val], order[n_val:]
    labels = digits.target.tolist()
    return DemoSplits(
        [images[i] for i in train_],
        [labels[i] for i in train_],
        [images[i] for i in val],
        [labels[i] for i in val],
        classes=tuple(str(c) for c in range(10)),
    )


DATASETS = {"demo": lambda: demo_splits(seed=0), "digits": digits_splits}


def raw_pixel_knn(splits: DemoSplits) -> float:
    """k-NN on centred, L2-normalised pixels of the same splits: the floor to beat."""

    def pixels(images: list) -> torch.Tensor:
        return torch.tensor(
            np.stack([np.asarray(i.convert("RGB"), dtype=np.float32).ravel() for i in images])
        )

    train_x, val_x = pixels(splits.train), pixels(splits.val)
    mean = train_x.mean(0)
    return knn_classify(
        train_x - mean,
        torch.tensor(splits.train_labels),
        val_x - mean,
        torch.tensor(splits.val_labels),
        ks=(20,),
    )[0].top1


def run(folders: dict[str, Path], name: str, epochs: int, overrides: dict) -> dict:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        values = {**BENCH, **RECIPES[name], **overrides, "epochs": epochs, "output_dir": out}
        values.update(data_path=str(folders["train"]), val_path=str(folders["val"]))
        summary = train(build_config(values))
        log = [json.loads(line) for line in (Path(out) / "log.txt").read_text().splitlines()]
        resolved = yaml.safe_load((Path(out) / "config.yaml").read_text())
    return {
        "recipe": name,
        "knn": [e.get("knn_top1") for e in log],
        "loss": [e["loss"] for e in log],
        "rank": log[-1]["rank"],
        "mean_cosine": log[-1]["mean_cosine"],
        "untrained": summary.knn_before,
        "best": summary.best.describe() if summary.best else "-",
        "wall_s": time.perf_counter() - start,
        "values": {name: resolved[name] for name in RECIPE_FIELDS},
    }


def report(data: str, rows: list[dict], floor: float, epochs: int) -> None:
    print(f"\n## {data}: k-NN top-1 (%) on the held-out split, bench config, {epochs} epochs")
    print(
        f"floors: raw pixels {floor:.1f}, untrained network {rows[0]['untrained']:.1f}, chance 10.0"
    )
    print("| epoch | " + " | ".join(r["recipe"] for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for epoch in range(epochs):
        cells = [r["knn"][epoch] for r in rows]
        print(f"| {epoch} | " + " | ".join("-" if k is None else f"{k:.1f}" for k in cells) + " |")
    for label, key, fmt in (
        ("rank (end)", "rank", "{:.1f}"),
        ("mean cosine (end)", "mean_cosine", "{:.3f}"),
    ):
        print(f"| {label} | " + " | ".join(fmt.format(r[key]) for r in rows) + " |")
    print("| best | " + " | ".join(r["best"] for r in rows) + " |")
    print("| wall | " + " | ".join(f"{r['wall_s'] / 60:.1f} min" for r in rows) + " |")
    for r in rows:
        values = ", ".join(f"{k}={v}" for k, v in r["values"].items())
        print(f"\n{data} / {r['recipe']}: {values}")
        print("loss per epoch: " + ", ".join(f"{x:.2f}" for x in r["loss"]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--epochs", type=int, help="default: about 570 iterations per data set")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    for data in args.data:
        splits = DATASETS[data]()
        epochs = args.epochs or EPOCHS[data]
        with tempfile.TemporaryDirectory() as root:
            folders = save_demo_folders(splits, root)
            rows = [run(folders, r, epochs, {"precision": args.precision}) for r in args.recipes]
        report(data, rows, raw_pixel_knn(splits), epochs)


if __name__ == "__main__":
    main()
