"""``dino train`` whose rank 1 fails at its third step: run under torchrun by a test."""

import sys

from dino.cli import main
from dino.data.images import BadImageError
from dino.distributed import get_rank
from dino.training import trainer

real_step = trainer.train_step
calls = {"n": 0}


def failing_step(*args, **kwargs):
    calls["n"] += 1
    if get_rank() == 1 and calls["n"] == 3:
        raise BadImageError("injected failure on rank 1")
    return real_step(*args, **kwargs)


trainer.train_step = failing_step
sys.exit(main())
