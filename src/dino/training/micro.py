"""Gradient accumulation: a step's crops cut into micro-batches, and their outputs joined.

Every tensor here is crop-major: c crops of B images stacked as (c * B, ...), row
i * B + b being crop i of image b (the layout of ``transforms.collate_multicrop``). A
micro-batch takes the same images from every crop, so each keeps that layout.
"""

from __future__ import annotations

import torch
from torch import Tensor


def micro_batches(crops: list[Tensor], n: int) -> list[list[Tensor]]:
    """``crops`` (groups (c * B, ...), the first holding the 2 global crops) as ``n`` lists
    of groups (c * B / n, ...), micro-batch j holding images j * B / n ... (j + 1) * B / n."""
    if n == 1:
        return [crops]
    batch = crops[0].shape[0] // 2
    if batch % n:
        raise ValueError(f"{batch} images per step do not split into {n} micro-batches")
    out: list[list[Tensor]] = [[] for _ in range(n)]
    for group in crops:
        c = group.shape[0] // batch
        parts = group.view(c, batch, *group.shape[1:]).split(batch // n, dim=1)  # (c, B/n, ...)
        for j, part in enumerate(parts):
            out[j].append(part.flatten(0, 1))
    return out


def join_micro(parts: list[Tensor], crops: int) -> Tensor:
    """The inverse of ``micro_batches`` for one group: ``parts`` (c * b, ...) -> (c * n b, ...)."""
    if len(parts) == 1:
        return parts[0]
    views = [p.view(crops, -1, *p.shape[1:]) for p in parts]  # each (c, b, ...)
    return torch.cat(views, dim=1).flatten(0, 1)


def micro_rows(full: Tensor, j: int, n: int, crops: int) -> Tensor:
    """Micro-batch ``j`` of ``n`` of one group: (c * B, ...) -> (c * B / n, ...)."""
    if n == 1:
        return full
    view = full.view(crops, -1, *full.shape[1:])  # (c, B, ...)
    b = view.shape[1] // n
    return view[:, j * b : (j + 1) * b].flatten(0, 1)
