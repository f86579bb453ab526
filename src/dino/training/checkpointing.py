"""Saving and resuming a training run so that a killed job continues as if nothing happened.

A checkpoint holds every weight and optimizer moment, the center, the scaler and the
random states of the moment it was written: at the end of an epoch, or within one
(``--checkpoint_every_minutes``, a scheduler's signal), when it also holds the step reached
and the epoch's running sums for log.txt. The data order depends only on (seed, epoch,
rank) and each image's augmentation on (seed, epoch, index) (``data.seeding``), so a resume
skips the steps already done and ends with the same weights as an uninterrupted run (bit
for bit on a CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from dino.architectures import canonical
from dino.checkpoint import CheckpointError, load_file, load_strict, save_atomic, strip_prefixes
from dino.config import RECIPE_FIELDS, ConfigError, TrainConfig
from dino.distributed import get_rank, is_main_process
from dino.progress import append_json_line, warn
from dino.training.builders import has_batchnorm
from dino.training.plan import NetworkSpec

if TYPE_CHECKING:
    from dino.training.trainer import TrainState

CHECKPOINT = "checkpoint.pth"
LOG = "log.txt"


def save_checkpoint(
    out: Path,
    state: TrainState,
    epoch: int,
    iteration: int,
    args: dict[str, Any],
    best: dict[str, Any],
    names: tuple[str, ...] = (CHECKPOINT,),
    keep_every: int = 0,
    within: dict[str, Any] | None = None,
) -> None:
    """The state after epoch ``epoch`` under each of ``names`` in ``out`` (``checkpoint.pth``;
    ``checkpoint_best.pth`` when it is the best), and ``checkpoint{epoch:04}.pth`` every
    ``keep_every`` epochs (0: never). ``args`` is the run's resolved configuration
    (``Plan.args``); ``best`` records which epoch is the best so far, for a resume.
    ``within``: the state is in the middle of epoch ``epoch`` (``Within.to_dict``)."""
    if not is_main_process():
        return
    payload: dict[str, Any] = {
        **reference_networks(state.student, state.teacher),
        "optimizer": state.optimizer.state_dict(),
        # The next epoch to run, as in the reference (which restarts a partial one).
        "epoch": epoch + 1 if within is None else epoch,
        "iteration": iteration,
        "args": args,
        "dino_loss": state.loss_fn.state_dict(),
        "rng": rng_states(),
        "best": best,
    }
    if state.scaler is not None:
        payload["fp16_scaler"] = state.scaler.state_dict()
    if within is not None:
        payload["within_epoch"] = within
    files = [out / name for name in names]
    if CHECKPOINT in names and keep_every and epoch % keep_every == 0 and within is None:
        files.append(out / f"checkpoint{epoch:04}.pth")
    # checkpoint.pth last: once it says the epoch is done, every other file of it is written.
    for path in sorted(files, key=lambda p: p.name == CHECKPOINT):
        save_atomic(payload, path)


def reference_networks(student: nn.Module, teacher: nn.Module) -> dict[str, dict[str, Tensor]]:
    """``student`` and ``teacher`` state dicts named as main_dino.py saves them, so that its
    ``restart_from_checkpoint`` (which loads with ``strict=False``) finds every key: the
    student under DistributedDataParallel's ``module.`` prefix, the teacher without, unless
    it has BatchNorm layers (then the reference wraps it in DDP too)."""
    teacher_prefix = "module." if has_batchnorm(teacher) else ""
    return {
        "student": {f"module.{k}": v for k, v in student.state_dict().items()},
        "teacher": {f"{teacher_prefix}{k}": v for k, v in teacher.state_dict().items()},
    }


@dataclass
class Within:
    """How far an epoch got: ``step`` steps done, and the running sums its log.txt line is
    made from (``sums`` of each step metric, ``images``, ``skipped`` file count, the
    ``skipped_files`` named, ``seconds`` spent)."""

    step: int = 0
    sums: dict[str, float] | None = None
    images: int = 0
    skipped: int = 0
    skipped_files: list[str] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sums": dict(self.sums or {}),
            "images": self.images,
            "skipped": self.skipped,
            "skipped_files": list(self.skipped_files or []),
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> Within:
        return cls(
            int(saved["step"]),
            {str(k): float(v) for k, v in saved["sums"].items()},
            int(saved["images"]),
            int(saved["skipped"]),
            [str(f) for f in saved["skipped_files"]],
            float(saved["seconds"]),
        )


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run starts: ``epoch`` (0: a fresh run), ``within`` it (None: at its
    beginning), and the checkpoint's record of the best epoch (None if none)."""

    epoch: int = 0
    within: Within | None = None
    best: Any = None


