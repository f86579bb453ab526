"""Any timm model as a DINO backbone (``--arch timm:NAME``), trained and evaluated like ours.

timm builds the model with its classifier removed (``num_classes=0``), so that ``forward``
returns the pooled features (B, num_features): the [CLS] token after the final norm for a
ViT, as DINO uses it. Its parameter names stay timm's, so a checkpoint's teacher backbone
loads back into ``timm.create_model(NAME, num_classes=0)`` as it is. ViT-like models get a
position grid at the run's global crop size and ``dynamic_img_size``, so that local crops
and evaluation sizes go through too, and this package's token interface
(``get_intermediate_layers``: the normalised [CLS] and patch tokens of the last n blocks)
for the evaluations that read tokens. Weights are random: nothing is downloaded.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from dino.architectures import TIMM_PREFIX, BackboneSpec


def timm_backbone(spec: BackboneSpec, drop_path_rate: float = 0.0) -> nn.Module:
    """The timm model ``spec.arch`` (``timm:NAME``) for ``spec.in_chans`` channels, with
    stochastic depth ``drop_path_rate`` where timm's model has it."""
    import timm

    entry = spec.entry
    kwargs: dict = {"pretrained": False, "num_classes": 0, "in_chans": spec.in_chans}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if entry.patched:
        kwargs.update(img_size=spec.img_size or entry.image_size, dynamic_img_size=True)
    model = timm.create_model(spec.arch[len(TIMM_PREFIX) :], **kwargs)
    # What this package's evaluations read of a backbone: its width and patch size.
    model.embed_dim = int(model.num_features)  # type: ignore[arg-type, assignment]
    if entry.patched:
        model.patch_size = entry.patch_size  # type: ignore[assignment]
        if hasattr(model, "num_prefix_tokens") and hasattr(model, "get_intermediate_layers"):
            # An instance attribute: timm's method of the same name returns other tokens.
            model.get_intermediate_layers = partial(_vit_layers, model)  # type: ignore[assignment]
        attn = getattr(getattr(model, "blocks", [None])[-1], "attn", None)
        if all(hasattr(attn, a) for a in ("qkv", "num_heads", "head_dim", "scale")):
            model.num_heads = attn.num_heads  # type: ignore[union-attr]
            model.get_last_selfattention = partial(_vit_last_attention, model)  # type: ignore[assignment]
    return model


def _vit_layers(model: nn.Module, images: Tensor, n: int = 1) -> list[Tensor]:
    """The final-norm token sequences of the last ``n`` blocks of a timm ViT, each
    (B, 1 + N, D) with [CLS] first and the register tokens, if any, left out."""
    layers = type(model).get_intermediate_layers(  # type: ignore[attr-defined]
        model, images, n, return_prefix_tokens=True, norm=True
    )
    return [torch.cat((prefix[:, :1], patches), dim=1) for patches, prefix in layers]


def _vit_last_attention(model: Any, images: Tensor) -> Tensor:
    """The softmax attention of a timm ViT's last block, (B, heads, 1 + N, 1 + N) with [CLS]
    first and register tokens left out, computed as timm's Attention computes it (timm's
    fused kernel never forms the matrix)."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    for block in model.blocks[:-1]:
        x = block(x)
    last = model.blocks[-1]
    attn = last.attn
    b, n, _ = x.shape
    qkv = attn.qkv(last.norm1(x)).reshape(b, n, 3, attn.num_heads, attn.head_dim)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, N, N)
    keep = [0, *range(int(model.num_prefix_tokens), n)]  # [CLS] and the patches
    return weights[:, :, keep][:, :, :, keep]
