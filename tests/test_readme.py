"""README must not drift from the code: its Layout names files that exist, its examples run."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (
    published_full_checkpoint,
    tiny_training_checkpoint,
    write_colour_classes,
    write_images,
)
from dino.data.video_demo import demo_videos, save_demo_videos
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


# --- README's shell examples -------------------------------------------------------------

# Commands that cannot run here, each with the reason. A shell example not listed here is
# run, so a new one is never skipped silently; an entry whose command has left README fails.
NOT_RUN = {
    "pip install -e .[dev] && dino train": "installs the package (needs the network), then "
    "trains the demo for minutes; dino train itself runs in the examples below",
    "pytest": "runs this test suite",
    "torchrun --nproc_per_node 8 -m dino train --data_path /data/imagenet/train --output_dir "
    "runs/vits16": "8 GPUs and ImageNet; test_distributed.py runs dino train under torchrun "
    "on CPU processes",
    "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint node01:29500 "
    "--rdzv_id vits16 -m dino train --data_path /data/imagenet/train --output_dir runs/vits16": (
        "two machines with 8 GPUs each"
    ),
    "srun --kill-on-bad-exit=1 python -m dino train --data_path /data/imagenet/train "
    "--output_dir runs/vits16 --arch vit_small --patch_size 16 --batch_size_per_gpu 64 "
    "--num_workers 10 --checkpoint_every_minutes 30 --requeue": "a SLURM cluster",
    "python benchmarks/bench_train.py": "a benchmark: minutes of timed steps per precision",
    "python benchmarks/bench_train.py --preset vits16": "a benchmark: minutes of ViT-S/16 steps",
    "python benchmarks/bench_train.py --device cuda --precisions fp32 bf16 fp16 -- --compile "
    "true": "a benchmark on a CUDA GPU",
    "python benchmarks/knn_bench.py": "a benchmark: 1.5 GiB of features and 10 s of k-NN",
    "pip install -e .[bench] && python benchmarks/bench_lightly.py": "installs lightly (needs "
    "the network), then a benchmark: minutes of training steps",
    "python benchmarks/bench_small_data.py": "a benchmark: hours of training runs",
    "python benchmarks/bench_augment.py": "a benchmark: a minute of timed, compiled augmentation",
    "python benchmarks/bench_video.py --speed": "a benchmark: minutes of ViT-S/8 at 480p per "
    "precision",
}
NEEDS_CUDA = {"dino train --data_path imgs --device cuda --precision bf16 --batch_size_per_gpu 64"}
# What makes the others run in seconds: README text -> what runs, and flags appended to
# every dino train (given last, they win): a 2-block 48-dim ViT on 32-px crops, one epoch.
SUBSTITUTIONS = {"/path/to/images": "imgs", "--epochs 100": "--epochs 1"}
TINY_TRAIN = (
    "--embed_dim 48 --depth 2 --num_heads 3 --patch_size 8 --global_crop_size 32 "
    "--local_crop_size 16 --local_crops_number 2 --out_dim 64 --batch_size_per_gpu 8 "
    "--num_workers 0 --epochs 1"
)


def shell_commands() -> list[str]:
    """Every command of README's bash / sh / console blocks: continuation lines joined,
    comments and ``$`` prompts dropped, quotes resolved, words joined by one space."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.strip().removeprefix("$ "), comments=True)
            if words:
                commands.append(" ".join(words))
    return commands


def test_the_shell_examples_are_found_and_every_listed_exception_is_in_the_readme():
    commands = shell_commands()
    assert len(commands) >= 20 and "dino knn" in " ".join(commands)
    assert not (set(NOT_RUN) | NEEDS_CUDA) - set(commands), "stale entries in NOT_RUN"