# Options under which the saved state means something else: a resume that changes one
# would mix two runs in one, so it is refused unless --allow_change names it. (The number
# of processes, epochs, precision, workers, logging and evaluation may change.)
GUARDED = (
    "batch_size_per_gpu",
    "grad_accum_steps",
    "seed",
    "lr",
    "min_lr",
    "warmup_epochs",
    "weight_decay",
    "weight_decay_end",
    "clip_grad",
    "optimizer",
    "momentum_teacher",
    "teacher_temp",
    "warmup_teacher_temp",
    "warmup_teacher_temp_epochs",
    "freeze_last_layer",
    "norm_last_layer",
    "centering",
    "koleo_weight",
    "drop_path_rate",
    "local_crops_number",
    "global_crops_scale",
    "local_crops_scale",
    "global_crop_size",
    "local_crop_size",
)
# Changes after which the saved optimizer state cannot be used: the optimizer starts fresh.
FRESH_OPTIMIZER = ("optimizer", "norm_last_layer")
REQUIRED = ("student", "teacher", "optimizer", "dino_loss", "epoch")


def resume(
    path: Path,
    state: TrainState,
    network: NetworkSpec,
    args: Mapping[str, Any] | None = None,
    allowed: tuple[str, ...] = (),
    loaded: Any = None,
) -> ResumePoint:
    """Restore ``state`` (networks as ``network`` describes) from ``path`` if it exists
    (``loaded``: its contents, when already read); says where the run goes on. ``args``
    (this run's resolved configuration) must agree with the saved one on every ``GUARDED``
    option but those ``allowed`` to change; a CheckpointError names the first that differs,
    or what is malformed in the file."""
    if loaded is None and not path.exists():
        return ResumePoint()
    ckpt = load_file(path) if loaded is None else loaded
    epoch, within = _check_layout(ckpt, path)
    check_architecture(path, ckpt.get("args"), network)
    changed = check_unchanged(path, ckpt.get("args"), args or {}, allowed)
    arch = network.backbone.arch
    load_strict(state.student, strip_prefixes(ckpt["student"], ("module.",)), f"student ({arch})")
    load_strict(state.teacher, strip_prefixes(ckpt["teacher"], ("module.",)), f"teacher ({arch})")
    center, ours = ckpt["dino_loss"].get("center"), state.loss_fn.center
    if not isinstance(center, Tensor) or center.shape != ours.shape:
        shape = tuple(center.shape) if isinstance(center, Tensor) else type(center).__name__
        raise CheckpointError(
            f"{path}: its dino_loss center is {shape}, this run's {tuple(ours.shape)}"
        )
    state.loss_fn.load_state_dict(ckpt["dino_loss"])
    fresh = [name for name in FRESH_OPTIMIZER if name in changed]
    if fresh:
        warn(f"{', '.join(fresh)} changed: the optimizer starts fresh (moments not restored)")
    else:
        load_optimizer_state(state.optimizer, ckpt["optimizer"], path)
    if state.scaler is not None and isinstance(ckpt.get("fp16_scaler"), dict):
        state.scaler.load_state_dict(ckpt["fp16_scaler"])
    if "rng" in ckpt:
        try:
            set_rng_states(ckpt["rng"], offset=get_rank())
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{path}: its random states are malformed ({e})") from None
    return ResumePoint(epoch, within, ckpt.get("best"))


def saved_recipe(ckpt: Any, config: TrainConfig) -> TrainConfig:
    """``config`` with the recipe values (``config.RECIPE_FIELDS``) it leaves to the recipe
    taken from the loaded checkpoint ``ckpt`` (None: no checkpoint): a resumed run keeps the
    values it started with, even where the recipe would now resolve others (another number
    of processes changes the run's length). Anything malformed is left to ``resume``."""
    saved = ckpt.get("args") if isinstance(ckpt, Mapping) else None
    recorded = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    if not isinstance(recorded, Mapping):
        return config
    keep = {
        name: recorded[name]
        for name in RECIPE_FIELDS
        if getattr(config, name) is None and recorded.get(name) is not None
    }
    try:
        return dataclasses.replace(config, **keep)
    except ConfigError:
        return config  # a saved value this version refuses: the resume check names it


