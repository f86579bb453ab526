"""Training-step speed of ``dino train``: one table per run, one row per precision.

    python benchmarks/bench_train.py                      # the bench config on this machine
    python benchmarks/bench_train.py --preset vits16      # ViT-S/16, 2x224 + 10x96 crops
    python benchmarks/bench_train.py --precisions fp32 bf16 --steps 20 -- --depth 4

Columns: img/s of the full DINO step on synthetic tensors (teacher on the global crops,
student on all, loss, backward, clipping, optimizer, EMA, center); img/s end to end through
the real data pipeline (generated PNGs in a folder, the training DataLoader); the data
pipeline alone (multi-crop images/s of one loading process); peak memory; and the share of
the machine's peak reached: FLOPs of one step counted by torch.utils.flop_counter over the
step time, against the matrix-product peak this script measures itself.
Each precision runs in a fresh subprocess so that its peak memory is its own.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from torch.utils.flop_counter import FlopCounterMode

from dino.config import build_config, coerce
from dino.data.demo import generate_shapes
from dino.data.folder import SkipBadImages
from dino.data.transforms import normalize_batch
from dino.hardware import resolve_device
from dino.recipe import resolve_recipe
from dino.training import builders, trainer
from dino.training.plan import Plan, make_plan

IMAGES_PER_EPOCH = 4000  # the recipe's view of the run: a small data set of a few thousand images
PRESETS: dict[str, dict[str, object]] = {
    # The bench config: ViT 192-d, depth 6, patch 4 on 32-px crops, batch 128 (a few thousand
    # small images on a CPU).
    "bench": dict(
        arch="vit_tiny",
        embed_dim=192,
        depth=6,
        num_heads=3,
        patch_size=4,
        global_crop_size=32,
        local_crop_size=16,
        local_crops_number=6,
        out_dim=4096,
        batch_size_per_gpu=128,
        optimizer="adamw",
        image_size=32,
    ),
    "vits16": dict(
        arch="vit_small",
        patch_size=16,
        global_crop_size=224,
        local_crop_size=96,
        local_crops_number=10,
        out_dim=65536,
        batch_size_per_gpu=64,
        optimizer="adamw",
        image_size=256,
    ),
}


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of an n x n matrix product in ``dtype`` (best of ``reps`` timed runs)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_crops(plan: Plan, device: torch.device) -> list[torch.Tensor]:
    b, c = plan.loader.batch_size_per_gpu, plan.crops
    g, l_ = c.global_crop_size, c.local_crop_size
    crops = [torch.randn(2 * b, 3, g, g)]
    if c.local_crops_number:
        crops.append(torch.randn(c.local_crops_number * b, 3, l_, l_))
    return [c.to(device) for c in crops]


def time_steps(state, plan, batches, steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` steps after 3 warm-up steps; ``batches`` yields crops."""
    it = iter(batches)
    for i in range(3):
        trainer.train_step(state, next(it), plan, 1, i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        trainer.train_step(state, next(it), plan, 1, 3 + i)
    sync(device)
    return (time.perf_counter() - start) / steps


def write_folder(root: Path, n: int, size: int) -> None:
    images, _ = generate_shapes(n, seed=0, size=min(size, 64))
    for i, a in enumerate(images):
        Image.fromarray(a).resize((size, size), Image.Resampling.BICUBIC).save(
            root / f"{i:05d}.png"
        )


def measure(values: dict, steps: int, data_dir: str | None) -> dict:
    """All figures for one precision, run inside its own process."""
    image_size = int(values.pop("image_size"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(data_dir or tmp)
        if data_dir is None:
            write_folder(folder, values["batch_size_per_gpu"] * (steps + 4), image_size)
        config = build_config({**values, "data_path": str(folder), "output_dir": tmp})
        config = resolve_recipe(config, images=IMAGES_PER_EPOCH)
        device = resolve_device(config.device)
        batch = config.batch_size_per_gpu
        plan = make_plan(config, device, images=batch * (steps + 10))
        state = trainer.build_state(plan)

        crops = synthetic_crops(plan, device)
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(state, crops, plan, 1, 0)
        flops_per_step = counter.get_total_flops()
        step_s = time_steps(state, plan, iter(lambda: crops, None), steps, device)

        dataset = SkipBadImages(builders.build_train_images(str(folder), plan.crops))
        loader = builders.build_loader(dataset, plan.loader, plan.seed, 0, device)
        e2e = ([normalize_batch(c.to(device, non_blocking=True)) for c in cs] for cs, _ in loader)
        e2e_s = time_steps(state, plan, e2e, min(steps, len(loader) - 3), device)

        in_process = dataclasses.replace(plan.loader, num_workers=0)
        one_worker = builders.build_loader(dataset, in_process, plan.seed, 0, torch.device("cpu"))
        it = iter(one_worker)
        next(it)
        start = time.perf_counter()
        n_batches = min(3, len(one_worker) - 1)
        for _ in range(n_batches):
            next(it)
        data_rate = n_batches * batch / (time.perf_counter() - start)

    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    precision = plan.optim.precision
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return {
        "precision": precision,
        "step_img_s": batch / step_s,
        "e2e_img_s": batch / e2e_s,
        "data_img_s_per_worker": data_rate,
        "peak_mem_gib": peak_mem,
        "flops_per_img": flops_per_step / batch,
        "achieved_tflops": flops_per_step / step_s / 1e12,
        "peak_tflops": matmul_peak(dtype, device) / 1e12,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "num_workers": plan.loader.num_workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="bench")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--data_dir", default=None, help="a folder of images (default: generated)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one measurement
    parser.add_argument(
        "overrides", nargs="*", help="extra dino train flags after --, e.g. -- --depth 4"
    )
    args = parser.parse_args()

    if args.one:
        print("RESULT " + json.dumps(measure(json.loads(args.one), args.steps, args.data_dir)))
        return
    values = dict(PRESETS[args.preset], device=args.device, num_workers=args.num_workers)
    flags = args.overrides
    for key, value in zip(flags[::2], flags[1::2], strict=True):
        name = key.lstrip("-")
        values[name] = coerce(name, value)  # typed here: measure() computes with some of them
    rows = []
    for precision in args.precisions:
        one = json.dumps({**values, "precision": precision})
        cmd = [sys.executable, __file__, "--one", one, "--steps", str(args.steps)]
        if args.data_dir:
            cmd += ["--data_dir", args.data_dir]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{precision}: the measurement failed")
        rows.append(json.loads(lines[-1][7:]))
    print_table(args.preset, values, rows)


def print_table(preset: str, values: dict, rows: list[dict]) -> None:
    print(f"\npreset {preset}: {json.dumps(values)}")
    print(
        f"device {rows[0]['device']}, {rows[0]['threads']} compute threads, "
        f"{rows[0]['num_workers']} loader worker(s); "
        f"FLOPs/img {rows[0]['flops_per_img'] / 1e9:.2f} G"
    )
    head = (
        "precision",
        "step img/s",
        "e2e img/s",
        "e2e/step",
        "data img/s/worker",
        "peak mem GiB",
        "TFLOP/s",
        "peak TFLOP/s",
        "% of peak",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    base = rows[0]["step_img_s"]
    for r in rows:
        cells = [
            r["precision"],
            f"{r['step_img_s']:.1f} ({r['step_img_s'] / base:.2f}x)",
            f"{r['e2e_img_s']:.1f}",
            f"{r['e2e_img_s'] / r['step_img_s']:.0%}",
            f"{r['data_img_s_per_worker']:.0f}",
            f"{r['peak_mem_gib']:.2f}",
            f"{r['achieved_tflops']:.3f}",
            f"{r['peak_tflops']:.3f}",
            f"{r['achieved_tflops'] / r['peak_tflops']:.0%}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