def _png(path: Path, seed: int, size: tuple[int, int] = (32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def readme_files(tmp_path_factory) -> Path:
    """The files README's commands name, tiny: image folders (``imgs`` with labelled
    ``imgs/train`` and ``imgs/val``, the ``demo`` splits, ``photos``, retrieval and copy
    detection layouts), ``photo.jpg``, a ``dino train`` checkpoint as ``ckpt.pth`` and
    ``output/demo/checkpoint.pth`` with a two-epoch ``log.txt``, and a published-layout
    ViT-S/16 full checkpoint."""
    root = tmp_path_factory.mktemp("readme")
    write_images(root / "imgs", 16, size=32)
    write_colour_classes(root / "imgs" / "train", per_class=4, classes=2)
    write_colour_classes(root / "imgs" / "val", per_class=2, classes=2, seed=1)
    write_colour_classes(root / "demo" / "train", per_class=4, classes=3)
    write_colour_classes(root / "demo" / "val", per_class=2, classes=3, seed=1)
    for i in range(6):
        _png(root / "photos" / f"p{i}.png", i)
        _png(root / "other_images" / f"o{i}.png", 10 + i)
        _png(root / "db" / f"d{i}.png", 20 + i)
    for i in range(2):
        _png(root / "queries" / f"q{i}.png", 20 + i)  # the same pixels as d0, d1
        _png(root / "copydays" / "originals" / f"{i}.png", 30 + i)
    _png(root / "copydays" / "copies" / "0" / "crop.png", 30)
    _png(root / "copydays" / "copies" / "1_bright.png", 31)
    (root / "gt.json").write_text(
        json.dumps({"q0.png": ["d0.png"], "q1.png": {"ok": ["d1.png"], "junk": ["d2.png"]}})
    )
    Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(root / "photo.jpg")
    save_demo_videos(demo_videos(2, 8), root / "demo_video")  # as `dino demo-data --video`
    tiny_training_checkpoint(root / "ckpt.pth")
    (root / "output" / "demo").mkdir(parents=True)
    shutil.copy(root / "ckpt.pth", root / "output" / "demo" / "checkpoint.pth")
    record = {
        "loss": 4.9,
        "dino": 4.8,
        "teacher_entropy": 4.6,
        "batch_entropy": 4.8,
        "lr": 1e-4,
        "momentum": 0.99,
        "ln_K": 4.85,
        "rank": 20.0,
        "mean_cosine": 0.5,
    }
    (root / "output" / "demo" / "log.txt").write_text(
        "".join(json.dumps({"epoch": e, **record}) + "\n" for e in range(2))
    )
    published, _ = published_full_checkpoint()
    torch.save(published, root / "dino_deitsmall16_pretrain_full_checkpoint.pth")
    return root


def runnable(command: str) -> list[str]:
    """The argument list that runs ``command`` here, with the substitutions above."""
    for theirs, ours in SUBSTITUTIONS.items():
        command = command.replace(theirs, ours)
    words = command.split()
    if words[:2] == ["dino", "train"]:
        words += TINY_TRAIN.split()
    assert words[0] == "dino", f"{command!r}: only dino commands can run here; add to NOT_RUN"
    return [sys.executable, "-m", "dino", *words[1:]]


def promised_outputs(words: list[str]) -> list[str]:
    """What a command says it writes: its --output and --output_dir."""
    return [
        after
        for flag, after in zip(words, words[1:], strict=False)
        if flag in ("--output", "--output_dir")
    ]


@pytest.mark.slow
@pytest.mark.parametrize("command", shell_commands())
def test_every_shell_example_in_the_readme_runs(command, readme_files, tmp_path):
    """Each command exits 0 on tiny data and writes what it names, in a folder of its own
    (the prepared files linked in, so no command sees another's output)."""
    if command in NOT_RUN:
        pytest.skip(NOT_RUN[command])
    if command in NEEDS_CUDA and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cwd = tmp_path / "run"
    shutil.copytree(readme_files, cwd, copy_function=os.symlink)
    argv = runnable(command)
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(argv[2:])}\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
    for path in promised_outputs(argv):
        assert (cwd / path).exists(), f"{command}: wrote no {path}"
    if argv[3] == "train":
        out_dir = cwd / (promised_outputs(argv) or ["output"])[-1]
        assert {"checkpoint.pth", "config.yaml", "log.txt"} <= {p.name for p in out_dir.iterdir()}
