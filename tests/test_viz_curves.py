"""dino plot: the panels drawn from a hand-written log.txt, and one line for a bad log."""

import json
import sys
from importlib.util import find_spec

import pytest
from PIL import Image

from dino.cli import main
from dino.errors import ConfigError, DataError
from dino.viz.curves import PANELS, loss_terms, plot_curves, read_log

needs_matplotlib = pytest.mark.skipif(
    find_spec("matplotlib") is None, reason="matplotlib is not installed (the plot extra)"
)


def record(epoch: int, koleo: bool = True, knn: bool = False) -> dict:
    """A record in the order the trainer writes it: loss, its terms, entropies, schedules."""
    out = {"epoch": epoch, "loss": 5.0 - 0.1 * epoch, "dino": 4.9 - 0.1 * epoch}
    if koleo:
        out["koleo"] = 1.5 - 0.2 * epoch
    out |= {"teacher_entropy": 4.7, "batch_entropy": 4.85, "lr": 1e-4 * (3 - epoch),
            "weight_decay": 0.04, "teacher_temp": 0.04, "momentum": 0.99 + 0.003 * epoch,
            "img_per_s": 20.0, "ln_K": 4.852, "epoch_time_s": 120.0, "skipped_images": 0,
            "skipped_files": [], "rank": 16.0 + epoch, "mean_cosine": 0.6 - 0.1 * epoch,
            "rank_before": 5.2, "knn_before": 28.0, "mean_cosine_before": 0.96,
            "knn_raw_pixels": 74.9}  # fmt: skip
    if knn:
        out["knn_top1"] = 30.0 + epoch
    return out


def write_log(run, records, extra: str = "") -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "log.txt").write_text("".join(json.dumps(r) + "\n" for r in records) + extra)


@needs_matplotlib
def test_plot_draws_every_panel_with_ln_k_and_the_floors(tmp_path):
    write_log(tmp_path, [record(0), record(1, knn=True), record(2, knn=True)])
    panels = plot_curves(read_log(tmp_path / "log.txt"), tmp_path / "c.png", "run")
    assert list(panels) == list(PANELS)
    assert panels["loss"] == ["total", "ln K"]
    assert panels["loss terms"] == ["dino", "koleo"]
    assert panels["teacher entropy"] == ["per image", "of the batch mean", "ln K"]
    assert panels["k-NN top-1 (%)"] == ["teacher", "before training", "raw pixels"]
    assert panels["effective rank"] == ["teacher", "before training"]
    assert panels["mean cosine"] == ["teacher", "before training"]
    assert panels["learning rate"] == ["lr"] and panels["teacher momentum"] == ["momentum"]
    assert Image.open(tmp_path / "c.png").size == (1600, 760)


@needs_matplotlib
def test_dino_plot_writes_curves_png_in_the_run_folder(tmp_path, capsys):
    write_log(tmp_path / "run", [record(0, koleo=False)])
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert Image.open(tmp_path / "run" / "curves.png").format == "PNG"
    assert (
        main(["plot", str(tmp_path / "run" / "log.txt"), "--output", str(tmp_path / "x.png")]) == 0
    )
    assert (tmp_path / "x.png").is_file()


def test_loss_terms_are_the_keys_between_loss_and_the_entropies():
    assert loss_terms(record(0)) == ["dino", "koleo"]
    assert loss_terms(record(0, koleo=False)) == ["dino"]


def test_an_epoch_logged_twice_keeps_its_later_line(tmp_path):
    write_log(tmp_path, [record(0), record(1), {**record(1), "loss": 9.0}])
    assert [r["loss"] for r in read_log(tmp_path / "log.txt")] == [5.0, 9.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty; no epoch has finished yet"),
        ("\n\n", "empty; no epoch has finished yet"),
        ('{"epoch": 0, "loss": 1.0}\n{"epoch": 1, "lo', "line 2: not a JSON record"),
        ('{"epoch": 0, "top1": 50.0}\n', "line 1: not a dino train record"),
        ("[1, 2]\n", "line 1: not a dino train record"),
    ],
)
def test_a_bad_log_is_one_line_naming_it(tmp_path, capsys, text, message):
    (tmp_path / "log.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        read_log(tmp_path / "log.txt")
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "log.txt" in err


def test_no_log_names_the_folder(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no log.txt" in capsys.readouterr().err


def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(
        ConfigError, match=r"dino plot needs matplotlib: pip install 'dino\[plot\]'"
    ):
        plot_curves([record(0)], tmp_path / "c.png", "run")
