"""Progress bars on a terminal, plain lines elsewhere; only the main process prints."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from tqdm import tqdm

from dino.distributed import is_main_process

T = TypeVar("T")


def log(message: str) -> None:
    """Print on the main process only."""
    if is_main_process():
        print(message, flush=True)


def append_json_line(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path`` (``log.txt``), on the main process only."""
    if is_main_process():
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def warn(message: str) -> None:
    if is_main_process():
        print(f"WARNING: {message}", file=sys.stderr, flush=True)


class Progress(Generic[T]):
    """Wrap an iterable; shows metrics, img/s and ETA.

    On a terminal it is a tqdm bar; otherwise it prints a plain line every ``every_s``
    seconds and at the end, so logs of batch jobs stay readable.
    """

    def __init__(self, items: Iterable[T], total: int, desc: str, every_s: float = 30.0) -> None:
        self.items, self.total, self.desc, self.every_s = items, total, desc, every_s
        self.metrics: dict[str, str] = {}
        self.enabled = is_main_process()
        self.tty = self.enabled and sys.stderr.isatty()
        self.bar: tqdm | None = None

    def set(self, **metrics: float | str) -> None:
        self.metrics = {
            k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in metrics.items()
        }
        if self.bar is not None:
            self.bar.set_postfix(self.metrics, refresh=False)

    def __iter__(self) -> Iterator[T]:
        if self.tty:
            self.bar = tqdm(
                self.items, total=self.total, desc=self.desc, dynamic_ncols=True, leave=True
            )
            yield from self.bar
            self.bar.close()
            return
        start = last = time.perf_counter()
        for i, item in enumerate(self.items, 1):
            yield item
            now = time.perf_counter()
            if self.enabled and (now - last >= self.every_s or i == self.total):
                last = now
                eta = (now - start) / i * (self.total - i)
                fields = " ".join(f"{k}={v}" for k, v in self.metrics.items())
                print(f"{self.desc} [{i}/{self.total}] {fields} eta={eta:.0f}s", flush=True)
