"""Functions run inside processes that the distributed tests start (gloo on the CPU)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist

from dino.config import build_config
from dino.distributed import get_world_size
from dino.recipe import resolve_recipe
from dino.training import builders, trainer
from dino.training.plan import LoaderSpec, make_plan


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_config(out: str, **overrides):
    values = dict(
        data_path="unused",
        output_dir=out,
        arch="vit_tiny",
        embed_dim=48,
        depth=2,
        num_heads=3,
        patch_size=8,
        global_crop_size=16,
        local_crop_size=8,
        local_crops_number=2,
        out_dim=32,
        batch_size_per_gpu=4,
        epochs=2,
        warmup_epochs=0,
        drop_path_rate=0.0,
        precision="fp32",
        device="cpu",
        lr=0.05,
        momentum_teacher=0.9,
        # SGD: AdamW divides by the gradient's own magnitude, which turns the float noise of
        # gradients that are zero in exact arithmetic (the attention key bias) into full steps.
        optimizer="sgd",
        koleo_weight=0.0,  # KoLeo is per process batch (as in DINOv2): it differs by design
    )
    values.update(overrides)
    return resolve_recipe(build_config(values), images=1000)


def synthetic_crops(images: int, steps: int, seed: int = 0) -> list[list[torch.Tensor]]:
    """Per step: [globals (2*images, 3, 16, 16), locals (2*images, 3, 8, 8)], crop-major."""
    g = torch.Generator().manual_seed(seed)
    return [
        [
            torch.randn(2 * images, 3, 16, 16, generator=g),
            torch.randn(2 * images, 3, 8, 8, generator=g),
        ]
        for _ in range(steps)
    ]


def shard(crops: list[torch.Tensor], rank: int, world: int) -> list[torch.Tensor]:
    """This rank's images of a crop-major batch: crop c of images [rank*b, (rank+1)*b)."""
    out = []
    for group in crops:
        n_crops = 2
        total = group.shape[0] // n_crops
        b = total // world
        rows = [group[c * total + rank * b : c * total + (rank + 1) * b] for c in range(n_crops)]
        out.append(torch.cat(rows))
    return out


def run_steps(config, crops_per_step) -> tuple[trainer.TrainState, torch.Tensor]:
    """The state after the steps, and their metrics, (steps, metrics) in train_step's order."""
    per_step = config.batch_size_per_gpu * config.grad_accum_steps * get_world_size()
    images = len(crops_per_step) * per_step
    plan = make_plan(config, torch.device("cpu"), images, get_world_size())
    state = trainer.build_state(plan)
    metrics = [
        trainer.train_step(state, crops, plan, epoch=1, it=i)
        for i, crops in enumerate(crops_per_step)
    ]
    return state, torch.stack([torch.stack(list(m.values())) for m in metrics])


def init(rank: int, world: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    from dino.distributed import init_distributed

    init_distributed("cpu")


def steps_worker(
    rank: int,
    world: int,
    port: int,
    out: str,
    steps: int,
    batch: int,
    centering: str,
    accum: int = 1,
) -> None:
    """Run ``steps`` training steps on this rank's shard (``accum`` micro-batches of
    ``batch``) and save the results."""
    init(rank, world, port)
    config = tiny_config(out, batch_size_per_gpu=batch, centering=centering,
                         grad_accum_steps=accum)  # fmt: skip
    crops = [shard(c, rank, world) for c in synthetic_crops(batch * accum * world, steps)]
    state, metrics = run_steps(config, crops)
    torch.save(
        {
            "student": state.student.state_dict(),
            "teacher": state.teacher.state_dict(),
            "center": state.loss_fn.center,
            "metrics": metrics,
        },
        Path(out) / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


class IndexDataset(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return [torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)], i, i, []  # as SkipBadImages


def sampler_worker(rank: int, world: int, port: int, out: str, n: int) -> None:
    """Record which images this rank's loader yields in epochs 0 and 1."""
    init(rank, world, port)
    config = tiny_config(out, batch_size_per_gpu=2, num_workers=0)
    seen = {}
    for epoch in (0, 1):
        loader = builders.build_loader(
            IndexDataset(n), LoaderSpec.of(config), config.seed, epoch, torch.device("cpu")
        )
        indices = list(loader.sampler)
        assert len(loader) * config.batch_size_per_gpu == len(indices)
        seen[epoch] = indices
    torch.save(seen, Path(out) / f"indices{rank}.pt")
    dist.destroy_process_group()
