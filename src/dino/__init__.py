"""dino: DINO self-distillation with no labels (Caron et al. 2021), on a CPU or a GPU.

The Python API mirrors the command line: build the pieces yourself (backbones, head, loss,
augmentation) or call ``train(TrainConfig(...))``; evaluate with ``load_backbone`` and the
functions of ``dino.eval`` (k-NN, linear probe, retrieval, copy detection, attention maps,
video segmentation and attention videos).
Names are imported on first use, so that ``import dino`` (and ``dino --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_HOMES = {
    "backbone_state": "dino.checkpoint",
    "load_file": "dino.checkpoint",
    "load_strict": "dino.checkpoint",
    "TrainConfig": "dino.config",
    "build_config": "dino.config",
    "MultiCropAugmentation": "dino.data.transforms",
    "eval_transform": "dino.data.transforms",
    "CheckpointError": "dino.errors",
    "ConfigError": "dino.errors",
    "DataError": "dino.errors",
    "DinoError": "dino.errors",
    "NonFiniteLossError": "dino.errors",
    "KNNResult": "dino.eval",
    "attention_video": "dino.eval",
    "cls_attention": "dino.eval",
    "copy_detection_scores": "dino.eval",
    "davis_j_and_f": "dino.eval",
    "extract_features": "dino.eval",
    "feature_head": "dino.eval",
    "fit_whitening": "dino.eval",
    "knn_classify": "dino.eval",
    "load_backbone": "dino.eval",
    "propagate_labels": "dino.eval",
    "rank_database": "dino.eval",
    "retrieval_scores": "dino.eval",
    "save_attention_maps": "dino.eval",
    "train_linear": "dino.eval",
    "DINOLoss": "dino.loss",
    "dino_cross_entropy": "dino.loss",
    "DINOHead": "dino.models",
    "MultiCropWrapper": "dino.models",
    "VisionTransformer": "dino.models",
    "build_backbone": "dino.models",
    "train": "dino.training.trainer",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'dino' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return __all__
