"""What the commands write: paths checked before any work, and CSV files that stay aligned
and safe to open in a spreadsheet.

A command writes only the paths it was given (and the files its ``--help`` names beside
them); ``writable_file`` / ``writable_folder`` check them before the long work starts, so
an unwritable output ends in one line at once instead of after an hour of extraction.
Nothing here imports torch.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dino.errors import ConfigError

# Spreadsheets run a cell that starts with one of these as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def writable_file(
    flag: str, path: str | Path, inputs: Mapping[str, str | Path | None] | None = None
) -> Path:
    """``path`` if a file can be written there; else a ConfigError naming ``flag``.

    Its folder need not exist yet (it is created when written), but the nearest folder that
    does must be writable; ``path`` must not be a folder, nor one of the ``inputs`` (flag ->
    path) that writing it would destroy. Nothing is created.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag}: {path} is a folder; give a file name")
    for other, given in (inputs or {}).items():
        if given is not None and _same_file(path, Path(given)):
            raise ConfigError(f"{flag}: {path} is the {other} file; writing it would destroy it")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{flag}: {path} exists and cannot be written")
    _creatable(flag, path.parent)
    return path


def writable_folder(flag: str, path: str | Path) -> Path:
    """``path`` if files can be written in it (it need not exist yet); else a ConfigError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag}: {path} is a file, not a folder")
    _creatable(flag, path)
    return path


def _creatable(flag: str, folder: Path) -> None:
    """``folder`` exists or can be created, and files can be written in it."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag}: cannot create {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot write in {existing} (permission denied)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def printable(text: str) -> str:
    """``text`` as valid UTF-8: the bytes of a file name that is not UTF-8 (which Python reads
    as lone surrogates) written as ``\\xNN`` escapes."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that did not come from bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def csv_cell(value: Any) -> Any:
    """A value for a CSV cell: text made printable UTF-8 and, when a spreadsheet would run it
    as a formula (it starts with = + - @ tab or CR and is not a number), prefixed with '."""
    if not isinstance(value, str):
        return value
    value = printable(value)
    if value.startswith(FORMULA_STARTS) and not _is_number(value):
        return "'" + value
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """``rows`` under ``header`` as UTF-8 CSV; cells as ``csv_cell`` makes them, and a cell
    holding a line break or a comma quoted, so that every row stays one record."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows([csv_cell(c) for c in row] for row in rows)
