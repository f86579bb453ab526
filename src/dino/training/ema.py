"""The momentum teacher (DINO section 3.1): theta_t <- m theta_t + (1 - m) theta_s."""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def update_teacher(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """EMA of every parameter, in place; buffers (BatchNorm statistics) are not averaged."""
    t_params: list[Tensor] = list(teacher.parameters())
    s_params: list[Tensor] = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)
