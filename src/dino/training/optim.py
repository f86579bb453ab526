"""Optimizers, parameter groups, gradient clipping and the frozen last layer (DINO section 3.2)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups: weights that decay, then biases and other 1-D parameters without decay.

    Frozen parameters are left out. The schedule sets the first group's weight decay; the
    second keeps ``weight_decay = 0``. Each group also lists its parameters' names under
    ``param_names`` (torch's key for named optimizer groups, saved in the optimizer's state
    dict), so that a resume can restore the moments by name instead of by position.
    """
    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay)[name] = p
    return [
        {"params": list(decay.values()), "param_names": list(decay)},
        {"params": list(no_decay.values()), "param_names": list(no_decay), "weight_decay": 0.0},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017).

    Weight decay and the trust ratio eta * ||w|| / ||update|| apply to parameters with more
    than one dimension only; biases and norms take the plain momentum step.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 0.001,
    ) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=g["weight_decay"])
                    w_norm, u_norm = torch.norm(p), torch.norm(update)
                    one = torch.ones_like(w_norm)
                    trust = torch.where(
                        w_norm > 0, torch.where(u_norm > 0, g["eta"] * w_norm / u_norm, one), one
                    )
                    update = update.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(update)
                p.add_(mu, alpha=-g["lr"])
        return loss


def build_optimizer(name: str, groups: list[dict], fused: bool = False) -> torch.optim.Optimizer:
    """adamw / sgd (momentum 0.9) / lars; lr and weight decay come from the schedules."""
    if name == "adamw":
        if fused:
            return torch.optim.AdamW(groups, lr=0.0, fused=True)
        return torch.optim.AdamW(groups, lr=0.0, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=0.9, foreach=True)
    if name == "lars":
        return LARS(groups)
    raise ValueError(f"unknown optimizer {name!r}; valid: adamw, sgd, lars")


def set_lr_and_wd(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Every group gets ``lr``; only the first (the decayed weights) gets ``weight_decay``."""
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr
        if i == 0:
            group["weight_decay"] = weight_decay


@torch.no_grad()
def clip_gradients(model: nn.Module, max_norm: float) -> Tensor:
    """Clip each parameter's gradient to norm ``max_norm`` separately, as the reference does.

    Returns the per-parameter gradient norms before clipping (a 1-D tensor).
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack(torch._foreach_norm(grads, 2.0))
    coefs = (max_norm / (norms.float() + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(coefs.to(grads[0].dtype).unbind(0)))
    return norms


def cancel_last_layer_gradients(model: nn.Module, epoch: int, freeze_epochs: int) -> None:
    """Drop the head's last-layer gradients during the first ``freeze_epochs`` epochs."""
    if epoch >= freeze_epochs:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None
