"""Training-step speed of ``dino train``: one table per run, one row per precision.

    python benchmarks/bench_train.py                      # the bench config on this machine
    python benchmarks/bench_train.py --preset vits16      # ViT-S/16, 2x224 + 10x96 crops
    python benchmarks/bench_train.py --precisions fp32 bf16 --steps 20 -- --depth 4

Columns: img/s of the full DINO step on synthetic tensors (teacher on the global crops,
student on all, loss, backward, clipping, optimizer, EMA, center); img/s end to end through
the real data pipeline (generated PNGs in a folder, the training DataLoader with
--num_workers loader processes) with the crops made by the loader (``--augment_on loader``,
torchvision's PIL pipeline) and on the device (``--augment_on device``: the loader only
decodes, once when the decoded images fit the cache, and the crops are made in batches on
the training device), the latter also without the cache (decoding every epoch); the
loader's CPU time per image (one process: PIL multi-crop, decode only, from the cache) and
the device augmentation's time per image; peak memory; and the share of the machine's
peak reached: FLOPs of one step counted by torch.utils.flop_counter over the step time,
against the matrix-product peak this script measures itself.
Each precision runs in a fresh subprocess so that its peak memory is its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
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
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from dino.config import build_config, coerce
from dino.data.demo import generate_shapes
from dino.data.transforms import normalize_batch
from dino.hardware import resolve_device
from dino.recipe import resolve_recipe
from dino.training import builders, trainer
from dino.training.feed import build_feed
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


def bench_plan(values: dict, folder: Path, out: str, steps: int) -> Plan:
    """The plan of the bench configuration ``values`` on the images of ``folder``."""
    config = build_config({**values, "data_path": str(folder), "output_dir": out})
    config = resolve_recipe(config, images=IMAGES_PER_EPOCH)
    device = resolve_device(config.device)
    return make_plan(config, device, images=config.batch_size_per_gpu * (steps + 10))


def feed_of(plan: Plan, folder: Path, augment_on: str, cache_gib: float | None = None):
    """The training feed of ``folder`` with the crops made where ``augment_on`` says."""
    crops = dataclasses.replace(plan.crops, augment_on=augment_on)
    loader = plan.loader
    if cache_gib is not None:
        loader = dataclasses.replace(loader, decoded_cache_gib=cache_gib)
    images = builders.build_train_images(str(folder), crops)
    return build_feed(images, crops, loader, plan.seed, plan.device)


def end_to_end_s(state, plan: Plan, feed, steps: int) -> float:
    """Seconds per step through ``feed``'s loader and augmentation (epoch 0)."""
    loader = feed.loader(0)
    batches = (
        [normalize_batch(c) for c in feed.augment(batch, 0, i)]
        for i, (batch, _) in enumerate(loader)
    )
    return time_steps(state, plan, batches, min(steps, len(loader) - 3), plan.device)


def loader_cpu_s(dataset, collate, batch: int, n_batches: int = 3) -> float:
    """CPU seconds per image of one in-process loader (decoding, augmenting, collating)."""
    loader = DataLoader(dataset, batch_size=batch, collate_fn=collate, num_workers=0)
    it = iter(loader)
    next(it)
    start = time.process_time()
    for _ in range(n_batches):
        next(it)
    return (time.process_time() - start) / (n_batches * batch)


def device_augment_s(feed, batch: int, device: torch.device, n_batches: int = 3) -> float:
    """Seconds per image of the device augmentation (CPU time of this process on a CPU, wall
    time on a GPU)."""
    batches = [b for b, _ in itertools.islice(iter(feed.loader(0)), n_batches + 1)]
    feed.augment(batches[0], 0, 0)
    sync(device)
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    start = clock()
    for i, b in enumerate(batches[1:]):
        feed.augment(b, 0, i + 1)
    sync(device)
    return (clock() - start) / (n_batches * batch)


def measure(values: dict, steps: int, data_dir: str | None) -> dict:
    """All figures for one precision, run inside its own process."""
    image_size = int(values.pop("image_size"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(data_dir or tmp)
        if data_dir is None:
            write_folder(folder, values["batch_size_per_gpu"] * (steps + 4), image_size)
        plan = bench_plan(values, folder, tmp, steps)
        device, batch = plan.device, plan.loader.batch_size_per_gpu
        state = trainer.build_state(plan)

        crops = synthetic_crops(plan, device)
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(state, crops, plan, 1, 0)
        flops_per_step = counter.get_total_flops()
        step_s = time_steps(state, plan, iter(lambda: crops, None), steps, device)

        loader_feed = feed_of(plan, folder, "loader")
        device_feed = feed_of(plan, folder, "device")
        streaming_feed = feed_of(plan, folder, "device", cache_gib=0.0)
        e2e_loader_s = end_to_end_s(state, plan, loader_feed, steps)
        e2e_device_s = end_to_end_s(state, plan, device_feed, steps)
        e2e_stream_s = end_to_end_s(state, plan, streaming_feed, steps)

        cpu = {
            "pil_multicrop": loader_cpu_s(loader_feed.dataset, loader_feed.collate, batch),
            "decode_only": loader_cpu_s(streaming_feed.dataset, streaming_feed.collate, batch),
            "cached": loader_cpu_s(device_feed.dataset, device_feed.collate, batch),
        }
        augment_s = device_augment_s(device_feed, batch, device)

    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    precision = plan.optim.precision
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return {
        "precision": precision,
        "step_img_s": batch / step_s,
        "e2e_loader_img_s": batch / e2e_loader_s,
        "e2e_device_img_s": batch / e2e_device_s,
        "e2e_device_nocache_img_s": batch / e2e_stream_s,
        "loader_cpu_ms_per_img": {k: v * 1e3 for k, v in cpu.items()},
        "device_augment_ms_per_img": augment_s * 1e3,
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
        "e2e loader (PIL)",
        "e2e device",
        "e2e device, no cache",
        "loader CPU ms/img: PIL multi-crop / decode / cached",
        "device augment ms/img",
        "peak mem GiB",
        "TFLOP/s",
        "% of peak",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    base = rows[0]["step_img_s"]
    for r in rows:
        step = r["step_img_s"]
        cpu = r["loader_cpu_ms_per_img"]
        cells = [
            r["precision"],
            f"{step:.1f} ({step / base:.2f}x)",
            *(
                f"{r[k]:.1f} ({r[k] / step:.0%})"
                for k in ("e2e_loader_img_s", "e2e_device_img_s", "e2e_device_nocache_img_s")
            ),
            f"{cpu['pil_multicrop']:.2f} / {cpu['decode_only']:.3f} / {cpu['cached']:.3f}",
            f"{r['device_augment_ms_per_img']:.2f}",
            f"{r['peak_mem_gib']:.2f}",
            f"{r['achieved_tflops']:.3f}",
            f"{r['achieved_tflops'] / r['peak_tflops']:.0%}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