def _check_layout(ckpt: Any, path: Path) -> tuple[int, Within | None]:
    """The epoch to start from and the position within it, once ``ckpt`` is known to have
    the entries a resume reads, each of its type; else a CheckpointError naming the first
    that is missing or malformed."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: not a training checkpoint (a {type(ckpt).__name__})")
    missing = [key for key in REQUIRED if key not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path}: not a training checkpoint to resume (no {', '.join(missing)}); move it "
            "away or use another --output_dir"
        )
    for key in ("student", "teacher", "optimizer", "dino_loss"):
        if not isinstance(ckpt[key], Mapping):
            raise CheckpointError(f"{path}: its {key} is a {type(ckpt[key]).__name__}, not a dict")
    epoch = ckpt["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"{path}: its epoch is {epoch!r}, not an integer >= 0")
    saved = ckpt.get("within_epoch")
    if saved is None:
        return epoch, None
    try:
        within = Within.from_dict(saved)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"{path}: its within_epoch record is malformed") from None
    if within.step < 0:
        raise CheckpointError(f"{path}: its within_epoch step is {within.step}, not >= 0")
    return epoch, within


def check_unchanged(
    path: Path, saved: Any, ours: Mapping[str, Any], allowed: tuple[str, ...]
) -> set[str]:
    """The ``GUARDED`` options whose value in this run (``ours``) differs from the saved
    ``args`` (``saved``, a dict or the reference's Namespace); a CheckpointError names the
    first one not ``allowed`` to change, with both values."""
    recorded = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    recorded = recorded if isinstance(recorded, Mapping) else {}
    changed = set()
    for name in GUARDED:
        if name not in recorded or name not in ours:
            continue
        theirs, new = _plain(recorded[name]), _plain(ours[name])
        if theirs == new:
            continue
        if name not in allowed:
            raise CheckpointError(
                f"{path} was trained with {name}={theirs!r}, this run asks {name}={new!r}; "
                f"resuming would mix two runs: use the saved value, another --output_dir, or "
                f"--allow_change {name}"
            )
        changed.add(name)
    return changed


def _plain(value: Any) -> Any:
    """Tuples as lists and numpy scalars as Python numbers, so that saved values compare."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, saved: Mapping[str, Any], source: Path | str
) -> None:
    """Restore ``saved`` (an optimizer state dict) into ``optimizer`` with every moment on its
    own parameter.

    torch restores optimizer state by position. When both sides name their parameters
    (``param_names``, as ``optim.param_groups`` records them) the state is first put in this
    optimizer's order by name; otherwise (main_dino.py's checkpoints) it goes by position.
    Either way every state tensor's shape is checked against its parameter's, so a state
    saved for another parameter order is refused with a CheckpointError instead of crashing
    (or, worse, training on) at the first step.
    """
    groups, saved_groups = optimizer.param_groups, list(saved["param_groups"])
    if len(groups) != len(saved_groups):
        raise CheckpointError(
            f"{source}: its optimizer has {len(saved_groups)} parameter groups, this run "
            f"{len(groups)}"
        )
    named = all("param_names" in g for g in [*groups, *saved_groups])
    if named:
        saved = _in_this_order(saved, groups, source)
    else:
        for i, (g, sg) in enumerate(zip(groups, saved_groups, strict=True)):
            if len(g["params"]) != len(sg["params"]):
                raise CheckpointError(
                    f"{source}: its optimizer's group {i} has {len(sg['params'])} parameters, "
                    f"this run's {len(g['params'])} (another architecture or norm_last_layer?)"
                )
    _check_state_shapes(saved, groups, source)
    optimizer.load_state_dict(dict(saved))


