"""The training configuration: every default in one typed place, validated once at load.

Precedence, lowest first: the defaults below (the reference ``main_dino.py`` values for
ViT-S/16 on ImageNet), the demo preset when no ``data_path`` is given, a YAML file, then
command-line flags. Field names are the reference flag names, so ``--lr`` and ``lr:`` in a
YAML file mean what DINO users expect.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from dino.architectures import ARCHITECTURES, NAMES, canonical, is_known, is_timm
from dino.coerce import coerce_to, shown
from dino.errors import ConfigError


def _help(text: str, **kwargs: Any) -> Any:
    return dataclasses.field(metadata={"help": text}, **kwargs)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """All options of ``dino train``; defaults follow the reference ViT-S/16 ImageNet run."""

    # --- model ---
    arch: str = _help(
        "backbone: " + ", ".join(NAMES) + " (any timm model, e.g. timm:resnet50)",
        default="vit_small",
    )
    patch_size: int = _help(
        "ViT patch size in pixels (16 or 8 in the paper; any integer works)", default=16
    )
    embed_dim: int | None = _help("ViT width; overrides the named size", default=None)
    depth: int | None = _help("number of ViT blocks; overrides the named size", default=None)
    num_heads: int | None = _help("ViT attention heads; overrides the named size", default=None)
    in_chans: int = _help(
        "image channels: 3 (RGB), 1 (grayscale, 16-bit kept) or the bands of multi-band TIFFs",
        default=3,
    )
    out_dim: int | None = _help(
        "K, the dimension of the DINO head output (recipe; reference 65536)", default=None
    )
    norm_last_layer: bool = _help(
        "freeze the magnitude (weight_g) of the head's last layer", default=True
    )
    momentum_teacher: float | None = _help(
        "base EMA momentum of the teacher, cosine to 1 (recipe; reference 0.996)", default=None
    )
    use_bn_in_head: bool = _help("BatchNorm in the head's hidden layers", default=False)
    drop_path_rate: float = _help("stochastic depth rate of the student", default=0.1)
    # --- temperatures ---
    warmup_teacher_temp: float | None = _help(
        "teacher temperature at the start of training (recipe; reference 0.04)", default=None
    )
    teacher_temp: float | None = _help(
        "teacher temperature after the warm-up (recipe; reference 0.04)", default=None
    )
    warmup_teacher_temp_epochs: int | None = _help(
        "epochs of linear teacher-temperature warm-up (recipe; reference 0)", default=None
    )
    # --- anti-collapse terms (DINOv2) ---
    centering: str | None = _help(
        "teacher centering: center (DINO's running center) or sinkhorn (DINOv2's "
        "Sinkhorn-Knopp, 3 iterations) (recipe; reference center)",
        default=None,
    )
    koleo_weight: float | None = _help(
        "weight of the KoLeo term that spreads the student's [CLS] features; 0 disables "
        "(recipe; reference 0, DINOv2 0.1)",
        default=None,
    )
    # --- optimisation ---
    precision: str = _help(
        "auto, fp32, bf16 or fp16 (fp16: CUDA only, with loss scaling); auto picks bf16 where the "
        "hardware runs it fast (AMX / AVX-512 BF16 CPUs, Ampere or newer GPUs), else fp32",
        default="auto",
    )
    weight_decay: float = _help("initial weight decay (cosine schedule)", default=0.04)
    weight_decay_end: float = _help("final weight decay", default=0.4)
    clip_grad: float = _help("per-parameter gradient norm clip; 0 disables", default=3.0)
    batch_size_per_gpu: int = _help("images per process and step", default=64)
    grad_accum_steps: int = _help(
        "micro-batches of batch_size_per_gpu per optimizer step, for a total batch larger than "
        "memory allows: batch_size_per_gpu x this x processes (lr scaled to it; center and "
        "teacher updated once per step)",
        default=1,
    )
    epochs: int = _help("number of training epochs", default=100)
    freeze_last_layer: int | None = _help(
        "epochs during which the head's last layer is not updated (recipe; reference 1)",
        default=None,
    )
    lr: float | None = _help(
        "peak learning rate for a total batch of 256, linearly scaled (recipe; reference 0.0005)",
        default=None,
    )
    warmup_epochs: int | None = _help(
        "epochs of linear learning-rate warm-up (recipe; reference 10)", default=None
    )
    min_lr: float = _help("learning rate at the end of the cosine schedule", default=1e-6)
    optimizer: str = _help("adamw, sgd or lars", default="adamw")
    # --- multi-crop ---
    global_crops_scale: tuple[float, float] = _help(
        "scale range of the 2 global crops", default=(0.4, 1.0)
    )
    local_crops_number: int = _help("number of local crops; 0 disables multi-crop", default=8)
    local_crops_scale: tuple[float, float] = _help(
        "scale range of the local crops", default=(0.05, 0.4)
    )
    global_crop_size: int = _help("side of the global crops in pixels", default=224)
    local_crop_size: int = _help("side of the local crops in pixels", default=96)
    augment_on: str = _help(
        "where the crops are made: device (the loader only decodes; crops, flips, colour, "
        "blur and solarisation run batched on the training device, as PIL computes them), "
        "loader (torchvision's PIL pipeline in the loader processes, pixel for pixel the "
        "reference's) or auto (device on a GPU, and on a CPU for crops of at most 64 x 64 "
        "px on average, where it costs less CPU than PIL; loader otherwise). --in_chans "
        "other than 3 always uses the loader",
        default="auto",
    )
    decoded_cache_gib: float = _help(
        "with augment_on device: GiB of memory per process for the decoded images, kept "
        "between epochs when the whole data set fits (short side at most "
        "global_crop_size / sqrt(min global scale)); 0: decode every epoch",
        default=4.0,
    )
    recipe: str = _help(
        "where the options marked 'recipe' come from when not given: auto (scaled to the data "
        "and the length of training; equal to reference at ImageNet scale) or reference (the "
        "paper's values)",
        default="auto",
    )
    # --- run ---
    data_path: str | None = _help(
        "folder of images, searched recursively (omit it to train on the demo)", default=None
    )
    follow_links: bool = _help(
        "follow links to folders outside data_path (and the k-NN folders) when scanning; "
        "without it they are skipped and named; a link loop is never entered twice",
        default=False,
    )
    output_dir: str = _help(
        "where checkpoints, log.txt and config.yaml are written", default="output"
    )
    saveckp_freq: int = _help(
        "also keep checkpoint{epoch:04}.pth every this many epochs", default=20
    )
    seed: int = _help("random seed", default=0)
    num_workers: int = _help("data-loading processes per training process", default=10)
    device: str = _help("auto, cpu or cuda", default="auto")
    logger: str = _help(
        "per-iteration scalars beside log.txt: none, csv (steps.csv and epochs.csv) or "
        "tensorboard (OUTPUT_DIR/tensorboard; pip install -e '.[tensorboard]')",
        default="none",
    )
    checkpoint_every_minutes: float = _help(
        "also write checkpoint.pth every this many minutes within an epoch; a resume continues "
        "from that iteration; 0: at the end of each epoch only",
        default=0.0,
    )
    requeue: bool = _help(
        "SIGTERM or SIGUSR1 (a scheduler's pre-emption or time-limit warning) always saves a "
        "checkpoint and stops the run; with requeue under SLURM the job also requeues itself "
        "(scontrol requeue $SLURM_JOB_ID)",
        default=False,
    )
    allow_change: str = _help(
        "options a resume may change, comma-separated (e.g. lr,seed); a resume refuses a "
        "change of any other option that gives the saved state its meaning",
        default="",
    )
    keep_best: bool = _help(
        "keep checkpoint_best.pth, the epoch with the best k-NN accuracy (val_path or demo), "
        "else the highest effective rank of the features; never a collapsed one",
        default=True,
    )
    compile: bool = _help(
        "compile the networks with torch.compile (worth it on GPUs)", default=False
    )
    eval_every: int = _help(
        "measure the teacher's k-NN accuracy every this many epochs; 0: never", default=0
    )
    val_path: str | None = _help(
        "labelled folder (<class>/<images>) of k-NN queries measured during training",
        default=None,
    )
    knn_train_path: str | None = _help(
        "labelled folder of the k-NN bank for val_path (default: data_path)", default=None
    )
    # --- continued pretraining ---
    pretrained_weights: str | None = _help(
        "start student and teacher from this checkpoint (full, backbone only or timm-named; "
        "its head too where it fits) instead of random weights; a checkpoint.pth already in "
        "output_dir is resumed instead",
        default=None,
    )
    checkpoint_key: str = _help(
        "the network of a full pretrained_weights checkpoint: teacher or student",
        default="teacher",
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _check_values(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (tuples become lists), for YAML and weights-only loading."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @property
    def changes_allowed(self) -> tuple[str, ...]:
        """``allow_change`` as option names."""
        return tuple(n.strip() for n in self.allow_change.split(",") if n.strip())

    @property
    def is_demo(self) -> bool:
        return self.data_path is None


OPTIMIZERS = ("adamw", "sgd", "lars")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
LOGGERS = ("none", "csv", "tensorboard")
RECIPES = ("auto", "reference")
AUGMENT_ON = ("auto", "device", "loader")
# Options that the recipe fills when they are not given (None until resolved).
RECIPE_FIELDS = (
    "out_dim",
    "momentum_teacher",
    "teacher_temp",
    "warmup_teacher_temp",
    "warmup_teacher_temp_epochs",
    "lr",
    "warmup_epochs",
    "freeze_last_layer",
    "centering",
    "koleo_weight",
)
CENTERINGS = ("center", "sinkhorn")
PATH_FIELDS = ("data_path", "output_dir", "val_path", "knn_train_path", "pretrained_weights")

# The range of every integer option (None: no upper bound here). The upper bounds are far
# above any published DINO run and low enough that a typo stops here instead of allocating
# terabytes or hanging later.
MAX_EPOCHS = 100_000  # the schedules hold one value per iteration (the paper: up to 800)
INT_RANGES: dict[str, tuple[int, int | None]] = {
    "patch_size": (1, None),  # the crops are multiples of it
    "embed_dim": (1, 16_384),  # ViT-22B is 6144 wide
    "depth": (1, 1_024),  # ViT-22B has 48 blocks
    "num_heads": (1, None),  # a divisor of embed_dim
    "in_chans": (1, 1_024),  # hyperspectral images have a few hundred bands
    "out_dim": (1, 262_144),  # the largest K of DINO's ablation (2^18); the head is 256 x K
    "batch_size_per_gpu": (1, None),  # a batch larger than the data is refused by the plan
    "grad_accum_steps": (1, None),  # (likewise)
    "epochs": (1, MAX_EPOCHS),
    "warmup_epochs": (0, MAX_EPOCHS),
    "warmup_teacher_temp_epochs": (0, MAX_EPOCHS),
    "freeze_last_layer": (0, MAX_EPOCHS),
    "saveckp_freq": (1, None),
    "eval_every": (0, None),
    "global_crop_size": (1, 4_096),  # 65,536 tokens per crop for a ViT/16
    "local_crop_size": (1, None),  # at most global_crop_size
    "local_crops_number": (0, 256),  # the reference uses up to 10
    "seed": (0, 2**32 - 1),  # numpy takes 32-bit seeds; torch's seed * 100_003 must fit int64
    "num_workers": (0, None),  # at most max_workers(), which depends on the machine
}
MIN_WORKERS_CAP = 32  # num_workers may be 4 per CPU of this machine, and 32 on any


def max_workers() -> int:
    """The most loader workers a run may start: each is a process holding a copy of the
    dataset, and thousands of them exhaust memory or hang."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(MIN_WORKERS_CAP, 4 * (cpus or 1))


