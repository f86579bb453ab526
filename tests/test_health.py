"""Feature health (RankMe, mean cosine), the choice of checkpoint_best.pth, the collapse guard."""

import json

import pytest
import torch

from dino.data.folder import image_folder
from dino.data.transforms import eval_transform
from dino.eval.metrics import effective_rank, mean_pairwise_cosine
from dino.models import build_backbone
from dino.recipe import REFERENCE
from dino.training.guard import BEST, BestEpoch, better_epoch, feature_collapse, initial_best
from dino.training.probes import FeatureHealth, HealthProbe
from dino.training.report import Monitor
from dino.training.trainer import train
from test_robustness import tiny_config


def test_identical_rows_have_rank_one_and_cosine_one():
    x = torch.randn(1, 16).repeat(50, 1)
    assert effective_rank(x) == pytest.approx(1.0, abs=1e-4)
    assert mean_pairwise_cosine(x) == pytest.approx(1.0)
    assert FeatureHealth(effective_rank(x), mean_pairwise_cosine(x), 16).collapsed


def test_orthogonal_rows_have_full_rank_and_cosine_zero():
    x = torch.eye(12)
    assert effective_rank(x) == pytest.approx(12.0, rel=1e-4)
    assert mean_pairwise_cosine(x) == pytest.approx(0.0, abs=1e-12)
    # Unequal magnitudes lower the effective rank, as RankMe defines it.
    assert 1.0 < effective_rank(torch.diag(torch.tensor([10.0, 1.0, 1.0]))) < 2.0


def test_mean_cosine_matches_the_pair_loop():
    torch.manual_seed(0)
    x = torch.randn(7, 5)
    pairs = [
        torch.nn.functional.cosine_similarity(x[i], x[j], dim=0).item()
        for i in range(7)
        for j in range(7)
        if i != j
    ]
    assert mean_pairwise_cosine(x) == pytest.approx(sum(pairs) / len(pairs), rel=1e-6)


def healthy(rank=30.0):
    return FeatureHealth(rank=rank, mean_cosine=0.5, dim=192)


COLLAPSED = FeatureHealth(rank=1.1, mean_cosine=0.9995, dim=192)


def test_best_epoch_by_knn_where_a_probe_runs():
    best = initial_best(knn_before=42.0)
    assert best == BestEpoch(-1, "knn_top1", 42.0)
    assert better_epoch(best, 0, healthy(), knn_top1=40.0) is None  # below the untrained
    assert better_epoch(best, 0, healthy(), knn_top1=None) is None  # not measured this epoch
    # Where labels exist the accuracy decides, even for features that look collapsed.
    assert better_epoch(best, 0, COLLAPSED, knn_top1=50.0) == BestEpoch(0, "knn_top1", 50.0)
    assert better_epoch(best, 3, healthy(), knn_top1=55.0) == BestEpoch(3, "knn_top1", 55.0)
    tied = better_epoch(BestEpoch(3, "knn_top1", 55.0), 4, healthy(), knn_top1=55.0)
    assert tied == BestEpoch(4, "knn_top1", 55.0)  # a tie goes to the later epoch


def test_the_last_epoch_is_probed_and_competes_for_the_best(monkeypatch):
    """A run whose probe measures every 2 epochs still measures its last epoch (an odd one
    here), so the final weights compete for checkpoint_best.pth by k-NN like the others:
    before, a 1-epoch run reported 37.6% after training and kept the untrained 30.5%."""
    monkeypatch.setattr("dino.training.report.report_epoch", lambda *args: None)
    measured = []

    class Probe:
        every = 2

        def __call__(self, backbone, device, precision):
            measured.append(len(measured))
            return 50.0

    monitor = Monitor(
        lambda *args: healthy(), Probe(), REFERENCE, 10, 100, torch.device("cpu"), "fp32",
        healthy(), 30.0, 70.0, initial_best(30.0),
    )  # fmt: skip
    stats: dict = {}
    assert monitor.after_epoch(0, torch.nn.Identity(), stats) is False  # not measured
    assert "knn_top1" not in stats and measured == []
    assert monitor.after_epoch(1, torch.nn.Identity(), stats) is True  # every 2nd epoch
    stats = {}
    assert monitor.after_epoch(2, torch.nn.Identity(), stats, last=True) is True
    assert stats["knn_top1"] == 50.0 and monitor.best == BestEpoch(2, "knn_top1", 50.0)


def test_best_epoch_by_rank_without_labels():
    best = initial_best(knn_before=None)
    assert better_epoch(best, 0, COLLAPSED, None) is None
    first = better_epoch(best, 0, healthy(5.0), None)
    assert first == BestEpoch(0, "rank", 5.0)
    assert better_epoch(first, 1, healthy(4.0), None) is None
    assert better_epoch(first, 2, healthy(9.0), None) == BestEpoch(2, "rank", 9.0)
    assert BestEpoch.from_dict(first.to_dict()) == first
    assert BestEpoch.from_dict({"epoch": "x"}) is None and BestEpoch.from_dict(None) is None


def test_collapse_is_said_with_the_flags_to_change():
    message = feature_collapse(COLLAPSED, healthy(4.2), None, None, REFERENCE)
    assert message is not None and message.startswith("feature collapse")
    assert "--centering sinkhorn" in message and "--koleo_weight 0.1" in message
    assert "--lr 0.00025" in message
    dropped = feature_collapse(healthy(), None, knn_top1=10.0, knn_before=42.0, recipe=REFERENCE)
    assert dropped is not None and "below the untrained network's 42.0%" in dropped
    assert (
        feature_collapse(healthy(), None, knn_top1=41.0, knn_before=42.0, recipe=REFERENCE) is None
    )


def test_forced_collapse_is_reported_and_best_checkpoint_keeps_healthy_weights(
    tmp_path, image_folder, capsys
):
    """lr 2 (4000x the reference) drives a tiny ViT with the paper's running center and no
    KoLeo term to one point after its first epoch (measured: rank 2.3 -> 1.7 -> 1.6 of 48,
    mean cosine 0.90 -> 0.97)."""
    out = tmp_path / "run"
    forced = dict(lr=2.0, clip_grad=0.0, centering="center", koleo_weight=0.0)
    summary = train(tiny_config(image_folder, out, epochs=3, **forced))
    err = capsys.readouterr().err
    assert "feature collapse" in err and f"{BEST} keeps epoch 0" in err
    assert "use it for evaluation" in err
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert log[0]["rank"] >= 2.0 and log[-1]["rank"] < 2.0
    assert summary.best == BestEpoch(0, "rank", pytest.approx(log[0]["rank"]))
    best = torch.load(out / BEST, weights_only=True)
    last = torch.load(out / "checkpoint.pth", weights_only=True)
    assert best["epoch"] == 1 and last["epoch"] == 3 and best["best"]["epoch"] == 0
    # The kept weights are the healthy ones: measured again, they are not collapsed.
    images = image_folder_health(image_folder)
    for ckpt, collapsed in ((best, False), (last, True)):
        backbone = build_backbone("vit_tiny", 8, 32, embed_dim=48, depth=2, num_heads=3)
        backbone.load_state_dict(
            {k[len("backbone.") :]: v for k, v in ckpt["teacher"].items() if "backbone." in k}
        )
        assert HealthProbe(images)(backbone, torch.device("cpu"), "fp32").collapsed == collapsed


def image_folder_health(root):
    return image_folder(root, eval_transform(32))
