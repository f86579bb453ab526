"""This project's DINO training against lightly's, end to end on the same images and network.

    pip install -e ".[bench]"          # lightly is a benchmark extra, not a dependency
    python benchmarks/bench_lightly.py --steps 10

Both train the bench config's ViT (192-d, depth 6, 3 heads, patch 4; our ``VisionTransformer``
for both, drop path 0.1 on the student) with a 2048-256-4096 DINO head, AdamW, batch 128,
in float32, on the same folder of generated 32-px PNGs read by one loader process
(``--num_workers``), with 2 x 32-px + 6 x 16-px crops. Ours: ``dino train``'s step with
``--augment_on device`` and ``--augment_on loader``. Lightly's: its own ``DINOTransform``
in the loader, ``LightlyDataset``, ``DINOProjectionHead``, ``DINOLoss`` and
``update_momentum``, one backbone pass per view, as in lightly's DINO example. Each rate is
img/s over ``--steps`` steps after 3 warm-up steps; all in one process, one after another.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import (  # noqa: E402
    PRESETS,
    bench_plan,
    end_to_end_s,
    feed_of,
    synthetic_crops,
    time_steps,
    write_folder,
)

from dino.models import build_backbone  # noqa: E402
from dino.training import trainer  # noqa: E402


def lightly_rates(folder: Path, values: dict, steps: int, num_workers: int) -> dict[str, float]:
    """img/s of lightly's DINO: the step alone (synthetic views) and end to end."""
    from lightly.data import LightlyDataset
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import DINOTransform

    batch, dim, local_n = values["batch_size_per_gpu"], values["embed_dim"], 6

    def backbone(drop_path: float) -> torch.nn.Module:
        return build_backbone(
            "vit_tiny",
            patch_size=values["patch_size"],
            img_size=values["global_crop_size"],
            drop_path_rate=drop_path,
            embed_dim=dim,
            depth=values["depth"],
            num_heads=values["num_heads"],
        )

    student = torch.nn.Sequential(backbone(0.1), DINOProjectionHead(dim, 2048, 256, 4096))
    teacher = torch.nn.Sequential(backbone(0.0), DINOProjectionHead(dim, 2048, 256, 4096))
    teacher.load_state_dict(student.state_dict())
    deactivate_requires_grad(teacher)
    criterion = DINOLoss(output_dim=4096, warmup_teacher_temp_epochs=0)
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-4, weight_decay=0.04)

    def step(views: list[torch.Tensor]) -> None:
        update_momentum(student, teacher, m=0.996)
        teacher_out = [teacher(v) for v in views[:2]]
        student_out = [student(v) for v in views]
        loss = criterion(teacher_out, student_out, epoch=0)
        loss.backward()
        student[1].cancel_last_layer_gradients(current_epoch=1)
        optimizer.step()
        optimizer.zero_grad()

    def seconds_per_step(views_iter) -> float:
        for _ in range(3):
            step(next(views_iter))
        start = time.perf_counter()
        for _ in range(steps):
            step(next(views_iter))
        return (time.perf_counter() - start) / steps

    g, s = values["global_crop_size"], values["local_crop_size"]
    synthetic = [torch.randn(batch, 3, g, g)] * 2 + [torch.randn(batch, 3, s, s)] * local_n
    step_s = seconds_per_step(iter(lambda: synthetic, None))
    transform = DINOTransform(global_crop_size=g, local_crop_size=s, n_local_views=local_n)
    dataset = LightlyDataset(input_dir=str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=num_workers
    )
    e2e_s = seconds_per_step(views for views, _, _ in loader)
    return {"step": batch / step_s, "e2e": batch / e2e_s}


def ours(folder: Path, values: dict, steps: int, out: str) -> dict[str, float]:
    plan = bench_plan(values, folder, out, steps)
    state = trainer.build_state(plan)
    batch = plan.loader.batch_size_per_gpu
    crops = synthetic_crops(plan, plan.device)
    rates = {"step": batch / time_steps(state, plan, iter(lambda: crops, None), steps, plan.device)}
    for path in ("device", "loader"):
        rates[f"e2e {path}"] = batch / end_to_end_s(state, plan, feed_of(plan, folder, path), steps)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--num_workers", type=int, default=1)
    args = parser.parse_args()
    values = dict(PRESETS["bench"], device="cpu", num_workers=args.num_workers, precision="fp32")
    image_size = int(values.pop("image_size"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        write_folder(folder, values["batch_size_per_gpu"] * (args.steps + 4), image_size)
        mine = ours(folder, values, args.steps, tmp)
        theirs = lightly_rates(folder, values, args.steps, args.num_workers)
    print(f"\nbench config, fp32, CPU, {torch.get_num_threads()} threads, "
          f"{args.num_workers} loader worker(s), batch {values['batch_size_per_gpu']}")  # fmt: skip
    print("| | step img/s | end to end img/s | end to end vs lightly |")
    print("|---|---|---|---|")
    lightly_e2e = theirs["e2e"]
    for name, step, e2e in (
        ("dino, --augment_on device", mine["step"], mine["e2e device"]),
        ("dino, --augment_on loader", mine["step"], mine["e2e loader"]),
        ("lightly (DINOTransform)", theirs["step"], theirs["e2e"]),
    ):
        print(f"| {name} | {step:.1f} | {e2e:.1f} ({e2e / step:.0%}) | {e2e / lightly_e2e:.2f}x |")


if __name__ == "__main__":
    main()
