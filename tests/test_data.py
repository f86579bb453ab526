import numpy as np
import pytest
import torch
from PIL import Image

from dino.data.demo import SHAPES, generate_shapes
from dino.data.folder import image_folder, labelled_folder
from dino.data.images import find_images, load_rgb
from dino.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropAugmentation,
    collate_multicrop,
    eval_transform,
    normalize_batch,
)


def test_recursive_search_and_modes(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "top.jpg")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "a" / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "a" / "deep" / "alpha.PNG")
    Image.fromarray(rgb).convert("P").save(tmp_path / "a" / "pal.bmp")
    Image.fromarray(rgb).save(tmp_path / "a" / "x.webp")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 200).save(tmp_path / "a" / "sixteen.tif")
    (tmp_path / "notes.txt").write_text("not an image")
    files = find_images(tmp_path)
    assert len(files) == 6
    for f in files:
        img = load_rgb(f)
        assert img.mode == "RGB" and img.size == (30, 20)
    assert len(image_folder(tmp_path)) == 6


def test_labelled_folder(tmp_path):
    for cls in ("cat", "dog", "emu"):
        (tmp_path / cls / "sub").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "sub" / "1.png")
    ds = labelled_folder(tmp_path)
    assert ds.classes == ["cat", "dog", "emu"] and ds.labels == [0, 1, 2]


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        image_folder(tmp_path)


def test_multicrop_shapes_and_collate():
    aug = MultiCropAugmentation(local_crops_number=3, global_crop_size=32, local_crop_size=16)
    img = Image.new("RGB", (50, 40), (120, 30, 200))
    crops = aug(img)
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(c.dtype == torch.uint8 for c in crops)
    batch = [(aug(img), -1) for _ in range(4)]
    globals_, locals_ = collate_multicrop(batch)
    assert globals_.shape == (8, 3, 32, 32) and locals_.shape == (12, 3, 16, 16)
    # Crop-major layout: row c * B + b is crop c of image b.
    torch.testing.assert_close(locals_[2 * 4 + 1], batch[1][0][2 + 2])


def test_eval_transform_size():
    assert eval_transform(32)(Image.new("RGB", (71, 50))).shape == (3, 32, 32)
    assert eval_transform(224)(Image.new("RGB", (300, 500))).shape == (3, 224, 224)


def test_demo_data_is_deterministic_and_balanced():
    a, la = generate_shapes(200, seed=3)
    b, lb = generate_shapes(200, seed=3)
    assert a.shape == (200, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert set(la.tolist()) == set(range(len(SHAPES)))


def test_blur_radius_is_the_papers_at_224_and_scales_with_the_crop():
    ref = MultiCropAugmentation(global_crop_size=224, local_crop_size=96)
    blur = ref.global1.transforms[2]
    assert (blur.p, blur.radius_min, blur.radius_max) == (1.0, 0.1, 2.0)
    assert ref.global2.transforms[2].p == 0.1 and ref.local.transforms[2].p == 0.5
    small = MultiCropAugmentation(global_crop_size=32, local_crop_size=16).local.transforms[2]
    assert small.radius_max == pytest.approx(2.0 * 32 / 224)


def test_normalize_batch_equals_to_tensor_and_normalize():
    from torchvision import transforms as T

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    reference = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    ours = normalize_batch(T.PILToTensor()(img)[None])[0]
    torch.testing.assert_close(ours, reference)
