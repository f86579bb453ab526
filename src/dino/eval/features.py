"""One feature-extraction path for every evaluation protocol (DINO section 4)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def extract_features(
    model: nn.Module | Callable[[Tensor], Tensor],
    dataset: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    num_workers: int = 0,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Features of every item of ``dataset`` (which yields ``(image tensor, label)``).

    Returns ``(features (N, D) float32 on the CPU, labels (N,) int64)`` in dataset order.
    ``dtype`` runs the model under autocast (e.g. torch.bfloat16).
    """
    device = torch.device(device)
    if isinstance(model, nn.Module):
        model.eval()
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    feats, labels = [], []
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(images)
        feats.append(out.float().cpu())
        labels.append(torch.as_tensor(target))
    return torch.cat(feats), torch.cat(labels).long()
