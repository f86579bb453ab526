"""Where the device path's augmentation spends its time, and whether torch.compile helps.

    python benchmarks/bench_augment.py                 # both crop configs, on this machine
    python benchmarks/bench_augment.py --device cuda --batch 64

For each crop config (the bench config's 2 x 32 + 6 x 16 px crops of 32-px images, and
ImageNet's 2 x 224 + 10 x 96 px crops of 355 x 473 images, the decoded size the device
path keeps), one table: the milliseconds per image of the whole batched multi-crop
(``DeviceMultiCrop``) and of each of its parts (resized crops; each colour operation,
blur and solarisation applied to every crop, where training applies each to the crops
its draws pick), eager and under ``torch.compile(dynamic=True)``, with their ratio.
Medians of ``--repeats`` timed runs after a warm-up (the compiled runs' warm-up compiles).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from dino.data import batched_ops as ops
from dino.data import device_augment
from dino.data.device_augment import DeviceMultiCrop

CONFIGS = {
    "bench": dict(image=(32, 32), global_crop_size=32, local_crop_size=16, local_crops_number=6),
    "imagenet": dict(
        image=(355, 473), global_crop_size=224, local_crop_size=96, local_crops_number=10
    ),
}
COMPILED = ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue",
            "grayscale", "gaussian_blur", "solarize")  # fmt: skip


def timed(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def smooth_images(b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """``b`` uint8 RGB images with some structure (low-frequency noise, upsampled)."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(b, 3, max(2, h // 8), max(2, w // 8), generator=g)
    full = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear")
    return (full * 255).round().to(torch.uint8).to(device)


def parts(multicrop: DeviceMultiCrop, images: torch.Tensor, sizes: torch.Tensor):
    """Each part of the multi-crop as a function of no arguments, on every crop."""
    draws = multicrop.draw(sizes, torch.Generator().manual_seed(1))
    sides = (multicrop.global_crop_size, multicrop.local_crop_size)
    crops = [multicrop._resized(images, d, s).float() for d, s in zip(draws, sides, strict=False)]
    yield (
        "resized crops",
        lambda: [multicrop._resized(images, d, s) for d, s in zip(draws, sides, strict=False)],
    )
    for i, name in enumerate(COMPILED[:4]):
        op = getattr(ops, name)
        yield (
            name,
            lambda i=i, op=op: [
                op(x, d.factors[:, i].to(x.device)) for x, d in zip(crops, draws, strict=True)
            ],
        )
    yield "grayscale", lambda: [ops.grayscale(x) for x in crops]
    yield (
        "gaussian_blur",
        lambda: [
            ops.gaussian_blur(x, d.sigma.to(x.device)) for x, d in zip(crops, draws, strict=True)
        ],
    )
    yield "solarize", lambda: [ops.solarize(x) for x in crops]


def run_config(name: str, batch: int, device: torch.device, repeats: int) -> None:
    spec = dict(CONFIGS[name])
    h, w = spec.pop("image")
    multicrop = DeviceMultiCrop(**spec)
    images = smooth_images(batch, h, w, device)
    sizes = torch.tensor([[h, w]] * batch)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def whole() -> object:
        return multicrop(images, sizes, torch.Generator().manual_seed(2))

    eager = {"whole multi-crop": timed(whole, repeats, sync)}
    eager.update({part: timed(fn, repeats, sync) for part, fn in parts(multicrop, images, sizes)})
    originals = {op: getattr(ops, op) for op in COMPILED}
    jitter = device_augment.JITTER_OPS
    try:
        for op in COMPILED:
            setattr(ops, op, torch.compile(originals[op], dynamic=True))
        device_augment.JITTER_OPS = tuple(getattr(ops, op) for op in COMPILED[:4])
        compiled = {"whole multi-crop": timed(whole, repeats, sync)}
        compiled.update(
            {part: timed(fn, repeats, sync) for part, fn in parts(multicrop, images, sizes)}
        )
    finally:
        for op, fn in originals.items():
            setattr(ops, op, fn)
        device_augment.JITTER_OPS = jitter
    print(
        f"\n{name}: {batch} images of {h} x {w} px -> 2 x {spec['global_crop_size']} + "
        f"{spec['local_crops_number']} x {spec['local_crop_size']} px crops, on {device.type}"
    )
    print("| part | eager ms/img | compiled ms/img | eager / compiled |\n|---|---|---|---|")
    for part in eager:
        e, c = eager[part] * 1e3 / batch, compiled[part] * 1e3 / batch
        print(f"| {part} | {e:.3f} | {c:.3f} | {e / c:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, help="images per batch (default: 128, 16 imagenet)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name in args.configs:
        batch = args.batch or (128 if name == "bench" else 16)
        run_config(name, batch, torch.device(args.device), args.repeats)


if __name__ == "__main__":
    main()
