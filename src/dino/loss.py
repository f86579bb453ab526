"""The DINO loss: cross-entropy between the centred, sharpened teacher and the student (DINO 3.1).

P_s = softmax(g_s(x) / tau_s); P_t = softmax((g_t(x) - c) / tau_t); the loss averages
-sum_k P_t log P_s over every pair (teacher global view i, student view v), v != i, and over
the batch. The center c follows c <- m c + (1 - m) mean(g_t) after every step.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dino.distributed import all_reduce_sum, get_world_size


def teacher_temp_schedule(
    warmup_temp: float, final_temp: float, warmup_epochs: int, epochs: int
) -> np.ndarray:
    """Teacher temperature per epoch: linear from ``warmup_temp`` over ``warmup_epochs``, then flat.

    As in the reference, the warm-up is ``linspace(warmup, final, warmup_epochs)``, so the
    final value is reached at epoch ``warmup_epochs - 1``.
    """
    warmup_epochs = min(warmup_epochs, epochs)
    warmup = np.linspace(warmup_temp, final_temp, warmup_epochs)
    return np.concatenate((warmup, np.full(epochs - warmup_epochs, final_temp)))


def dino_cross_entropy(
    student_logits: Tensor, teacher_probs: Tensor, student_temp: float
) -> Tensor:
    """Mean over pairs (i, v), v != i, and images of -sum_k P_t[i] log P_s[v].

    student_logits: (V * B, K), crop-major (all images' crop 0, then crop 1, ...), global
    crops first. teacher_probs: (2 * B, K), the teacher's distributions for the 2 global
    crops in the same order. Computed in float32 whatever the input precision.
    """
    n_teacher = 2
    batch = teacher_probs.shape[0] // n_teacher
    n_student = student_logits.shape[0] // batch
    log_p = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    log_p = log_p.view(n_student, batch, -1)  # (V, B, K)
    q = teacher_probs.float().view(n_teacher, batch, -1)  # (2, B, K)
    ce = -torch.einsum("ibk,vbk->ivb", q, log_p)  # (2, V, B): every teacher/student pair
    same_view = torch.eye(n_teacher, n_student, dtype=torch.bool, device=ce.device)
    n_pairs = n_teacher * n_student - int(same_view.sum())
    return ce[~same_view].sum() / (n_pairs * batch)


class DINOLoss(nn.Module):
    """Holds the center (a (1, K) buffer named ``center``, as in reference checkpoints)."""

    center: Tensor

    def __init__(
        self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Centred and sharpened teacher distribution, (2B, K), float32, no gradient."""
        with torch.no_grad():
            return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """c <- m c + (1 - m) * mean of the teacher logits over the step, across processes."""
        batch_sum = all_reduce_sum(teacher_logits.float().sum(dim=0, keepdim=True))
        batch_center = batch_sum / (teacher_logits.shape[0] * get_world_size())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, teacher_temp: float
    ) -> Tensor:
        """The loss for this step (with the center before the update), then the center update."""
        probs = self.teacher_probs(teacher_logits, teacher_temp)
        loss = dino_cross_entropy(student_logits, probs, self.student_temp)
        self.update_center(teacher_logits)
        return loss