def _in_this_order(
    saved: Mapping[str, Any], groups: list[dict[str, Any]], source: Path | str
) -> dict[str, Any]:
    """``saved`` with its parameter ids renumbered so that they follow ``groups``' names."""
    where = {  # name -> (group, saved id)
        name: (i, pid)
        for i, g in enumerate(saved["param_groups"])
        for name, pid in zip(g["param_names"], g["params"], strict=True)
    }
    ours = [name for g in groups for name in g["param_names"]]
    missing, extra = [n for n in ours if n not in where], [n for n in where if n not in ours]
    if missing or extra:
        raise CheckpointError(
            f"{source}: its optimizer holds other parameters than this run's (missing: "
            f"{', '.join(missing[:4]) or 'none'}; not in this run: "
            f"{', '.join(extra[:4]) or 'none'})"
        )
    state, new_groups, new_id = {}, [], 0
    for i, (g, sg) in enumerate(zip(groups, saved["param_groups"], strict=True)):
        ids = []
        for name in g["param_names"]:
            group, pid = where[name]
            if group != i:
                raise CheckpointError(
                    f"{source}: {name} is in optimizer group {group} there, {i} here"
                )
            if pid in saved["state"]:
                state[new_id] = saved["state"][pid]
            ids.append(new_id)
            new_id += 1
        new_groups.append({**sg, "params": ids, "param_names": list(g["param_names"])})
    return {"state": state, "param_groups": new_groups}


def _check_state_shapes(
    saved: Mapping[str, Any], groups: list[dict[str, Any]], source: Path | str
) -> None:
    """Every per-parameter state tensor (moments, momentum buffers) has its parameter's shape."""
    for g, sg in zip(groups, saved["param_groups"], strict=True):
        names = g.get("param_names") or [f"#{j}" for j in range(len(g["params"]))]
        for name, p, pid in zip(names, g["params"], sg["params"], strict=True):
            for key, value in saved["state"].get(pid, {}).items():
                if isinstance(value, Tensor) and value.ndim and value.shape != p.shape:
                    raise CheckpointError(
                        f"{source}: its optimizer state does not fit this run's parameters "
                        f"({key} of {name} is {tuple(value.shape)}, the parameter "
                        f"{tuple(p.shape)}): it was saved for another parameter order (dino "
                        "checkpoints before weight_g came first, with norm_last_layer false) "
                        "or network; continue from its weights with a fresh optimizer: "
                        "--pretrained_weights FILE and another --output_dir"
                    )


def remove_partial_writes(out: Path) -> None:
    """Delete the temporary files of checkpoint writes that a kill interrupted."""
    if is_main_process():
        for tmp in out.glob(".checkpoint*.pth.*.tmp"):
            tmp.unlink(missing_ok=True)


def check_architecture(path: Path, saved: Any, network: NetworkSpec) -> None:
    """Refuse a checkpoint whose ``args`` (``saved``) record networks of another shape than
    ``network``, naming both values."""
    recorded = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    recorded = recorded if isinstance(recorded, dict) else {}
    for key, ours in network.shape().items():
        theirs = recorded.get(key)
        theirs = canonical(theirs) if key == "arch" and isinstance(theirs, str) else theirs
        if theirs is not None and theirs != ours:
            raise CheckpointError(
                f"{path} holds a {key}={theirs} network but this run builds {key}={ours} "
                f"({recorded.get('arch', '?')} vs {network.backbone.arch}); use another "
                "--output_dir or the same architecture flags"
            )


def rng_states() -> dict[str, Any]:
    """Python, numpy and torch random states as tensors and plain lists (weights-only safe)."""
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [version, list(state), gauss],
        "numpy": [
            np_name,
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch": torch.get_rng_state(),
    }


def set_rng_states(states: dict[str, Any], offset: int = 0) -> None:
    """Restore ``rng_states()``; ``offset`` > 0 (other ranks) reseeds from it instead."""
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, gauss_np = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(states["torch"])
    if offset:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) + offset
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)


def append_log(out: Path, stats: dict[str, Any]) -> None:
    """One JSON line per epoch in ``log.txt``."""
    append_json_line(out / LOG, stats)


def truncate_log(out: Path, start_epoch: int) -> None:
    """Drop log lines of epochs that will run again (written before a kill hit the
    checkpoint), and lines that are not an epoch's record (cut short by a kill, or edited)."""
    path = out / LOG
    if not is_main_process() or not path.exists():
        return
    kept, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            if epoch < start_epoch:
                kept.append(line)
        elif line.strip():
            dropped += 1
    if dropped:
        warn(f"{path}: dropped {dropped} line(s) that are not an epoch's JSON record")
    path.write_text("".join(f"{line}\n" for line in kept))
