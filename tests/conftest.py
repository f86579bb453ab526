from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# A tiny network and crop set that trains in seconds on a CPU.
TINY_TRAIN_FLAGS = [
    "--arch",
    "vit_tiny",
    "--embed_dim",
    "48",
    "--depth",
    "2",
    "--num_heads",
    "3",
    "--patch_size",
    "8",
    "--global_crop_size",
    "32",
    "--local_crop_size",
    "16",
    "--local_crops_number",
    "2",
    "--out_dim",
    "64",
    "--batch_size_per_gpu",
    "8",
    "--num_workers",
    "0",
    "--warmup_epochs",
    "1",
    "--precision",
    "fp32",
    "--device",
    "cpu",
]


def write_images(root: Path, n: int, size: int = 40, classes: int = 2, seed: int = 0) -> list[Path]:
    """``n`` random RGB PNGs in ``root/class_i/`` subfolders."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.full((size, size, 3), 60 + 120 * (i % classes), np.uint8)
        noise = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(base + noise).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    write_images(root, 24)
    return root


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dino ...`` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "dino", *args], capture_output=True, text=True, timeout=timeout
    )
