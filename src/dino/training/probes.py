"""What the trainer measures on its networks between epochs: k-NN accuracy where labels
exist, and label-free feature health (RankMe and mean cosine) on every run."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from dino.config import ConfigError
from dino.data.demo import demo_splits
from dino.data.folder import ImageList, labelled_folder
from dino.data.transforms import eval_transform
from dino.eval.features import Features, extract_features
from dino.eval.knn import knn_classify
from dino.eval.metrics import effective_rank, mean_pairwise_cosine
from dino.hardware import autocast_dtype
from dino.training.plan import ProbeSpec

RAW_PIXEL_SIDE = 32  # the raw-pixel k-NN floor compares images pooled to this side
RAW_PIXEL_MAX_BANK = 20_000
HEALTH_SAMPLE = 512  # training images whose features the health probe measures
# Feature collapse: every image at (nearly) one point, or on one line. The digits run that
# fell to chance k-NN had mean cosine 0.9995; a tiny ViT driven to collapse by lr 2 had
# rank 1.7 and cosine 0.97 (loss near 0, one output winning). Untrained ViTs measured:
# rank 4.2 of 192 with cosine 0.936 (sklearn digits), rank 3.5 of 48 with cosine 0.80.
COLLAPSED_COSINE = 0.99
COLLAPSED_RANK = 2.0


@dataclass(frozen=True)
class FeatureHealth:
    """Label-free measures of the teacher's [CLS] features on a fixed sample of images."""

    rank: float  # effective rank (RankMe), 1 .. min(images, dim)
    mean_cosine: float  # over all pairs of images
    dim: int

    @property
    def collapsed(self) -> bool:
        return self.mean_cosine > COLLAPSED_COSINE or self.rank < COLLAPSED_RANK

    def describe(self) -> str:
        return f"effective rank {self.rank:.1f} of {self.dim}, mean cosine {self.mean_cosine:.3f}"


@dataclass
class HealthProbe:
    """Feature health of a backbone on ``images`` (a fixed sample of the training images)."""

    images: Dataset

    def __call__(self, backbone: nn.Module, device: torch.device, precision: str) -> FeatureHealth:
        features = _features(backbone, self.images, device, precision).features
        return FeatureHealth(
            effective_rank(features), mean_pairwise_cosine(features), features.shape[1]
        )


def build_health_probe(images: ImageList, crop_size: int, seed: int = 0) -> HealthProbe:
    """The probe on a fixed random sample of at most HEALTH_SAMPLE of ``images`` (the same
    sample for every epoch, process and resume), each resized and centre-cropped."""
    n = len(images)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(n, generator=generator)[: min(n, HEALTH_SAMPLE)].sort().values
    transform = eval_transform(crop_size, images.channels)
    sample = ImageList(
        [images.images[i] for i in chosen], transform=transform, channels=images.channels
    )
    return HealthProbe(sample)


@dataclass
class KNNProbe:
    """Weighted k-NN accuracy (T = 0.07) of a backbone: labelled bank -> held-out queries."""

    bank: Dataset
    queries: Dataset
    k: int = 20
    every: int = 1  # epochs between measurements; 0: only before / after training

    def __call__(self, backbone: nn.Module, device: torch.device, precision: str) -> float:
        bank = _features(backbone, self.bank, device, precision)
        queries = _features(backbone, self.queries, device, precision)
        return knn_classify(
            bank.features, bank.labels, queries.features, queries.labels, ks=(self.k,)
        )[0].top1

    def raw_pixels(self) -> float | None:
        """The same k-NN on the images' pixels (as the backbone sees them, average-pooled to
        at most 32 x 32, centred by the bank's mean): the floor that features must beat to be
        worth having. None for banks over RAW_PIXEL_MAX_BANK images."""
        if len(self.bank) > RAW_PIXEL_MAX_BANK:  # type: ignore[arg-type]
            return None
        bank = extract_features(nn.Identity(), self.bank, features=_pooled_pixels)
        queries = extract_features(nn.Identity(), self.queries, features=_pooled_pixels)
        mean = bank.features.mean(dim=0)
        return knn_classify(
            bank.features - mean, bank.labels, queries.features - mean, queries.labels, (self.k,)
        )[0].top1


def _features(
    backbone: nn.Module, images: Dataset, device: torch.device, precision: str
) -> Features:
    """[CLS] features of ``images`` in eval mode, the backbone's train/eval mode restored."""
    was_training = backbone.training
    found = extract_features(backbone, images, device, dtype=autocast_dtype(precision))
    backbone.train(was_training)
    return found


def _pooled_pixels(model: nn.Module, images: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 3 * h * w) with h, w at most 32."""
    side = min(images.shape[-1], RAW_PIXEL_SIDE), min(images.shape[-2], RAW_PIXEL_SIDE)
    return F.adaptive_avg_pool2d(images, (side[1], side[0])).flatten(1)


def build_knn_probe(spec: ProbeSpec) -> KNNProbe | None:
    """k-NN on ``val_path`` queries against ``knn_train_path`` (or a labelled ``data_path``);
    else the demo's labelled splits (its labels were kept aside); else None. Under torchrun
    every process runs it: each extracts its share of the features, and all get the result.
    """
    transform, channels = eval_transform(spec.image_size, spec.in_chans), spec.in_chans
    if spec.val_path is not None:
        bank_path = spec.knn_train_path or spec.data_path
        bank_flag = "knn_train_path" if spec.knn_train_path else "data_path"
        if bank_path is None:
            raise ConfigError("val_path: needs knn_train_path or data_path as the k-NN bank")
        try:
            bank = labelled_folder(
                bank_path, transform, channels=channels, follow_links=spec.follow_links
            )
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"{bank_flag}: the k-NN bank needs class subfolders; {e}") from None
        try:
            queries = labelled_folder(
                spec.val_path, transform, bank.classes, channels, spec.follow_links
            )
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"val_path: {e}") from None
        return KNNProbe(bank, queries, every=spec.eval_every or 1)
    if spec.data_path is not None:
        return None
    splits = demo_splits(seed=0)  # the demo
    return KNNProbe(
        ImageList(splits.train, splits.train_labels, transform, channels=channels),
        ImageList(splits.val, splits.val_labels, transform, channels=channels),
        every=spec.eval_every,
    )
