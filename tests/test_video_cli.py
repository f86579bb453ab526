"""End to end through the CLI on the video demo set: masks in the DAVIS layout with the
palette and scores; attention videos (mp4, or the GIF fallback) with every frame."""

import csv
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_training_checkpoint
from dino.cli import main
from dino.data.davis import davis_palette
from dino.data.video_io import GifWriter, Mp4Writer, import_av, mp4_codec, open_frames, open_writer
from dino.errors import ConfigError

N_FRAMES = 5
COMMON = ["--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    args = ["demo-data", str(root / "davis"), "--video", "--n_videos", "2"]
    assert main([*args, "--n_frames", str(N_FRAMES)]) == 0
    tiny_training_checkpoint(root / "ckpt.pth")
    return root


def test_demo_set_is_in_the_davis_layout(demo):
    davis = demo / "davis"
    assert (davis / "ImageSets" / "2017" / "val.txt").read_text().split() == [
        "shapes-00",
        "shapes-01",
    ]
    for video in ("shapes-00", "shapes-01"):
        frames = sorted((davis / "JPEGImages" / "480p" / video).glob("*.jpg"))
        masks = sorted((davis / "Annotations" / "480p" / video).glob("*.png"))
        names = [f"{i:05d}" for i in range(N_FRAMES)]
        assert [f.stem for f in frames] == [m.stem for m in masks] == names
        with Image.open(masks[0]) as m:
            assert m.mode == "P" and m.size == (128, 96)
            assert np.array(m).max() >= 2  # two or three shapes


def test_video_segment_writes_davis_pngs_and_scores(demo, capsys):
    out = demo / "segmented"
    ckpt, data = str(demo / "ckpt.pth"), str(demo / "davis")
    args = ["video-segment", "--checkpoint", ckpt, "--data_path", data, "--output_dir", str(out)]
    args += ["--image_size", "48", *COMMON]
    assert main(args) == 0
    for video in ("shapes-00", "shapes-01"):
        written = sorted((out / video).glob("*.png"))
        assert [p.stem for p in written] == [f"{i:05d}" for i in range(N_FRAMES)]
        truth = Image.open(demo / "davis" / "Annotations" / "480p" / video / "00000.png")
        for path in written:
            with Image.open(path) as png:
                assert png.mode == "P" and png.size == truth.size
                palette = np.array(png.getpalette()[:12]).reshape(4, 3)
                assert np.array_equal(palette, davis_palette()[:4])
        first = np.array(Image.open(out / video / "00000.png"))
        assert np.array_equal(first, np.array(truth))  # the given mask, as the reference writes
    with open(out / "global_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert 0.0 <= float(rows[0]["J&F-Mean"]) <= 1.0
    printed = capsys.readouterr().out
    assert "J&F-Mean" in printed and "shapes-01_2" in printed
    # Named videos, and an error on one line for a video that is not there.
    assert main([*args, "--videos", "shapes-01"]) == 0
    assert main([*args, "--videos", "nope"]) == 2
    assert "video nope: no frame folder" in capsys.readouterr().err


def decoded_frames(path) -> int:
    av = import_av()
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def attention_args(demo, source, out, *extra):
    args = ["attention", "--checkpoint", str(demo / "ckpt.pth"), "--video", str(source)]
    return [*args, "--output_dir", str(out), *COMMON, *extra]


def test_attention_video_of_a_folder_and_of_an_mp4(demo, tmp_path):
    pytest.importorskip("av")
    frames = demo / "davis" / "JPEGImages" / "480p" / "shapes-00"
    assert main(attention_args(demo, frames, tmp_path / "a", "--fps", "4")) == 0
    names = {f"{k}-{h}" for k in ("attn", "mask") for h in ("head0", "head1", "head2", "mean")}
    assert {p.stem for p in (tmp_path / "a").glob("*.mp4")} == names
    for name in names:
        assert len(list((tmp_path / "a" / name).glob("*.png"))) == N_FRAMES
        assert decoded_frames(tmp_path / "a" / f"{name}.mp4") == N_FRAMES
    # An mp4 in: its frames, resized; its own frame rate out.
    mp4 = tmp_path / "a" / "attn-mean.mp4"
    assert main(attention_args(demo, mp4, tmp_path / "b", "--resize", "48")) == 0
    assert decoded_frames(tmp_path / "b" / "mask-mean.mp4") == N_FRAMES
    with Image.open(tmp_path / "b" / "attn-head1" / "00000.png") as png:
        assert png.size == (64, 48)
    assert open_frames(tmp_path / "b" / "mask-mean.mp4").fps == pytest.approx(4.0)


def test_attention_video_gif_fallback(demo, tmp_path, monkeypatch):
    frames = demo / "davis" / "JPEGImages" / "480p" / "shapes-01"
    monkeypatch.setattr("dino.data.video_io.mp4_codec", lambda: None)  # no encoder here
    assert main(attention_args(demo, frames, tmp_path)) == 0
    gifs = sorted(tmp_path.glob("*.gif"))
    assert len(gifs) == 8 and not list(tmp_path.glob("*.mp4"))
    with Image.open(tmp_path / "attn-mean.gif") as gif:
        assert gif.n_frames == N_FRAMES and gif.size == (128, 96)


def test_without_pyav_a_one_line_error_and_gifs(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with pytest.raises(ConfigError, match=r"dino\[video\]"):
        import_av()
    assert mp4_codec() is None
    assert isinstance(open_writer(tmp_path / "x", 10.0), GifWriter)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00")
    with pytest.raises(ConfigError, match=r"dino\[video\]"):
        open_frames(video)


def test_mp4_writer_cuts_odd_sides(tmp_path):
    pytest.importorskip("av")
    codec = mp4_codec()
    assert codec is not None
    writer = Mp4Writer(tmp_path / "odd.mp4", 10.0, codec)
    for i in range(3):
        writer.write(Image.new("RGB", (33, 21), (80 * i, 0, 0)))
    path = writer.close()
    source = open_frames(path)
    sizes = [f.size for f in source.frames]
    assert sizes == [(32, 20)] * 3 and source.fps == pytest.approx(10.0)
