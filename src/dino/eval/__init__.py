"""Evaluation protocols on frozen features, sharing one feature-extraction path and one
metrics module: k-NN, linear probe, retrieval, copy detection, attention maps, video
segmentation by label propagation (DAVIS J&F) and attention videos.
"""

from dino.eval.attention import (
    attention_input,
    attention_overlays,
    cls_attention,
    mass_masks,
    save_attention_maps,
)
from dino.eval.attention_video import AttentionVideo, attention_video
from dino.eval.copydetect import (
    Whitening,
    copy_detection_scores,
    fit_whitening,
    near_duplicate_pairs,
    read_copy_layout,
)
from dino.eval.davis import DavisScores, ObjectScores, davis_j_and_f, score_folder
from dino.eval.embed import read_embeddings, write_embeddings
from dino.eval.features import (
    FEATURE_HEADS,
    extract_features,
    feature_head,
    gem,
    multiscale,
)
from dino.eval.knn import KNNResult, knn_classify, knn_predict_scores
from dino.eval.linear import LinearClassifier, LinearResult, evaluate_linear, train_linear
from dino.eval.load import BackboneSpec, backbone_spec, load_backbone, native_image_size
from dino.eval.metrics import (
    Relevance,
    RetrievalScores,
    average_precision,
    precision_at_k,
    relevance,
    retrieval_scores,
    revisited_relevance,
    topk_accuracy,
)
from dino.eval.retrieval import (
    NameIndex,
    RevisitedGroundTruth,
    rank_database,
    read_ground_truth,
    read_revisited,
    revisited_images,
)
from dino.eval.search import INDEXES, nearest_neighbours, search
from dino.eval.video import propagate_labels, segment_frames, vit_features

__all__ = [
    "FEATURE_HEADS",
    "INDEXES",
    "AttentionVideo",
    "BackboneSpec",
    "DavisScores",
    "KNNResult",
    "LinearClassifier",
    "LinearResult",
    "NameIndex",
    "ObjectScores",
    "Relevance",
    "RetrievalScores",
    "RevisitedGroundTruth",
    "Whitening",
    "attention_input",
    "attention_overlays",
    "attention_video",
    "average_precision",
    "backbone_spec",
    "cls_attention",
    "copy_detection_scores",
    "davis_j_and_f",
    "evaluate_linear",
    "extract_features",
    "feature_head",
    "fit_whitening",
    "gem",
    "knn_classify",
    "knn_predict_scores",
    "load_backbone",
    "mass_masks",
    "multiscale",
    "native_image_size",
    "near_duplicate_pairs",
    "nearest_neighbours",
    "precision_at_k",
    "propagate_labels",
    "rank_database",
    "read_copy_layout",
    "read_embeddings",
    "read_ground_truth",
    "read_revisited",
    "relevance",
    "retrieval_scores",
    "revisited_images",
    "revisited_relevance",
    "save_attention_maps",
    "score_folder",
    "search",
    "segment_frames",
    "topk_accuracy",
    "train_linear",
    "vit_features",
    "write_embeddings",
]
