"""ResNet backbones from torchvision with the classifier removed (DINO section 3.1)."""

from __future__ import annotations

import torchvision
from torch import nn

from dino.architectures import BackboneSpec


def resnet(spec: BackboneSpec, drop_path_rate: float = 0.0) -> torchvision.models.ResNet:
    """A randomly initialised ResNet whose ``forward`` returns pooled features (B, embed_dim).

    The ViT fields of ``spec`` and ``drop_path_rate`` do not apply: DINO trains ResNets
    without stochastic depth.
    """
    entry = spec.entry
    if entry.family != "resnet":
        raise ValueError(f"{spec.arch} is not a ResNet")
    model = torchvision.models.get_model(entry.name, weights=None)
    if spec.in_chans != 3:  # torchvision's stem for other channel counts, initialised as its own
        model.conv1 = nn.Conv2d(spec.in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.embed_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model
