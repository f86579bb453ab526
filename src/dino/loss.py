"""The DINO objective (DINO 3.1) and DINOv2's anti-collapse terms, as one loss with named terms.

DINO: P_s = softmax(g_s(x) / tau_s); P_t = softmax((g_t(x) - c) / tau_t); the ``dino`` term
averages -sum_k P_t log P_s over every pair (teacher global view i, student view v), v != i,
and over the batch. The center c follows c <- m c + (1 - m) mean(g_t) after every step.

DINOv2 (Oquab et al. 2023, section 4) adds, against collapse:
- Sinkhorn-Knopp centering (SwAV, Caron et al. 2020) in place of the running center: the
  teacher's distributions are rescaled so that each is sharp while the batch uses every
  prototype equally, so neither a uniform teacher nor one winning dimension is a fixed point;
- the ``koleo`` term (Sablayrolles et al. 2019) on the student's [CLS] features: minus the
  mean log distance of each feature to its nearest neighbour in the batch, which spreads them.

``DINOLoss.forward`` returns every term by name; the trainer back-propagates ``total``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dino.config import CENTERINGS
from dino.distributed import all_reduce_max, all_reduce_sum, get_world_size


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


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, teacher_temp: float, iterations: int = 3) -> Tensor:
    """Teacher distributions with equal prototype usage over the global batch (SwAV, DINOv2).

    teacher_logits: (B, K) on this process; the batch is the union over all processes.
    Q = exp(logits / tau); then ``iterations`` times: scale each prototype's row of Q to sum
    1/K, then each sample's column to sum 1/B (B the global batch). Returns (B, K), float32,
    each row a distribution (the columns rescaled to sum 1).
    """
    logits = teacher_logits.float() / teacher_temp
    # exp of logits minus their global maximum: the scalings below cancel any constant.
    q = torch.exp(logits - all_reduce_max(logits.max().clone())).t()  # (K, B)
    k, batch = q.shape[0], q.shape[1] * get_world_size()
    tiny = torch.finfo(q.dtype).tiny  # a sum that underflowed to 0 stays 0 instead of NaN
    q /= all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True)).clamp_min(tiny) * k  # rows: 1/K each
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny) * batch  # columns: 1/B each
    return (q * batch).t()


def koleo(features: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo entropy estimator: -mean_i log(min_{j != i} ||x_i - x_j|| + eps), x L2-normalised.

    features: (n, D), one crop's features on this process (as in DINOv2); 0 when n < 2.
    Computed in float32.
    """
    x = F.normalize(features.float(), dim=-1, eps=eps)
    if x.shape[0] < 2:  # no other sample to be near: nothing to spread
        return x.sum() * 0.0
    with torch.no_grad():  # which neighbour is nearest: no gradient through the choice
        similarity = x @ x.t()  # (n, n)
        similarity.fill_diagonal_(-2.0)
        nearest = similarity.argmax(dim=1)
    distance = (x - x[nearest]).norm(dim=-1)  # (n,)
    return -torch.log(distance + eps).mean()


@dataclass
class LossOutput:
    """One step's objective: ``total`` to back-propagate, each term (unweighted) by name,
    and the teacher distributions the ``dino`` term used, (2B, K) float32, no gradient."""

    total: Tensor
    terms: dict[str, Tensor]
    teacher_probs: Tensor


class DINOLoss(nn.Module):
    """The training objective; holds the center (a (1, K) buffer named ``center``, as in
    reference checkpoints; kept, unused, under Sinkhorn-Knopp centering).

    ``centering``: "center" (DINO's running center) or "sinkhorn" (DINOv2's Sinkhorn-Knopp,
    ``sinkhorn_iterations`` iterations). ``koleo_weight``: weight of the KoLeo term on the
    student's [CLS] features (0: off; DINOv2 uses 0.1).
    """

    center: Tensor

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: str = "center",
        koleo_weight: float = 0.0,
        sinkhorn_iterations: int = 3,
    ) -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering: one of {', '.join(CENTERINGS)}, not {centering!r}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.koleo_weight = koleo_weight
        self.sinkhorn_iterations = sinkhorn_iterations
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Centred and sharpened teacher distributions, (2B, K), float32, no gradient."""
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_logits, teacher_temp, self.sinkhorn_iterations)
        with torch.no_grad():
            return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """c <- m c + (1 - m) * mean of the teacher logits over the step, across processes."""
        batch_sum = all_reduce_sum(teacher_logits.float().sum(dim=0, keepdim=True))
        batch_center = batch_sum / (teacher_logits.shape[0] * get_world_size())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        teacher_temp: float,
        student_cls: Tensor | None = None,
    ) -> LossOutput:
        """The loss for this step (with the center before the update), then the center update.

        student_logits (V * B, K) and teacher_logits (2 * B, K) as in ``dino_cross_entropy``;
        student_cls (2 * B, D): the student's backbone [CLS] features of the two global crops,
        needed when ``koleo_weight`` > 0.
        """
        probs = self.teacher_probs(teacher_logits, teacher_temp)
        total, terms = self.objective(student_logits, probs, student_cls)
        self.update_center(teacher_logits)
        return LossOutput(total, terms, probs)

    def objective(
        self, student_logits: Tensor, teacher_probs: Tensor, student_cls: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted total and the terms by name, for the teacher distributions
        ``teacher_probs`` (from ``teacher_probs``); shapes as in ``forward``. Gradient
        accumulation calls it once per micro-batch with that micro-batch's rows of the
        distributions computed over the whole batch."""
        terms = {"dino": dino_cross_entropy(student_logits, teacher_probs, self.student_temp)}
        total = terms["dino"]
        if self.koleo_weight > 0:
            if student_cls is None:
                raise ValueError("koleo_weight > 0 needs the student's [CLS] features")
            first, second = student_cls.chunk(2)  # one KoLeo per global crop, summed (DINOv2)
            terms["koleo"] = koleo(first) + koleo(second)
            total = total + self.koleo_weight * terms["koleo"]
        return total, terms
