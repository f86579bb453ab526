"""When a run checkpoints inside an epoch: every N minutes, and when a scheduler signals.

SLURM sends SIGTERM before it pre-empts or ends a job (and SIGUSR1 ahead of the time
limit with ``--signal=USR1@SECONDS``). The handler only notes the signal; the training
loop asks ``poll`` after each step, and every process gets the same answer (a sum over
processes), so that all of them save and stop at the same iteration.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch

from dino.distributed import all_reduce_sum, is_distributed, is_main_process
from dino.progress import log, warn

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass(frozen=True)
class Poll:
    save: bool  # write a mid-epoch checkpoint now
    stop: bool  # then stop the run (a signal came)
    signum: int  # the signal that came (0: none)


class Interrupts:
    """Catches SIGTERM and SIGUSR1 while open (``close`` restores the previous handlers) and
    says after each step whether to checkpoint (``every_minutes`` > 0 since the last one)
    and whether to stop."""

    def __init__(self, every_minutes: float) -> None:
        self.every_s = every_minutes * 60.0
        self.last_save = time.monotonic()
        self.signum = 0
        self._previous: dict[int, Any] = {}
        if _can_handle_signals():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def poll(self, device: torch.device) -> Poll:
        due = self.every_s > 0 and time.monotonic() - self.last_save >= self.every_s
        if not is_distributed():
            return Poll(due or self.signum > 0, self.signum > 0, self.signum)
        # The main process's clock decides the timed checkpoint; any process's signal stops all.
        flags = torch.tensor([float(due and is_main_process()), float(self.signum)], device=device)
        due_all, signum = all_reduce_sum(flags).tolist()
        stop = signum > 0
        return Poll(due_all > 0 or stop, stop, self.signum or int(signum))

    def saved(self) -> None:
        self.last_save = time.monotonic()

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _can_handle_signals() -> bool:
    """Handlers can only be installed from the main thread (tests may train in others)."""
    import threading

    return threading.current_thread() is threading.main_thread()


def requeue_slurm_job() -> None:
    """``scontrol requeue $SLURM_JOB_ID`` (main process only); says why when it cannot."""
    if not is_main_process():
        return
    job = os.environ.get("SLURM_JOB_ID")
    scontrol = shutil.which("scontrol")
    if job is None or scontrol is None:
        warn("--requeue: not requeued (no SLURM_JOB_ID or no scontrol here)")
        return
    done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True)
    if done.returncode:
        warn(f"--requeue: scontrol requeue {job} failed: {done.stderr.strip()[:200]}")
    else:
        log(f"requeued SLURM job {job}: it resumes from the checkpoint when it starts again")
