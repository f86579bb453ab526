from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dino.config import build_config
from dino.models import build_backbone
from dino.recipe import resolve_recipe
from dino.training.builders import build_student_teacher

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


def write_colour_classes(
    root: Path, per_class: int, classes: int = 3, size: int = 32, seed: int = 0
) -> list[Path]:
    """``per_class`` noisy PNGs of one hue per class in ``root/class_i/`` (any class count)."""
    rng = np.random.default_rng(seed)
    hues = np.linspace(0, 255, classes, endpoint=False)
    paths = []
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            hsv = np.empty((size, size, 3), np.uint8)
            hsv[..., 0] = (hues[c] + rng.integers(-8, 9)) % 256
            hsv[..., 1] = rng.integers(150, 256)
            hsv[..., 2] = rng.integers(120, 256, (size, size))
            path = folder / f"img_{i:03d}.png"
            Image.fromarray(hsv, mode="HSV").convert("RGB").save(path)
            paths.append(path)
    return paths


def published_full_checkpoint(
    depth: int = 2,
    patch_size: int = 16,
    hidden_dim: int = 2048,
    out_dim: int = 1000,
    arch: str = "vit_small",
    embed_dim: int | None = None,
) -> tuple[dict, torch.nn.Module]:
    """A file laid out like dino_deitsmall16_pretrain_full_checkpoint.pth (32-px grid).

    ``arch`` is recorded in ``args``; ``embed_dim`` narrows the network (heads as named).

    The student was wrapped in DistributedDataParallel ("module." prefix), the head used
    torch's weight_norm (weight_g / weight_v) and the arguments are an argparse.Namespace.
    Returns the checkpoint and the backbone whose weights it holds.
    """
    torch.manual_seed(0)
    backbone = build_backbone(arch, patch_size, img_size=32, depth=depth, embed_dim=embed_dim)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(backbone.embed_dim, hidden_dim),
        torch.nn.GELU(),
        torch.nn.Linear(hidden_dim, hidden_dim),
        torch.nn.GELU(),
        torch.nn.Linear(hidden_dim, 256),
    )
    last = torch.nn.Linear(256, out_dim, bias=False)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"head.mlp.{k}": v for k, v in mlp.state_dict().items()})
    state["head.last_layer.weight_g"] = torch.ones(out_dim, 1)
    state["head.last_layer.weight_v"] = last.weight.detach().clone()
    return {
        "student": {f"module.{k}": v.clone() for k, v in state.items()},
        "teacher": state,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 100,
        "args": argparse.Namespace(arch=arch, patch_size=patch_size, out_dim=out_dim),
        "dino_loss": {"center": torch.zeros(1, out_dim)},
    }, backbone


def tiny_training_checkpoint(path: Path, out_dim: int = 32) -> torch.nn.Module:
    """A checkpoint in the layout ``dino train`` writes, for a 2-block 48-dim ViT/8 at 32 px.

    Returns the teacher backbone whose weights it holds.
    """
    config = build_config(
        {
            "recipe": "reference",
            "data_path": str(path.parent),
            "arch": "vit_tiny",
            "embed_dim": 48,
            "depth": 2,
            "num_heads": 3,
            "patch_size": 8,
            "global_crop_size": 32,
            "local_crop_size": 16,
            "out_dim": out_dim,
        }
    )
    config = resolve_recipe(config, images=100)
    student, teacher = build_student_teacher(config)
    state = {"student": student.state_dict(), "teacher": teacher.state_dict()}
    torch.save({**state, "epoch": 1, "args": config.to_dict()}, path)
    return teacher.backbone


class RunsCode:
    """Pickles to a call of os.system: loading it must be refused, never executed."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))
