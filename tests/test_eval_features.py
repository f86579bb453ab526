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


def test_multiscale_average_is_normalised(vit):
    images = torch.randn(2, 3, 32, 32)
    fn = multiscale(FEATURE_HEADS["cls"], multiple=8)
    out = fn(vit, images)
    assert out.shape == (2, 48)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    # Scales 1, 1/sqrt(2), 1/2 of 32 px round to 32, 24 and 16: the mean of those three.
    sizes = [32, 24, 16]
    mean = sum(vit(F.interpolate(images, size=(s, s), mode="bilinear")) for s in sizes) / 3
    torch.testing.assert_close(out, F.normalize(mean, dim=1), rtol=1e-4, atol=1e-5)


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
