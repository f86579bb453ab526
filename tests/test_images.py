"""Decoding every kind of image file, good and bad: a bad image never crashes a run."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dino.data.folder import ImageList, SkipBadImages, first_readable
from dino.data.images import BadImageError, load_rgb


def huge_png_header(path, side=40_000):
    """A PNG whose header claims side x side pixels: a decompression bomb, a few bytes long."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def write_bad_files(root):
    """One file of each bad kind; returns their names."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("this is not an image")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, format="JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "bad_header.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage" * 20)
    huge_png_header(root / "bomb.png")
    return ["empty.jpg", "text.png", "truncated.jpg", "bad_header.jpg", "bomb.png"]


def write_odd_modes(root):
    """Valid images in every awkward mode; returns name -> expected RGB size (w, h)."""
    root.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 255, (30, 20, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    img.convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 250).save(root / "sixteen.png")
    img.convert("P").save(root / "palette.png")
    img.convert("LA").save(root / "la.png")
    img.convert("RGBA").save(root / "rgba.png")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(root / "one_pixel.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees when displayed
    img.save(root / "rotated.jpg", exif=exif.tobytes())
    return {
        "cmyk.jpg": (20, 30),
        "sixteen.png": (20, 30),
        "palette.png": (20, 30),
        "la.png": (20, 30),
        "rgba.png": (20, 30),
        "one_pixel.png": (16, 16),
        "rotated.jpg": (30, 20),
    }


def test_odd_modes_decode_to_rgb(tmp_path):
    for name, size in write_odd_modes(tmp_path).items():
        img = load_rgb(tmp_path / name)
        assert img.mode == "RGB" and img.size == size, name


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 30000], [60000, 65535]], dtype=np.uint16)).save(
        tmp_path / "a.png"
    )
    values = np.asarray(load_rgb(tmp_path / "a.png"))[..., 0]
    assert values.min() == 0 and values.max() == 255 and len(np.unique(values)) > 2


def test_bad_files_raise_bad_image_error_naming_the_file(tmp_path):
    for name in write_bad_files(tmp_path):
        with pytest.raises(BadImageError, match=name):
            load_rgb(tmp_path / name)


def test_skipping_dataset_fills_from_another_image(tmp_path):
    bad = write_bad_files(tmp_path / "bad")
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    images = ImageList([tmp_path / "bad" / n for n in bad] + [good])
    sample, _, index, skipped = SkipBadImages(images)[0]
    assert sample.size == (16, 16)  # the 8x8 image, resized up to the minimum side
    assert index == len(bad)  # the only readable one, found by random picks
    assert skipped[0].startswith(str(tmp_path / "bad" / bad[0]))
    assert {s.split(": ")[0].split("/")[-1] for s in skipped} <= set(bad)
    assert SkipBadImages(images)[0][3] == skipped  # the same picks every time
    with pytest.raises(BadImageError, match="most images are unreadable: 1 tried"):
        SkipBadImages(images, max_tries=1)[0]
    assert first_readable(images) == len(bad)
    with pytest.raises(BadImageError, match="none of the 5"):
        first_readable(ImageList([tmp_path / "bad" / n for n in bad]))


def test_without_fill_an_unreadable_image_leaves_its_place_empty(tmp_path):
    """Feature extraction: no other image's features stand in for an unreadable one."""
    bad = write_bad_files(tmp_path / "bad")
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    images = SkipBadImages(ImageList([tmp_path / "bad" / bad[0], good], labels=[3, 4]), fill=False)
    sample, label, index, skipped = images[0]
    assert (sample, label, index) == (None, -1, 0)
    assert len(skipped) == 1 and bad[0] in skipped[0]
    sample, label, index, skipped = images[1]
    assert sample.size == (16, 16) and (label, index, skipped) == (4, 1, [])