# The demo: a tiny ViT on 32-px generated images, small enough to learn in minutes on a CPU.
DEMO_PRESET: dict[str, Any] = {
    "arch": "vit_tiny",
    "depth": 6,
    "patch_size": 8,
    "global_crop_size": 32,
    "local_crop_size": 16,
    "local_crops_number": 6,
    "global_crops_scale": (0.25, 1.0),
    "local_crops_scale": (0.05, 0.25),
    "batch_size_per_gpu": 32,
    "epochs": 8,
    "drop_path_rate": 0.0,
    "saveckp_freq": 4,
    "num_workers": 1,
    "output_dir": "output/demo",
    "eval_every": 2,
}


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def field_help(name: str) -> str:
    return str(_fields()[name].metadata.get("help", ""))


def field_type(name: str) -> Any:
    return _type_hints()[name]


@cache  # get_type_hints evaluates every annotation: 2 ms, and build_config asks 100 times
def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _fields() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


MAX_CONFIG_BYTES = 1 << 20  # a YAML file of options is a few kB


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of field names to values; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--config: no such file {path}")
    if not path.is_file():
        raise ConfigError(f"--config {path}: not a regular file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"--config {path}: {path.stat().st_size:,} bytes, more than an options file holds "
            f"(at most {MAX_CONFIG_BYTES:,})"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a text file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"--config {path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option names to values")
    return data


