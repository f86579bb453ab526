"""README must not drift from the code: its Layout names files that exist, its examples run."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_colour_classes, write_images
from dino.models import build_backbone

ROOT = Path(__file__).resolve().parents[1]


def layout_files() -> list[Path]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    files, folder = [], ROOT
    for line in block.splitlines()[1:]:
        entry = re.match(r"(\s*)(\S+)", line)
        if entry is None:
            continue
        indent, name = entry.groups()
        if len(indent) <= 2:  # a new entry: a folder, or a file of src/dino/
            if name.endswith("/"):
                folder = (ROOT if not indent else ROOT / "src" / "dino") / name
                rest = line[entry.end() :]
            else:
                files.append(ROOT / "src" / "dino" / name)
                continue
        else:
            rest = line
        files += [folder / f for f in re.findall(r"\b([a-z_]+\.py)\b", rest)]
    return files


def test_every_file_in_the_layout_exists():
    files = layout_files()
    assert len(files) > 30
    missing = [str(f.relative_to(ROOT)) for f in files if not f.exists()]
    assert not missing, f"README's Layout names files that do not exist: {missing}"


def python_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_every_python_example_in_the_readme_runs(tmp_path, monkeypatch):
    """Each example runs as written, in a folder holding the files it names: ``imgs`` (16
    images), labelled ``train`` and ``val`` folders, and a full checkpoint laid out like the
    published dino_deitsmall16_pretrain_full_checkpoint.pth (random ViT-S/16 weights)."""
    examples = python_examples()
    assert len(examples) >= 2
    write_images(tmp_path / "imgs", 16, size=32)
    write_colour_classes(tmp_path / "train", per_class=3, classes=2)
    write_colour_classes(tmp_path / "val", per_class=1, classes=2, seed=1)
    backbone = build_backbone("vit_small", patch_size=16)
    teacher = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    torch.save(
        {"teacher": teacher, "student": {f"module.{k}": v for k, v in teacher.items()}},
        tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth",
    )
    monkeypatch.chdir(tmp_path)
    for example in examples:
        exec(compile(example, "README.md", "exec"), {})  # noqa: S102


def test_help_answers_without_importing_torch():
    """``dino --help`` builds every parser without torch (measured: 0.1 s of CPU)."""
    code = (
        "import sys, contextlib, io\n"
        "from dino.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
