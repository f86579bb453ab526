"""Attention maps: grid shapes, masks holding the stated mass, PNGs at the image's size."""

import numpy as np
import pytest
import torch
from PIL import Image

from dino.config import ConfigError
from dino.eval.attention import (
    attention_input,
    cls_attention,
    mass_masks,
    save_attention_maps,
    upsample,
)
from dino.models import build_backbone


def test_masks_keep_the_smallest_set_holding_the_mass():
    maps = torch.tensor([[[0.4, 0.3], [0.2, 0.1]], [[0.25, 0.25], [0.25, 0.25]]])
    masks = mass_masks(maps, 0.6)
    # 0.4 alone < 0.6, 0.4 + 0.3 >= 0.6: two cells; the uniform map needs three.
    assert masks[0].tolist() == [[True, True], [False, False]]
    assert masks[1].sum() == 3
    torch.manual_seed(0)
    random = torch.rand(5, 7, 9)
    for t in (0.1, 0.5, 0.6, 0.9, 1.0):
        kept = mass_masks(random, t)
        share = random / random.sum(dim=(1, 2), keepdim=True)
        mass = (share * kept).sum(dim=(1, 2))
        assert torch.all(mass >= t - 1e-6)
        # Minimal: dropping the smallest kept cell falls below the threshold.
        smallest = torch.where(kept, share, torch.inf).flatten(1).min(dim=1).values
        assert torch.all(mass - smallest < t)
    with pytest.raises(ConfigError, match="threshold"):
        mass_masks(maps, 1.5)


def test_input_sides_are_multiples_of_the_patch():
    img = Image.new("RGB", (70, 45))
    assert attention_input(img, 8).shape == (1, 3, 40, 64)
    assert attention_input(img, 8, short_side=90).shape == (1, 3, 88, 136)
    assert attention_input(Image.new("RGB", (5, 5)), 8).shape == (1, 3, 8, 8)


def test_files_have_the_image_size(tmp_path):
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", patch_size=8, img_size=32, depth=2, embed_dim=48, num_heads=3)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    maps = cls_attention(vit.eval(), attention_input(image, 8))
    assert maps.shape == (3, 4, 6)  # 37 x 53 px -> 32 x 48 px -> 4 x 6 patches
    attn = vit.get_last_selfattention(attention_input(image, 8))
    torch.testing.assert_close(maps.sum(dim=(1, 2)), attn[0, :, 0, 1:].sum(dim=1))
    written = save_attention_maps(image, maps, tmp_path / "out", threshold=0.6)
    names = {p.name for p in written}
    assert names == {
        f"{k}-{h}.png" for k in ("attn", "mask") for h in ("head0", "head1", "head2", "mean")
    }
    for path in written:
        with Image.open(path) as png:
            assert png.size == (53, 37) and png.mode == "RGB"
    assert upsample(maps, (37, 53), "bilinear").shape == (3, 37, 53)
    with pytest.raises(ConfigError, match="ResNet has no attention"):
        cls_attention(build_backbone("resnet18"), torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("registers", [0, 4])
def test_timm_vit_attention_is_timms_own_with_registers_left_out(registers):
    timm = pytest.importorskip("timm")
    from dino.architectures import BackboneSpec
    from dino.models.timm_backbone import timm_backbone

    torch.manual_seed(0)
    model = timm_backbone(BackboneSpec("timm:vit_tiny_patch16_224", img_size=32)).eval()
    if registers:  # the same weights with register tokens: timm builds them on request
        model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0,
                                  reg_tokens=registers, dynamic_img_size=True).eval()  # fmt: skip
        from dino.models.timm_backbone import _vit_last_attention

        model.get_last_selfattention = lambda x: _vit_last_attention(model, x)
        model.patch_size = 16
    seen = []
    last = model.blocks[-1].attn
    last.fused_attn = False  # timm then forms the matrix and passes it through attn_drop
    last.attn_drop.register_forward_hook(lambda m, inputs, out: seen.append(out))
    images = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        ours = model.get_last_selfattention(images)
        model(images)
    keep = [0, *range(1 + registers, 1 + registers + 6)]
    torch.testing.assert_close(ours, seen[0][:, :, keep][:, :, :, keep])
    assert cls_attention(model, images).shape == (3, 3, 2)
