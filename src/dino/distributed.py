"""Processes and collectives on PyTorch's own machinery (torch.distributed, torchrun, SLURM).

Every function works in a single process with no distributed set-up: ``dino train`` alone
never initialises a process group. Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK and
MASTER_ADDR / MASTER_PORT in the environment) or ``srun`` (SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID), ``init_distributed`` joins the group: NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from dino.errors import ConfigError, LaunchError

DEFAULT_PORT = 29500
# A rank that fails makes the others fail at their next collective well before this; the
# timeout only bounds a hang when a peer disappears without closing its connections.
TIMEOUT = timedelta(minutes=15)
# How long the processes of a launch wait for each other at the start (seconds; the
# environment variable DINO_DIST_TIMEOUT overrides it): a process that never comes, e.g.
# WORLD_SIZE=2 with one process started, ends the run with a message instead of a hang.
RENDEZVOUS_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Launch:
    """Where this process sits, read from the launcher's environment variables."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "slurm" or "none"


def detect_launch(env: dict[str, str] | None = None) -> Launch:
    """Rank, world size and local rank from torchrun's or SLURM's variables (else one process).

    torchrun's variables win when both are present (``srun torchrun ...``). Under SLURM the
    master is the first host of SLURM_JOB_NODELIST (or SLURM_NODELIST) and the port
    MASTER_PORT, else 29500 plus the job id modulo 1000, so that two jobs on one node differ.
    """
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        world_size = _env_int(env, "WORLD_SIZE", 1, 1)
        return Launch(
            _env_int(env, "RANK", 0, 0, world_size - 1),
            world_size,
            _env_int(env, "LOCAL_RANK", 0, 0),
            env.get("MASTER_ADDR") or "127.0.0.1",
            _env_int(env, "MASTER_PORT", DEFAULT_PORT, 1, 65535),
            "torchrun",
        )
    if "SLURM_PROCID" in env and _env_int(env, "SLURM_NTASKS", 1, 1) > 1:
        world_size = _env_int(env, "SLURM_NTASKS", 1, 1)
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        job_port = DEFAULT_PORT + _env_int(env, "SLURM_JOB_ID", 0, 0) % 1000
        return Launch(
            _env_int(env, "SLURM_PROCID", 0, 0, world_size - 1),
            world_size,
            _env_int(env, "SLURM_LOCALID", 0, 0),
            env.get("MASTER_ADDR") or first_host(nodelist),
            _env_int(env, "MASTER_PORT", job_port, 1, 65535),
            "slurm",
        )
    return Launch(0, 1, 0, "127.0.0.1", DEFAULT_PORT, "none")


def _env_int(env: dict[str, str], name: str, default: int, lo: int, hi: int | None = None) -> int:
    """The integer in the environment variable ``name`` (``default`` when unset or empty);
    a ConfigError names the variable when it is not an integer in [lo, hi]."""
    text = env.get(name, "").strip()
    if not text:
        return default
    value = int(text) if re.fullmatch(r"[+-]?\d{1,18}", text) else None
    if value is None or value < lo or (hi is not None and value > hi):
        expected = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
        raise ConfigError(f"environment variable {name}: expected {expected}, got {text!r}")
    return value


def rendezvous_timeout(env: dict[str, str] | None = None) -> float:
    """Seconds the processes of a launch wait for each other: DINO_DIST_TIMEOUT, else
    RENDEZVOUS_TIMEOUT_S."""
    text = (os.environ if env is None else env).get("DINO_DIST_TIMEOUT", "").strip()
    if not text:
        return RENDEZVOUS_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(
            f"environment variable DINO_DIST_TIMEOUT: expected a number of seconds > 0, "
            f"got {text!r}"
        )
    return seconds


def first_host(nodelist: str) -> str:
    """First host name of a SLURM node list: "gpu[003-005,9],cpu1" -> "gpu003"."""
    match = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, _, ranges = match.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def init_distributed(device_type: str) -> Launch:
    """Join the process group when launched as several processes; a no-op otherwise.

    Selects the local GPU for CUDA runs. Returns where this process sits.
    """
    launch = detect_launch()
    if launch.world_size == 1 or is_distributed():
        return launch
    wait = rendezvous_timeout()
    if device_type == "cuda":
        torch.cuda.set_device(launch.local_rank)
    os.environ.setdefault("MASTER_ADDR", launch.master_addr)
    os.environ.setdefault("MASTER_PORT", str(launch.master_port))
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    if launch.rank == 0:  # (before the group exists every process counts as the main one)
        print(
            f"waiting up to {wait:g} s for {launch.world_size} processes at {host}:{port} "
            f"({launch.launcher}; DINO_DIST_TIMEOUT sets the wait)",
            flush=True,
        )
    try:
        _join_group("nccl" if device_type == "cuda" else "gloo", launch, host, port, wait)
    except (dist.DistError, OSError) as e:
        reason = " ".join(str(e).split("\n")[0].split()) or type(e).__name__
        raise LaunchError(
            f"rank {launch.rank} of {launch.world_size}: the processes did not all meet at "
            f"{host}:{port} within {wait:g} s ({reason}); start every process of the launch, "
            "or raise DINO_DIST_TIMEOUT"
        ) from None
    return launch


def _join_group(backend: str, launch: Launch, host: str, port: int, wait: float) -> None:
    """Meet the other processes through the store at ``host:port`` (rank 0 serves it, or
    torchrun's agent does), waiting at most ``wait`` seconds; collectives then time out
    after TIMEOUT. Other ranks first wait for the store quietly: torch's own retries print
    C++ stack traces."""
    deadline = time.monotonic() + wait
    if launch.rank != 0:
        while True:
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    left = timedelta(seconds=max(deadline - time.monotonic(), 1.0))
    store, rank, world_size = next(
        dist.rendezvous("env://", launch.rank, launch.world_size, timeout=left)
    )
    dist.init_process_group(
        backend,
        store=dist.PrefixStore("default_pg", store),  # as init_process_group's own rendezvous
        rank=rank,
        world_size=world_size,
        timeout=TIMEOUT,
    )
    store.set_timeout(TIMEOUT)


def local_device(device_type: str) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` under a multi-GPU launch, else the type."""
    if device_type == "cuda":
        return torch.device(
            "cuda", detect_launch().local_rank if is_distributed() else torch.cuda.current_device()
        )
    return torch.device(device_type)


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (a no-op in one process) and return it."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``tensor`` over all processes, in place, and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over all processes in place and return it."""
    return all_reduce_sum(tensor).div_(get_world_size())


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator for this process's data loader whose draws depend only on (seed, epoch,
    rank): loader workers seed their augmentations from it, so a resumed epoch repeats."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch * 1009 + get_rank())


def step_generator(seed: int, epoch: int, iteration: int) -> torch.Generator:
    """A CPU generator whose draws depend only on (seed, epoch, iteration, rank): the
    augmentations of one step on the device (``data.device_augment``), the same after a
    resume and on any device. The four numbers are mixed by numpy's SeedSequence, so
    neighbouring steps and ranks get unrelated streams."""
    state = np.random.SeedSequence([seed, epoch, iteration, get_rank()]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
