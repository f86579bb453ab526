"""Feature heads over one extraction path: shapes, GeM, multi-scale, ResNet limits."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import TensorDataset

from dino.config import ConfigError
from dino.data.folder import ImageList
from dino.data.transforms import eval_transform
from dino.eval.features import (
    FEATURE_HEADS,
    extract_features,
    feature_head,
    gem,
    multiscale,
)
from dino.models import build_backbone


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return build_backbone(
        "vit_tiny", patch_size=8, img_size=32, depth=3, embed_dim=48, num_heads=3
    ).eval()


def test_heads_shapes(vit):
    images = torch.randn(2, 3, 32, 32)
    assert feature_head("cls")(vit, images).shape == (2, 48)
    assert feature_head("patch_mean")(vit, images).shape == (2, 48)
    assert feature_head("cls_gem")(vit, images).shape == (2, 96)
    assert feature_head("lastn_cls", n_last_blocks=2)(vit, images).shape == (2, 96)
    both = feature_head("lastn_cls", n_last_blocks=3, avgpool=True)(vit, images)
    assert both.shape == (2, 4 * 48)
    # The last [CLS] of lastn_cls is the backbone's output; the pooled part the patch mean.
    torch.testing.assert_close(both[:, 96:144], vit(images))
    torch.testing.assert_close(both[:, 144:], feature_head("patch_mean")(vit, images))
    with pytest.raises(ConfigError, match="valid: cls, patch_mean, cls_gem, lastn_cls"):
        feature_head("mean")


def test_linear_features_in_the_reference_order(vit):
    """eval_linear.py's two feature layouts, transcribed naively: ViT-S (the last blocks'
    [CLS] concatenated; 4 of 12 there, 2 of 3 here) and ViT-B (last [CLS] and pooled patch
    tokens interleaved)."""
    images = torch.randn(2, 3, 32, 32)
    intermediate_output = vit.get_intermediate_layers(images, 2)
    output = torch.cat([x[:, 0] for x in intermediate_output], dim=-1)
    torch.testing.assert_close(feature_head("lastn_cls", n_last_blocks=2)(vit, images), output)

    intermediate_output = vit.get_intermediate_layers(images, 1)
    output = torch.cat([x[:, 0] for x in intermediate_output], dim=-1)
    output = torch.cat(
        (
            output.unsqueeze(-1),
            torch.mean(intermediate_output[-1][:, 1:], dim=1).unsqueeze(-1),
        ),
        dim=-1,
    )
    output = output.reshape(output.shape[0], -1)
    ours = feature_head("lastn_cls", n_last_blocks=1, avgpool=True)(vit, images)
    torch.testing.assert_close(ours, output)
    torch.testing.assert_close(ours[:, 0::2], vit(images))  # [CLS] at even positions


def test_gem():
    x = torch.rand(2, 5, 3) + 0.1
    torch.testing.assert_close(gem(x, p=1.0), x.mean(dim=1))
    assert torch.all(gem(x, p=4.0) >= x.mean(dim=1))  # power means grow with p
    torch.testing.assert_close(gem(x, p=200.0), x.amax(dim=1), rtol=0.02, atol=0)


def test_extract_features_with_a_head(vit):
    data = TensorDataset(torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 0, 1, 2]))
    out = extract_features(vit, data, batch_size=2, features=feature_head("cls_gem"), desc="test")
    assert out.features.shape == (5, 96) and out.labels.tolist() == [0, 1, 0, 1, 2]
    assert out.index.tolist() == [0, 1, 2, 3, 4] and out.skipped == []


def reference_multi_scale(images, model):
    """The reference's utils.multi_scale, written from its definition: bilinear copies by
    scale factor 1, 1/sqrt(2), 1/2, [CLS] summed, / 3, divided by the batch tensor's norm
    (one image at a time in its retrieval script, so each row's own norm)."""
    total = 0
    for s in (1, 1 / 2 ** (1 / 2), 1 / 2):
        x = images if s == 1 else F.interpolate(images, scale_factor=s, mode="bilinear")
        total = total + model(x)
    total = total / 3
    return total / total.norm()


def test_multiscale_by_scale_factor_is_the_references(vit):
    vit.crop_remainder = True  # the evaluation backbone's setting (dino.eval.load_backbone)
    try:
        images = torch.randn(2, 3, 37, 30)  # a thumbnail's sides: not multiples of 8
        out = multiscale(FEATURE_HEADS["cls"])(vit, images)
        assert out.shape == (2, 48)
        for i in range(2):
            expected = reference_multi_scale(images[i : i + 1], vit)
            torch.testing.assert_close(out[i : i + 1], expected, rtol=1e-4, atol=1e-5)
        # 37 x 30 at 1/sqrt(2) is 26 x 21 px: the ViT sees 3 x 2 patches, the rest dropped.
        half = F.interpolate(images, scale_factor=2**-0.5, mode="bilinear")
        assert half.shape[-2:] == (26, 21)
        torch.testing.assert_close(vit(half), vit(half[..., :24, :16]))
    finally:
        vit.crop_remainder = False


def test_multiscale_rounded_to_patches(vit):
    images = torch.randn(2, 3, 32, 32)
    fn = multiscale(FEATURE_HEADS["cls"], multiple=8, sizes="patch")
    out = fn(vit, images)
    assert out.shape == (2, 48)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    # Scales 1, 1/sqrt(2), 1/2 of 32 px round to 32, 24 and 16: the mean of those three.
    sizes = [32, 24, 16]
    mean = sum(vit(F.interpolate(images, size=(s, s), mode="bilinear")) for s in sizes) / 3
    torch.testing.assert_close(out, F.normalize(mean, dim=1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="unknown sizes"):
        multiscale(FEATURE_HEADS["cls"], sizes="round")


def test_images_of_different_sizes_in_one_batch(vit):
    """Thumbnails keep their aspect ratio: a batch mixes sizes, each runs at its own."""
    vit.crop_remainder = True
    try:
        images = [torch.randn(3, 32, 24), torch.randn(3, 20, 32), torch.randn(3, 32, 24)]
        out = extract_features(vit, _Tensors(images), batch_size=3)
        expected = torch.cat([vit(x[None]) for x in images])
        torch.testing.assert_close(out.features, expected, rtol=1e-4, atol=1e-5)
    finally:
        vit.crop_remainder = False


class _Tensors(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i


def test_resnet_gives_cls_only():
    resnet = build_backbone("resnet18").eval()
    images = torch.randn(1, 3, 32, 32)
    assert feature_head("cls")(resnet, images).shape == (1, 512)
    with pytest.raises(ConfigError, match="needs a ViT backbone"):
        feature_head("cls_gem")(resnet, images)


def test_unreadable_images_are_left_out_and_named(vit, tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    data = ImageList([good, bad, good], [0, 1, 2], eval_transform(32))
    out = extract_features(vit, data, batch_size=2)
    assert out.index.tolist() == [0, 2] and out.labels.tolist() == [0, 2]
    assert len(out.skipped) == 1 and "bad.jpg" in out.skipped[0]
