"""torch.hub entry points with the reference's names: the DINO backbones, with the published
weights or a local file.

    torch.hub.load("path/to/this/clone", "dino_vits16", source="local")       # published
    torch.hub.load("path/to/this/clone", "dino_vits16", source="local",
                   pretrained=False, weights="backbone.pth")                  # local file

``pretrained=True`` fetches the authors' file through ``torch.hub.load_state_dict_from_url``,
which downloads it once into torch.hub's cache (``torch.hub.get_dir()``) and reads the
cached copy afterwards. ``weights=PATH`` loads a local file instead: a backbone state dict
(``dino export --format backbone``) or a full checkpoint (its teacher), without running code
from it and strictly (a missing or unexpected key is an error). Other keyword arguments go
to ``dino.models.build_backbone`` (e.g. ``img_size``, ``drop_path_rate``). Every model is
returned in eval mode; its ``forward`` gives the final-norm [CLS] features (ResNet-50: the
pooled features).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from torch import nn

# torch.hub lists every public callable of this module as an entry point: the imports
# happen inside the functions, so that only the five models are listed.
dependencies = ["torch", "torchvision"]

BASE_URL = "https://dl.fbaipublicfiles.com/dino/"
# entry point -> (architecture, patch size, the published backbone file under BASE_URL)
PUBLISHED = {
    "dino_vits16": ("vit_small", 16, "dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"),
    "dino_vits8": ("vit_small", 8, "dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth"),
    "dino_vitb16": ("vit_base", 16, "dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
    "dino_vitb8": ("vit_base", 8, "dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"),
    "dino_resnet50": ("resnet50", None, "dino_resnet50_pretrain/dino_resnet50_pretrain.pth"),
}


def _backbone(entry: str, pretrained: bool, weights: str | Path | None, **kwargs: Any) -> nn.Module:
    _use_this_clone()
    import torch

    from dino.checkpoint import backbone_state, load_file, load_strict
    from dino.models import build_backbone

    arch, patch_size, file = PUBLISHED[entry]
    model = build_backbone(arch, patch_size, **kwargs)
    if weights is not None:
        state = backbone_state(load_file(weights))
    elif pretrained:
        state = torch.hub.load_state_dict_from_url(
            BASE_URL + file, map_location="cpu", weights_only=True
        )
    else:
        return model.eval()
    load_strict(model, state, f"{entry} ({arch})")
    return model.eval()


def _use_this_clone() -> None:
    """Import dino from this clone's src/ when it is not pip-installed (torch.hub's GitHub
    copy); an installed dino is used as it is."""
    import importlib.util
    import sys
    from pathlib import Path

    if importlib.util.find_spec("dino") is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))


def dino_vits16(
    pretrained: bool = True, weights: str | Path | None = None, **kwargs: Any
) -> nn.Module:
    """ViT-S/16 (21M parameters): 74.5% k-NN, 77.0% linear on ImageNet."""
    return _backbone("dino_vits16", pretrained, weights, **kwargs)


def dino_vits8(
    pretrained: bool = True, weights: str | Path | None = None, **kwargs: Any
) -> nn.Module:
    """ViT-S/8 (21M parameters): 78.3% k-NN, 79.7% linear on ImageNet."""
    return _backbone("dino_vits8", pretrained, weights, **kwargs)


def dino_vitb16(
    pretrained: bool = True, weights: str | Path | None = None, **kwargs: Any
) -> nn.Module:
    """ViT-B/16 (85M parameters): 76.1% k-NN, 78.2% linear on ImageNet."""
    return _backbone("dino_vitb16", pretrained, weights, **kwargs)


def dino_vitb8(
    pretrained: bool = True, weights: str | Path | None = None, **kwargs: Any
) -> nn.Module:
    """ViT-B/8 (85M parameters): 77.4% k-NN, 80.1% linear on ImageNet."""
    return _backbone("dino_vitb8", pretrained, weights, **kwargs)


def dino_resnet50(
    pretrained: bool = True, weights: str | Path | None = None, **kwargs: Any
) -> nn.Module:
    """ResNet-50 without its classifier (23M parameters): 67.5% k-NN, 75.3% linear."""
    return _backbone("dino_resnet50", pretrained, weights, **kwargs)
