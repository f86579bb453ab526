"""dino: DINO self-distillation with no labels (Caron et al. 2021), on a CPU or a GPU.

The Python API mirrors the command line: build the pieces yourself (backbones, head, loss,
augmentation) or call ``train(TrainConfig(...))``; evaluate with ``load_backbone`` and the
functions of ``dino.eval`` (k-NN, linear probe, retrieval, copy detection, attention maps).
"""

from dino.checkpoint import backbone_state, load_file, load_strict
from dino.config import TrainConfig, build_config
from dino.data.transforms import MultiCropAugmentation, eval_transform
from dino.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DinoError,
    NonFiniteLossError,
)
from dino.eval import (
    KNNResult,
    cls_attention,
    copy_detection_scores,
    extract_features,
    feature_head,
    fit_whitening,
    knn_classify,
    load_backbone,
    rank_database,
    retrieval_scores,
    save_attention_maps,
    train_linear,
)
from dino.loss import DINOLoss, dino_cross_entropy
from dino.models import DINOHead, MultiCropWrapper, VisionTransformer, build_backbone
from dino.training.trainer import train

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DinoError",
    "NonFiniteLossError",
    "DINOHead",
    "DINOLoss",
    "KNNResult",
    "MultiCropAugmentation",
    "MultiCropWrapper",
    "TrainConfig",
    "VisionTransformer",
    "backbone_state",
    "build_backbone",
    "build_config",
    "cls_attention",
    "copy_detection_scores",
    "dino_cross_entropy",
    "eval_transform",
    "extract_features",
    "feature_head",
    "fit_whitening",
    "knn_classify",
    "load_backbone",
    "load_file",
    "load_strict",
    "rank_database",
    "retrieval_scores",
    "save_attention_maps",
    "train",
    "train_linear",
]
