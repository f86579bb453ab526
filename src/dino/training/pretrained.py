"""Continued pretraining: student and teacher start from a checkpoint instead of random weights.

Any file the evaluation commands read will do (a full checkpoint, ours or main_dino's; a
backbone-only state dict, the published layout or timm's names): its backbone is taken as
``dino.checkpoint.split_network`` takes it and loaded strictly, after two adaptations to
this run's network. A position grid of another size is resampled as the ViT (ours or
timm's) resamples it for other inputs (so the network computes what it computed at this
crop size), and
3-channel input filters are adapted to ``--in_chans`` (``adapt_input_conv``). The file's
DINO head is loaded too when it has exactly this run's shapes; else the head starts fresh.
Both networks then hold the same weights, as at the start of any run.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from dino.checkpoint import load_file, load_strict, select_state, split_network, strip_prefixes
from dino.eval.load import backbone_spec, build_for_state, recorded_args
from dino.models import MultiCropWrapper
from dino.progress import log
from dino.training.builders import build_student_teacher
from dino.training.plan import Plan, StartSpec


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """Filters of a first convolution for ``in_chans`` input channels, from ``weight``
    (out, c, kh, kw) trained on c channels (RGB: c = 3).

    One channel: the sum of the c filters, so that a grey image gives what it gave repeated
    into every channel. More: channel i takes filter i mod c, all scaled by c / in_chans, so
    that an image whose bands are equal keeps the response size of a grey one. (The rule of
    timm's ``adapt_input_conv``.)
    """
    c = weight.shape[1]
    if in_chans == c:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_chans, device=weight.device) % c
    return weight[:, index] * (c / in_chans)


def load_pretrained(
    start: StartSpec, student: MultiCropWrapper, teacher: MultiCropWrapper, quiet: bool = False
) -> None:
    """Load ``start``'s network into ``student`` and copy it into ``teacher``; a
    CheckpointError names what does not fit. Says what was loaded unless ``quiet``."""
    obj = load_file(start.path)
    backbone, head = split_network(obj, start.checkpoint_key)
    if not head:  # a bare state dict: head.* layers this backbone has are its own (ConvNeXt's)
        own = student.backbone.state_dict()
        bare = strip_prefixes(select_state(obj, start.checkpoint_key))
        backbone.update({k: v for k, v in bare.items() if k.startswith("head.") and k in own})
    backbone = _fit_backbone(backbone, student.backbone, recorded_args(obj), start.path)
    load_strict(student.backbone, backbone, f"this run's backbone, from {start.path}")
    why_fresh = _head_misfit(head, student.head)
    if why_fresh is None:
        student.head.load_state_dict(head)
    teacher.load_state_dict(student.state_dict())
    if not quiet:
        which = f" ({start.checkpoint_key})" if start.checkpoint_key in obj else ""
        log(
            f"starting from {start.path}{which}: backbone loaded; "
            + ("head loaded" if why_fresh is None else f"head fresh ({why_fresh})")
        )


def starting_backbone(plan: Plan, teacher: MultiCropWrapper, resumed: bool) -> nn.Module:
    """The backbone training started from, the floor every later figure is read against:
    the teacher itself before its first step; for a resumed run, rebuilt (drawing no random
    numbers) from the seed and, in continued pretraining, the file."""
    if not resumed:
        return teacher.backbone
    with torch.random.fork_rng(devices=[]):
        student, start = build_student_teacher(plan.network, plan.seed)
    if plan.start is not None:
        load_pretrained(plan.start, student, start, quiet=True)
    return start.backbone.to(plan.device)


def _fit_backbone(
    state: dict[str, Tensor], model: nn.Module, args: dict, source: Path
) -> dict[str, Tensor]:
    """``state`` with its position grid resampled and its input filters adapted to ``model``."""
    own = model.state_dict()
    state = dict(state)
    if "pos_embed" in state and "pos_embed" in own:
        theirs, ours = state["pos_embed"], own["pos_embed"]
        if theirs.shape[1] != ours.shape[1] and theirs.shape[2] == ours.shape[2]:
            if hasattr(model, "interpolate_pos_encoding"):
                state["pos_embed"] = _resampled_positions(state, args, model, source)
            elif hasattr(model, "num_prefix_tokens"):  # a timm ViT
                state["pos_embed"] = _resampled_timm_positions(theirs, ours, model)
    for key, value in own.items():
        filters = state.get(key)
        if (
            filters is not None
            and filters.ndim == 4
            and filters.shape[1] != value.shape[1]
            and (filters.shape[0], *filters.shape[2:]) == (value.shape[0], *value.shape[2:])
        ):
            state[key] = adapt_input_conv(filters, value.shape[1])
    return state


def _resampled_timm_positions(theirs: Tensor, ours: Tensor, model: nn.Module) -> Tensor:
    """A timm ViT's position embeddings ``theirs`` (1, prefix + n^2, D) for ``ours``' grid,
    resampled by timm's own rule (bicubic, antialiased), as its ``dynamic_img_size`` does
    for other inputs. Only ViTs whose embeddings include the prefix tokens reach here."""
    from timm.layers import resample_abs_pos_embed

    prefix = (
        0
        if getattr(model, "no_embed_class", False)
        else int(getattr(model, "num_prefix_tokens", 1))
    )
    side = math.isqrt(ours.shape[1] - prefix)  # (1, prefix + side^2, D)
    with torch.no_grad():
        return resample_abs_pos_embed(theirs, [side, side], num_prefix_tokens=prefix)


def _resampled_positions(
    state: dict[str, Tensor], args: dict, model: nn.Module, source: Path
) -> Tensor:
    """The file's position embeddings for ``model``'s grid, resampled by the file's own ViT
    exactly as it resamples them for an input of ``model``'s training size."""
    vit = build_for_state(backbone_spec(state, args, source=str(source)), state, str(source))
    grid = math.isqrt(model.state_dict()["pos_embed"].shape[1] - 1)  # (1, 1 + grid^2, D)
    side = grid * int(model.patch_size)  # type: ignore[arg-type]
    with torch.no_grad():
        return vit.interpolate_pos_encoding(side, side)  # type: ignore[operator]


def _head_misfit(head: dict[str, Tensor], model: nn.Module) -> str | None:
    """Why ``head`` (a file's DINO head weights) cannot be loaded into ``model``; None if it can."""
    if not head:
        return "the file has none"
    own = model.state_dict()
    if set(head) != set(own):
        odd = sorted(set(head) ^ set(own))
        return f"its layers differ from this run's: {', '.join(odd[:3])}"
    for key, value in own.items():
        if head[key].shape != value.shape:
            return f"head.{key} is {tuple(head[key].shape)} there, {tuple(value.shape)} here"
    return None
