"""The package as users install it: a wheel that works outside the source tree (CI's check).

The wheel is built from a copy of the sources (the checkout stays untouched), installed
without dependencies into a fresh virtual environment that sees this one's packages (torch
is not installed again), and run from a folder with no sources in it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_TRAIN_FLAGS, write_images

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "src")


def run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_the_wheel_installs_and_trains_outside_the_source_tree(tmp_path):
    start = time.perf_counter()
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", wheels, cwd=source)
    (wheel,) = wheels.glob("dino_ssl-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", venv, cwd=tmp_path)
    bin_dir = venv / ("Scripts" if sys.platform == "win32" else "bin")
    run(bin_dir / "python", "-m", "pip", "install", "--no-deps", wheel, cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(bin_dir / "python", "-c", "import dino; print(dino.__file__)", cwd=elsewhere)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # the wheel's, not ours
    assert "train" in run(bin_dir / "dino", "--help", cwd=elsewhere).stdout
    write_images(elsewhere / "imgs", 16)
    trained = run(
        bin_dir / "dino",
        "train",
        "--data_path",
        "imgs",
        "--output_dir",
        "out",
        *TINY_TRAIN_FLAGS,
        "--epochs",
        "1",
        cwd=elsewhere,
    )
    assert (elsewhere / "out" / "checkpoint.pth").is_file(), trained.stdout
    print(f"wheel built, installed and trained in {time.perf_counter() - start:.0f} s")
