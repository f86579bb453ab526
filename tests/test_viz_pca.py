"""dino pca: principal components against numpy's SVD, the foreground found on features with
a known object, and pictures of the expected size."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_training_checkpoint, write_images
from dino.cli import main
from dino.eval.features import feature_head
from dino.models import build_backbone
from dino.viz.pca import foreground, pca_colours, pca_picture, principal_components


def test_principal_components_are_numpys_svd_up_to_sign():
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 17)
    ours = principal_components(x, 3).numpy()
    centred = x.double().numpy() - x.double().numpy().mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(ours), np.abs(u[:, :3] * s[:3]), atol=1e-8)
    assert torch.equal(principal_components(x, 3), principal_components(x.clone(), 3))


def object_tokens(inside: float, outside: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (2, 8, 8, 32) of two images whose centre 4 x 4 patches hold an object."""
    g = torch.Generator().manual_seed(1)
    obj = torch.zeros(2, 8, 8, dtype=torch.bool)
    obj[:, 2:6, 2:6] = True
    direction = torch.randn(32, generator=g)
    tokens = 0.05 * torch.randn(2, 8, 8, 32, generator=g)
    tokens += torch.where(obj, inside, outside)[..., None] * direction
    return tokens, obj


@pytest.mark.parametrize(("inside", "outside"), [(1.0, -1.0), (-1.0, 1.0)])
def test_the_foreground_is_the_object_whatever_the_sign_of_the_component(inside, outside):
    tokens, obj = object_tokens(inside, outside)
    assert torch.equal(foreground(tokens, 0.5), obj)
    assert foreground(tokens, 0.0).all()


def test_colours_are_black_outside_the_foreground_and_within_0_1_inside():
    tokens, obj = object_tokens(1.0, -1.0)
    colours = pca_colours(tokens, obj)
    assert colours.shape == (2, 8, 8, 3)
    assert (colours[~obj] == 0).all() and colours[obj].min() >= 0 and colours[obj].max() <= 1
    assert (colours[obj].amax(dim=0) == 1).all()  # each component spans [0, 1]
    assert (pca_colours(tokens, torch.zeros_like(obj)) == 0).all()


def test_the_picture_is_the_image_beside_its_patch_colours():
    image = Image.new("RGB", (48, 32), (10, 20, 30))
    colours = torch.zeros(4, 6, 3, dtype=torch.float64)
    colours[0, 0] = torch.tensor([1.0, 0.0, 0.0])
    picture = pca_picture(image, colours)
    assert picture.size == (96, 32)
    assert picture.getpixel((0, 0)) == (10, 20, 30)
    assert picture.getpixel((48, 0)) == (255, 0, 0) and picture.getpixel((48 + 8, 0)) == (0, 0, 0)


def test_the_patch_head_is_the_final_norm_patch_tokens_on_their_grid():
    vit = build_backbone("vit_tiny", patch_size=8, embed_dim=48, depth=2, num_heads=3, img_size=32)
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        grid = feature_head("patch")(vit, images)
        tokens = vit.forward_features(images)[:, 1:]  # (2, 4 * 6, 48)
    assert grid.shape == (2, 4, 6, 48)
    torch.testing.assert_close(grid.reshape(2, 24, 48), tokens)


def test_dino_pca_writes_a_picture_per_image_at_the_input_size(tmp_path):
    tiny_training_checkpoint(tmp_path / "ckpt.pth")
    write_images(tmp_path / "imgs", 3, size=40)
    common = ["--checkpoint", str(tmp_path / "ckpt.pth"), "--num_workers", "0"]
    out = tmp_path / "pca"
    assert main(["pca", *common, "--data_path", str(tmp_path / "imgs"), "--output_dir", str(out),
                 "--image_size", "48"]) == 0  # fmt: skip
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["class_0/img_000.png", "class_0/img_002.png", "class_1/img_001.png"]
    assert {Image.open(out / p).size for p in written} == {(96, 48)}
    image = tmp_path / "imgs" / "class_1" / "img_001.png"
    assert main(["pca", *common, "--image", str(image), "--output_dir", str(tmp_path / "one")]) == 0
    assert Image.open(tmp_path / "one" / "img_001.png").size == (64, 32)  # trained at 32 px
