"""Checkpoint files: atomic writes, loading without running code, and the key remap.

Layout of a training checkpoint, main_dino.py's (its ``restart_from_checkpoint`` resumes
it, its evaluation scripts read it): ``student`` (``module.backbone.*`` / ``module.head.*``:
the DistributedDataParallel-wrapped student's names), ``teacher`` (``backbone.*`` /
``head.*``; ``module.`` too when it has BatchNorm, which the reference wraps in DDP),
``optimizer`` (AdamW / SGD / LARS state; ours also names each group's parameters),
``epoch`` (the next epoch to run), ``dino_loss`` (``{"center": (1, K)}``), ``fp16_scaler``
only with loss scaling, and ``args``. The reference saves ``args`` as an argparse.Namespace
but never reads it back; ours is a plain dict, which ``torch.load``'s default weights-only
mode (torch >= 2.6) accepts where a Namespace is refused. Readers here take either. Beyond
the reference: ``iteration``, ``rng`` (random states) and ``best`` (the best epoch so far).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import reprlib
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dino.errors import CheckpointError, WriteError

PREFIXES = ("module.", "backbone.")


def save_atomic(obj: Mapping[str, Any], path: str | Path) -> None:
    """Write ``obj`` with torch.save so that a kill at any moment leaves the old file intact.

    The bytes go to a temporary file in the same folder, are flushed and synced to disk,
    and the file is then renamed over ``path`` (an atomic step on POSIX file systems). A
    write that fails (a full disk: torch raises a RuntimeError, the OS an OSError) removes
    the temporary file and raises WriteError naming ``path``, whose old content stays.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(f"{path}: cannot be written ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(obj), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        Path(tmp).unlink(missing_ok=True)
        kept = "the previous file is intact" if path.exists() else "nothing was written"
        raise WriteError(f"{path}: writing failed, disk full? {kept} ({_first_line(e)})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most ``limit`` characters."""
    lines = str(e).strip().splitlines()
    line = lines[0] if lines else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_file(path: str | Path, trust: bool = False) -> Any:
    """Load a checkpoint on the CPU without executing code from it.

    Only tensors, plain containers and numbers are accepted (``torch.load(weights_only=True)``),
    plus the few plain types of published DINO full checkpoints (``_safe_globals``). A file
    that needs arbitrary unpickling is refused unless ``trust`` is set.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused, loading it would need arbitrary unpickling, which can run code "
            f"({_first_line(e)}); pass --trust_checkpoint only if you trust its source"
        ) from None
    except Exception as e:  # whatever malformed bytes make torch.load raise
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})"
        ) from None


def _safe_globals() -> list[Any]:
    """What a published DINO full checkpoint unpickles through, beyond tensors and containers.

    Its ``args`` is an ``argparse.Namespace`` of plain values. The reference sets each
    optimizer group's ``lr`` and ``weight_decay`` from numpy schedules, so they are
    ``numpy.float64`` scalars: numpy's scalar constructor (named ``numpy.core`` by numpy 1,
    ``numpy._core`` by numpy 2), ``numpy.dtype`` and the float64 dtype class it builds. None
    of them runs code: a scalar is made from its dtype and raw bytes, and only a float64
    dtype can be completed (other dtype classes stay refused).
    """
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    scalar = core.multiarray.scalar
    allowed: list[Any] = [
        argparse.Namespace,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    float64_type = type(np.dtype(np.float64))  # numpy.dtypes.Float64DType from numpy 1.25
    if float64_type is not np.dtype:
        allowed.append(float64_type)
    return allowed


def strip_prefixes(
    state: Mapping[str, Tensor], prefixes: tuple[str, ...] = PREFIXES
) -> dict[str, Tensor]:
    """Remove leading ``module.`` (DDP) and ``backbone.`` (wrapper) prefixes, in any order."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key, changed = key[len(p) :], True
        out[key] = value
    return out


def select_state(obj: Any, key: str = "teacher") -> dict[str, Tensor]:
    """The state dict inside a loaded file: ``obj[key]`` for a full checkpoint, else ``obj``.

    Raises CheckpointError unless it maps names (strings) to tensors, naming the first entry
    that does not.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"expected a state dict or a checkpoint mapping, got {type(obj).__name__}"
        )
    if key in obj and isinstance(obj[key], Mapping):
        return tensor_state(obj[key], f"{key!r} entry")
    if any(isinstance(v, Mapping) for v in obj.values()) and not all(
        isinstance(v, Tensor) for v in obj.values()
    ):
        nested = [str(k) for k, v in obj.items() if isinstance(v, Mapping)]
        raise CheckpointError(f"no {key!r} entry in the checkpoint; it has {', '.join(nested)}")
    return tensor_state(obj, "state dict")


def tensor_state(state: Mapping[Any, Any], what: str = "state dict") -> dict[str, Tensor]:
    """``state`` as a dict; a CheckpointError names the first entry that is not a dense
    tensor under a string name."""
    for name, value in state.items():
        if not isinstance(name, str):
            raise CheckpointError(f"the {what} has a key {_short(name)}, not a name")
        if not isinstance(value, Tensor):
            kind = type(value).__name__
            raise CheckpointError(f"the {what}'s {name!r} is of type {kind}, not a tensor")
        if value.layout != torch.strided or value.is_quantized or value.is_meta:
            raise CheckpointError(
                f"the {what}'s {name!r} is a {value.layout} {value.dtype} tensor on "
                f"{value.device}; only dense tensors with values are read"
            )
    return dict(state)


def _short(value: Any) -> str:
    """``repr(value)``, cut short: a malformed file's values can be huge or deeply nested."""
    return reprlib.repr(value)


def backbone_state(obj: Any, key: str = "teacher") -> dict[str, Tensor]:
    """Backbone weights from a full checkpoint or a backbone-only state dict.

    Takes ``obj[key]`` when present (``teacher`` / ``student`` of a full checkpoint), strips
    the ``module.`` / ``backbone.`` prefixes and leaves out the DINO head (see ``split_network``).
    """
    return split_network(obj, key)[0]


def split_network(obj: Any, key: str = "teacher") -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(backbone, DINO head) weights of ``obj[key]`` (or of ``obj``), prefixes stripped.

    A DINO network's backbone is everything under ``backbone.`` (a timm backbone may have
    ``head.*`` layers of its own, e.g. ConvNeXt's ``head.norm``) and its head everything under
    ``head.``. A bare state dict is all backbone, less a classifier under ``head.*`` (timm's).
    """
    state = strip_prefixes(select_state(obj, key), ("module.",))
    head = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
    if any(k.startswith("backbone.") for k in state):
        backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
        return strip_prefixes(backbone), head
    return {k: v for k, v in strip_prefixes(state).items() if not k.startswith("head.")}, {}


def load_strict(model: nn.Module, state: Mapping[str, Tensor], what: str = "model") -> None:
    """``load_state_dict(strict=True)`` with an error that lists missing and unexpected keys."""
    check_fits(model.state_dict(), state, what)
    model.load_state_dict(state, strict=True)


def check_fits(own: Mapping[str, Tensor], state: Mapping[str, Tensor], what: str) -> None:
    """Raise CheckpointError listing the keys of ``state`` missing from, unexpected in or
    misshapen for ``own`` (a model's state dict, which may live on the meta device)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch (checkpoint vs model): {_few(shapes)}")
    if problems:
        raise CheckpointError(f"{what} does not match the checkpoint; " + "; ".join(problems))


def check_loadable(shell: nn.Module, state: Mapping[str, Tensor], source: str, what: str) -> None:
    """Raise CheckpointError naming ``source`` unless ``state`` can be loaded into the model
    ``shell`` describes: ``shell`` is that model built on the meta device (shapes, no memory),
    so that a file asking for terabytes is refused before anything is allocated. Checks the
    keys and shapes (``check_fits``), that the model fits in memory (``memory_limit``), and
    that the weights are finite (``check_finite``)."""
    own = shell.state_dict()
    check_fits(own, state, f"{source}: the {what} it describes")
    need = sum(t.numel() * t.element_size() for t in own.values())
    if need > (have := memory_limit()):
        raise CheckpointError(
            f"{source}: its {what} needs {need / 2**30:.1f} GiB, more than the "
            f"{have / 2**30:.1f} GiB of memory here"
        )
    check_finite(state, source)


def memory_limit() -> int:
    """Bytes this process may allocate at most: the physical memory, or the address-space
    limit (``ulimit -v``) when lower; unbounded where neither can be read."""
    limit = sys.maxsize
    with contextlib.suppress(AttributeError, ValueError, OSError):  # not a POSIX system
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        import resource
    except ImportError:
        return limit
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return limit if soft == resource.RLIM_INFINITY else min(limit, soft)


def check_finite(state: Mapping[str, Tensor], source: str) -> None:
    """Raise CheckpointError naming the first tensor of ``state`` holding NaN or infinity."""
    for name, value in state.items():
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise CheckpointError(
                    f"{source}: {name} holds {bad} NaN or infinite values (of {value.numel()}): "
                    "the run that saved it diverged; take an earlier checkpoint"
                )


def _few(items: list[str], n: int = 6, width: int = 120) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(i if len(i) <= width else i[: width - 3] + "..." for i in items[:n]) + more
