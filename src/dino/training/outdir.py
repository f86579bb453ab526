"""One run per output folder, and only regular files written in it.

The main process holds an advisory lock (``fcntl.flock`` on ``.dino.lock``) for the whole
run; the kernel drops it when the process ends, however it ends, so a killed run never
leaves a stale lock. A second ``dino train`` on the folder stops at once naming the first
(its process id, host and start time, which the lock file records).
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from pathlib import Path
from typing import IO

from dino.errors import ConfigError

LOCK = ".dino.lock"
# The files a run writes by name; one that is a symbolic link would be written through.
WRITTEN = ("config.yaml", "log.txt", "steps.csv", "epochs.csv")


class RunLock:
    """Holds ``folder``'s lock until ``release`` (or the process's end)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK
        self._file: IO[str] | None = None
        handle = open(self.path, "a+")  # noqa: SIM115 (held open for the run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"output_dir: {folder} is in use by another dino train ({holder}); wait for it "
                "to end or use another --output_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None


def check_no_links(folder: Path) -> None:
    """Refuse to start when a file the run writes by name is a symbolic link: writing
    through it would change a file outside the output folder."""
    for name in WRITTEN:
        path = folder / name
        if path.is_symlink():
            raise ConfigError(
                f"output_dir: {path} is a symbolic link (to {os.readlink(path)}); a run writes "
                "only its own files in its output folder: remove the link"
            )
