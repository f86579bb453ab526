"""ResNet backbones from torchvision with the classifier removed (DINO section 3.1)."""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn

RESNETS: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
}


def resnet(name: str) -> torchvision.models.ResNet:
    """A randomly initialised ResNet whose ``forward`` returns pooled features (B, embed_dim)."""
    if name not in RESNETS:
        raise ValueError(f"unknown ResNet {name!r}; valid: {', '.join(RESNETS)}")
    model = RESNETS[name](weights=None)
    model.embed_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model
