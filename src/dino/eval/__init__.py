"""Evaluation protocols on frozen features, sharing one feature-extraction path."""

from dino.eval.features import extract_features
from dino.eval.knn import KNNResult, knn_classify, knn_predict_scores

__all__ = ["KNNResult", "extract_features", "knn_classify", "knn_predict_scores"]
