from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dino.config import build_config
from dino.models import build_backbone
from dino.recipe import resolve_recipe
from dino.training.builders import build_student_teacher
from dino.training.plan import NetworkSpec


@pytest.fixture(autouse=True)
def _same_random_state_for_every_test() -> None:
    """Each test starts from one random state (torch, numpy, random): its unseeded draws
    do not depend on which tests ran before it, so a failure repeats."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


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


class ReferenceHead(torch.nn.Module):
    """The reference DINOHead's layout: Linear layers at mlp.0 / 2 / 4 with GELUs between,
    then torch's weight_norm on a bias-free Linear (weight_g, then weight_v), its magnitude
    set to 1 and frozen (norm_last_layer)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck: int = 256):
        super().__init__()
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(in_dim, hidden_dim),
            torch.nn.GELU(),
            torch.nn.Linear(hidden_dim, hidden_dim),
            torch.nn.GELU(),
            torch.nn.Linear(hidden_dim, bottleneck),
        )
        with warnings.catch_warnings():  # deprecated in favour of parametrizations, still there
            warnings.simplefilter("ignore", FutureWarning)
            self.last_layer = torch.nn.utils.weight_norm(
                torch.nn.Linear(bottleneck, out_dim, bias=False)
            )
        self.last_layer.weight_g.data.fill_(1)
        self.last_layer.weight_g.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(torch.nn.functional.normalize(self.mlp(x), dim=-1))


class ReferenceWrapper(torch.nn.Module):
    """backbone.* and head.*, as the reference's MultiCropWrapper names them (one crop size)."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def reference_param_groups(model: torch.nn.Module) -> list[dict]:
    """The reference's two groups: weights that decay, then biases and 1-D parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def published_full_checkpoint(
    depth: int = 2,
    patch_size: int = 16,
    hidden_dim: int = 2048,
    out_dim: int = 1000,
    arch: str = "vit_small",
    embed_dim: int | None = None,
    fp16: bool = True,
) -> tuple[dict, torch.nn.Module]:
    """A file laid out as main_dino.py writes dino_deitsmall16_pretrain_full_checkpoint.pth
    (32-px grid), after one training step with every parameter updated.

    ``student``: the DDP-wrapped network's state dict (``module.backbone.*``,
    ``module.head.*``); ``teacher``: its EMA, unwrapped (``backbone.*``, ``head.*``); the
    head uses torch's weight_norm. ``optimizer``: AdamW's state dict, with moments and step
    for every trainable parameter and each group's ``lr`` / ``weight_decay`` taken from
    numpy schedules (``numpy.float64``); ``args``: an argparse.Namespace; ``dino_loss``: the
    center; ``fp16_scaler``: a GradScaler's state dict, present only with ``fp16`` (the
    reference leaves the key out without loss scaling). ``arch`` is recorded in ``args``;
    ``embed_dim`` narrows the network (heads as named).

    Returns the checkpoint and the teacher backbone whose weights it holds.
    """
    torch.manual_seed(0)

    def network() -> ReferenceWrapper:
        backbone = build_backbone(arch, patch_size, img_size=32, depth=depth, embed_dim=embed_dim)
        return ReferenceWrapper(backbone, ReferenceHead(backbone.embed_dim, out_dim, hidden_dim))

    student, teacher = network(), network()
    teacher.load_state_dict(student.state_dict())  # the teacher starts as the student
    optimizer = torch.optim.AdamW(reference_param_groups(student))
    iters = 10  # cosine schedules from numpy, indexed by the global iteration
    lr_schedule = 1e-6 + 0.5 * (5e-4 - 1e-6) * (1 + np.cos(np.pi * np.arange(iters) / iters))
    wd_schedule = 0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * np.arange(iters) / iters))
    it = 3
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr_schedule[it]
        if i == 0:
            group["weight_decay"] = wd_schedule[it]
    student(torch.randn(2, 3, 32, 32)).logsumexp(dim=-1).mean().backward()
    optimizer.step()
    with torch.no_grad():  # the teacher's EMA step
        for p_t, p_s in zip(teacher.parameters(), student.parameters(), strict=True):
            p_t.mul_(0.996).add_(p_s.detach(), alpha=0.004)
    args = argparse.Namespace(
        arch=arch,
        patch_size=patch_size,
        out_dim=out_dim,
        norm_last_layer=True,
        momentum_teacher=0.996,
        use_bn_in_head=False,
        use_fp16=fp16,
        lr=0.0005,
        epochs=100,
        global_crops_scale=(0.4, 1.0),
        local_crops_number=8,
        data_path="/path/to/imagenet/train",
        dist_url="env://",
        local_rank=0,
    )
    checkpoint = {
        "student": {f"module.{k}": v for k, v in student.state_dict().items()},
        "teacher": teacher.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 100,
        "args": args,
        "dino_loss": {"center": torch.randn(1, out_dim) * 0.01},
    }
    if fp16:
        checkpoint["fp16_scaler"] = torch.amp.GradScaler("cpu").state_dict()
    return checkpoint, teacher.backbone


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
    student, teacher = build_student_teacher(NetworkSpec.of(config), config.seed)
    state = {"student": student.state_dict(), "teacher": teacher.state_dict()}
    torch.save({**state, "epoch": 1, "args": config.to_dict()}, path)
    return teacher.backbone


class RunsCode:
    """Pickles to a call of os.system: loading it must be refused, never executed."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))