def build_config(overrides: Mapping[str, Any], source: str = "") -> TrainConfig:
    """The defaults, then the demo preset if there is no data, then ``overrides``.

    ``overrides`` holds the values the user gave (YAML merged with flags); its values are
    coerced to the field types, and unknown names are refused.
    """
    known = _fields()
    for key in overrides:
        if key not in known:
            raise ConfigError(f"{source}{key}: unknown option; valid ones: {', '.join(known)}")
    try:
        values = {k: coerce(k, v) for k, v in overrides.items()}
        if values.get("data_path") is None:
            values = {**DEMO_PRESET, **values}
        return TrainConfig(**values)
    except ConfigError as e:
        raise ConfigError(f"{source}{e}") from None


def coerce(name: str, value: Any) -> Any:
    """Convert a YAML or command-line value to the type of field ``name``.

    A folder or file option given as an empty string is refused (it would mean the current
    folder), and so is ``data_path`` given as "none" or "null": the demo runs when the
    option is left out, never because of a value that looks like a path.
    """
    if name in PATH_FIELDS and isinstance(value, str):
        word = value.strip().lower()
        if not word or (name == "data_path" and word in ("none", "null")):
            hint = " (leave --data_path out to train on the demo)" if name == "data_path" else ""
            raise ConfigError(f"{name}: expected a path, got {shown(value)}{hint}")
    return coerce_to(name, field_type(name), value)


