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
    return model


def _vit_layers(model: nn.Module, images: Tensor, n: int = 1) -> list[Tensor]:
    """The final-norm token sequences of the last ``n`` blocks of a timm ViT, each
    (B, 1 + N, D) with [CLS] first and the register tokens, if any, left out."""
    layers = type(model).get_intermediate_layers(  # type: ignore[attr-defined]
        model, images, n, return_prefix_tokens=True, norm=True
    )
    return [torch.cat((prefix[:, :1], patches), dim=1) for patches, prefix in layers]
