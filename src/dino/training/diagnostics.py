"""Collapse diagnostics (DINO section 5.3): the teacher's entropies next to ln K.

Two failure modes: a uniform teacher (each image's distribution has entropy near ln K and
the loss sits at ln K) and a dominant dimension (the batch-mean distribution has entropy
near 0: every image puts its mass on the same few outputs).
"""

from __future__ import annotations

import math

from torch import Tensor


def entropy(probs: Tensor) -> Tensor:
    """Shannon entropy in nats along the last dimension."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)


def collapse_warning(teacher_entropy: float, batch_entropy: float, out_dim: int) -> str | None:
    """A warning naming the kind of collapse and what to try; None if training looks healthy."""
    ln_k = math.log(out_dim)
    if teacher_entropy > 0.9 * ln_k:
        return (
            f"uniform collapse: the teacher's per-image entropy is {teacher_entropy:.2f} of "
            f"ln K = {ln_k:.2f}, so the loss is stuck near ln K. Try a lower --teacher_temp "
            "(e.g. 0.04), a higher --momentum_teacher for small batches (e.g. 0.9995), a smaller "
            "--out_dim on small data, and judge progress by k-NN accuracy."
        )
    if batch_entropy < 0.5 * math.log(2) or batch_entropy < 0.1 * ln_k:
        return (
            f"dominant-dimension collapse: the batch-mean teacher distribution has entropy "
            f"{batch_entropy:.2f} (ln K = {ln_k:.2f}); every image maps to the same outputs. "
            "Try a higher --teacher_temp or a longer --warmup_teacher_temp_epochs, a lower --lr, "
            "and check that the data has variety."
        )
    return None
