"""Device and precision choice: what ``--device auto`` and ``--precision auto`` resolve to."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from dino.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA where there is none is a config error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device: cuda was asked for but no CUDA device is available; use --device cpu"
        )
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 where the hardware runs it fast, fp32 elsewhere; fp16 needs CUDA.

    Fast bf16: CUDA devices of compute capability 8.0 or newer (Ampere, Hopper, ...), and
    CPUs with AMX or AVX-512 BF16 instructions.
    """
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision: fp16 needs a CUDA device; use bf16 or fp32 on a CPU")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True on x86 CPUs that advertise amx_bf16 or avx512_bf16 (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision; None for fp32 (no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
