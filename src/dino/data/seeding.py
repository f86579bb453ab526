"""Random draws per item: an image's augmentation depends on (seed, epoch, index) alone.

Which process or loader worker decodes an item, and what it drew before, then no longer
matters: a run resumed in the middle of an epoch, with another ``num_workers``, or with the
first batches of the epoch skipped, crops every image as an uninterrupted run does. Each
index is drawn by one process once per epoch (the sampler splits the data), so the three
numbers name one draw.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


@contextmanager
def seeded_draws(seed: int) -> Iterator[None]:
    """Python's, numpy's and torch's global generators seeded with ``seed`` inside the block
    (the transforms draw from them), and restored after it: the caller's own draws (drop
    path in the training process) go on as if the block never ran."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed from the three numbers, well mixed (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededItems(Dataset):
    """``items`` with item ``index`` of epoch ``epoch`` drawn under ``item_seed(seed, epoch,
    index)``; set the epoch before building each epoch's loader."""

    def __init__(self, items: Dataset, seed: int) -> None:
        self.items, self.seed, self.epoch = items, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with seeded_draws(item_seed(self.seed, self.epoch, index)):
            return self.items[index]
