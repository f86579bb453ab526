"""README must not drift from the code: every file its Layout names exists."""

import re
from pathlib import Path

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