def _check_types(cfg: TrainConfig) -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if coerce(f.name, value) != value:
            raise ConfigError(f"{f.name}: expected {field_type(f.name)}, got {shown(value)}")


def _require(ok: bool, name: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name}: expected {expected}, got {shown(value)}")


def _unset_or(value: Any, ok: Callable[[Any], bool]) -> bool:
    """Options left to the recipe are None until resolved."""
    return value is None or ok(value)


def _int_range(lo: int, hi: int | None) -> str:
    if hi is not None:
        return f"an integer in [{lo}, {hi}]"
    return "a positive integer" if lo == 1 else f"an integer >= {lo}"


def _check_heads(c: TrainConfig) -> None:
    """A ViT's width must split evenly into its attention heads (named size or overrides)."""
    if is_timm(c.arch) or ARCHITECTURES[canonical(c.arch)].family != "vit":
        return
    named = ARCHITECTURES[canonical(c.arch)]
    embed_dim, num_heads = c.embed_dim or named.embed_dim, c.num_heads or named.num_heads or 1
    _require(
        embed_dim % num_heads == 0,
        "num_heads",
        f"a divisor of embed_dim ({embed_dim})",
        num_heads,
    )


def _check_values(c: TrainConfig) -> None:
    _require(is_known(c.arch), "arch", "one of " + ", ".join(NAMES), c.arch)
    for name in ("embed_dim", "depth", "num_heads"):
        _require(
            not is_timm(c.arch) or getattr(c, name) is None,
            name,
            "no value with a timm model (its name fixes its size)",
            getattr(c, name),
        )
    _require(c.optimizer in OPTIMIZERS, "optimizer", "one of " + ", ".join(OPTIMIZERS), c.optimizer)
    _require(c.precision in PRECISIONS, "precision", "one of " + ", ".join(PRECISIONS), c.precision)
    _require(c.device in DEVICES, "device", "one of " + ", ".join(DEVICES), c.device)
    _require(c.logger in LOGGERS, "logger", "one of " + ", ".join(LOGGERS), c.logger)
    _require(c.recipe in RECIPES, "recipe", "one of " + ", ".join(RECIPES), c.recipe)
    _require(c.augment_on in AUGMENT_ON, "augment_on", "auto, device or loader", c.augment_on)
    _require(
        _unset_or(c.centering, lambda v: v in CENTERINGS),
        "centering",
        "one of " + ", ".join(CENTERINGS),
        c.centering,
    )
    for name, (lo, hi) in INT_RANGES.items():
        value = getattr(c, name)
        _require(
            value is None or (lo <= value and (hi is None or value <= hi)),
            name,
            _int_range(lo, hi),
            value,
        )
    _require(
        c.num_workers <= max_workers(),
        "num_workers",
        f"an integer in [0, {max_workers()}] (4 per CPU, at least {MIN_WORKERS_CAP})",
        c.num_workers,
    )
    _check_heads(c)
    for name in ("lr", "warmup_teacher_temp", "teacher_temp"):
        value = getattr(c, name)
        _require(
            _unset_or(value, lambda v: math.isfinite(v) and v > 0), name, "a number > 0", value
        )
    for name in (
        "min_lr",
        "weight_decay",
        "weight_decay_end",
        "clip_grad",
        "koleo_weight",
        "checkpoint_every_minutes",
        "decoded_cache_gib",
    ):
        value = getattr(c, name)
        _require(
            _unset_or(value, lambda v: math.isfinite(v) and v >= 0), name, "a number >= 0", value
        )
    _require(
        _unset_or(c.momentum_teacher, lambda v: 0.0 <= v <= 1.0),
        "momentum_teacher",
        "a number in [0, 1]",
        c.momentum_teacher,
    )
    _require(
        0.0 <= c.drop_path_rate < 1.0, "drop_path_rate", "a number in [0, 1)", c.drop_path_rate
    )
    for name in ("global_crops_scale", "local_crops_scale"):
        lo, hi = getattr(c, name)
        _require(0.0 < lo <= hi <= 1.0, name, "two numbers 0 < min <= max <= 1", (lo, hi))
    _require(
        c.local_crop_size <= c.global_crop_size,
        "local_crop_size",
        f"at most global_crop_size ({c.global_crop_size})",
        c.local_crop_size,
    )
    unknown = [n for n in c.changes_allowed if n not in _fields()]
    _require(not unknown, "allow_change", "option names, comma-separated", c.allow_change)
    if not is_timm(c.arch) and ARCHITECTURES[canonical(c.arch)].patched:  # timm: at the plan
        for name in ("global_crop_size", "local_crop_size"):
            size = getattr(c, name)
            _require(
                size % c.patch_size == 0, name, f"a multiple of patch_size ({c.patch_size})", size
            )
    _require(
        c.checkpoint_key in ("teacher", "student"),
        "checkpoint_key",
        "teacher or student",
        c.checkpoint_key,
    )
    _require(
        c.knn_train_path is None or c.val_path is not None,
        "knn_train_path",
        "to be given with val_path",
        c.knn_train_path,
    )
    if c.precision == "fp16":
        _require(
            c.device != "cpu", "precision", "fp32 or bf16 on a CPU (fp16 needs CUDA)", c.precision
        )
