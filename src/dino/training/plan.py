"""The resolved plan of a run: the configuration with every derived value decided once.

``make_plan`` turns what the user asked for (``TrainConfig``, with ``auto`` device,
precision and recipe values) and the size of the data into one immutable record, and
checks it before anything is written: a batch larger than the data stops here, not after
``config.yaml`` exists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from dino.config import ConfigError, TrainConfig
from dino.hardware import resolve_precision
from dino.recipe import Recipe, RunSize, recipe_of, resolve_recipe
from dino.training.builders import Schedules, build_schedules


@dataclass(frozen=True)
class Plan:
    """What a run does, decided once: the resolved configuration (device, precision and
    recipe values filled in, as saved in ``config.yaml``) and the values derived from it."""

    config: TrainConfig
    device: torch.device
    recipe: Recipe
    size: RunSize  # total batch over all processes
    schedules: Schedules

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def steps(self) -> int:
        """Iterations per epoch (on every process)."""
        return self.size.steps


def make_plan(config: TrainConfig, device: torch.device, images: int, world_size: int = 1) -> Plan:
    """The plan of training ``config`` on ``images`` images over ``world_size`` processes on
    ``device``; a ConfigError names the field when the run cannot be done."""
    size = RunSize.of(config, images, world_size)
    if size.steps == 0:
        raise ConfigError(
            f"batch_size_per_gpu: {config.batch_size_per_gpu} x {world_size} process(es) is "
            f"more than the {images} images; lower it"
        )
    precision = resolve_precision(config.precision, device)
    resolved = resolve_recipe(
        dataclasses.replace(config, device=device.type, precision=precision), images, world_size
    )
    recipe = recipe_of(resolved)
    schedules = build_schedules(recipe, resolved, size.steps, size.batch)
    return Plan(resolved, device, recipe, size, schedules)
