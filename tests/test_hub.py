"""hubconf.py: the reference's entry points through torch.hub, with local weights (no network)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from dino.checkpoint import CheckpointError
from dino.models import build_backbone

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ["dino_resnet50", "dino_vitb16", "dino_vitb8", "dino_vits16", "dino_vits8"]


def hub(entry, **kwargs):
    return torch.hub.load(str(ROOT), entry, source="local", **kwargs)


def test_entry_points_are_the_references():
    """What torch.hub.list shows: every public callable of hubconf.py."""
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    public = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
    assert public == ENTRY_POINTS
    assert module.dependencies == ["torch", "torchvision"]


def test_local_weights_load_strictly(tmp_path):
    torch.manual_seed(0)
    vit = build_backbone("vit_small", patch_size=16).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(vit.state_dict(), path)
    model = hub("dino_vits16", pretrained=False, weights=str(path))
    assert not model.training
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit(x))
    with pytest.raises(CheckpointError, match="dino_vits8 .*shape mismatch.*patch_embed"):
        hub("dino_vits8", pretrained=False, weights=str(path))


def test_pretrained_goes_through_the_hub_cache_with_the_published_url(monkeypatch):
    """load_state_dict_from_url downloads into torch.hub's cache once, then reads the copy."""
    urls = []

    def from_url(url, **kwargs):
        urls.append(url)
        return build_backbone("resnet50").state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", from_url)
    hub("dino_resnet50")
    assert urls == [
        "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth"
    ]
