"""Label propagation: equal to a naive implementation of the reference's rule, exact on a
mask moved by one patch, the reference's resize and label conventions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dino.config import ConfigError
from dino.eval.video import (
    first_frame_labels,
    frame_size,
    frame_tensor,
    label_map,
    pixel_features,
    propagate_labels,
    propagate_step,
    segment_frames,
    vit_patch_features,
)
from dino.models import build_backbone


def naive_propagation(feats, first_labels, n_last, radius, topk, temperature=0.1):
    """The rule as eval_video_segmentation.py states it, with dense (N, N) affinities and a
    window mask built by four loops: context = frame 0 + the last ``n_last`` frames' soft
    labels; exp(cos / T) zeroed outside the window; over all context patches together, values
    below the top-k-th zeroed; columns normalised; labels averaged."""
    h, w, d = feats[0].shape
    window = torch.zeros(h, w, h, w)
    for i in range(h):
        for j in range(w):
            for p in range(h):
                for q in range(w):
                    if radius == 0 or (abs(p - i) <= radius and abs(q - j) <= radius):
                        window[i, j, p, q] = 1
    window = window.reshape(h * w, h * w)
    queue = []
    first = (feats[0].reshape(h * w, d), first_labels.reshape(first_labels.shape[0], -1))
    out = []
    for f in feats[1:]:
        context = [first] + (queue[-n_last:] if n_last else [])
        target = F.normalize(f.reshape(h * w, d), dim=1)
        affs = []
        for src, _ in context:
            aff = torch.exp(target @ F.normalize(src, dim=1).T / temperature)  # (tar, src)
            affs.append((aff * window).T)  # (src, tar)
        aff = torch.cat(affs)  # (n * N, N)
        kth = aff.topk(topk, dim=0).values.min(dim=0).values
        aff[aff < kth] = 0
        aff = aff / aff.sum(dim=0, keepdim=True)
        segs = torch.cat([lab for _, lab in context], dim=1)  # (C, n * N)
        soft = segs @ aff  # (C, N)
        queue.append((f.reshape(h * w, d), soft))
        out.append(soft.reshape(-1, h, w))
    return out


@pytest.mark.parametrize(
    ("n_last", "radius", "topk"), [(7, 12, 5), (3, 2, 5), (2, 1, 3), (0, 2, 4), (4, 0, 7)]
)
def test_propagation_equals_the_naive_rule(n_last, radius, topk):
    torch.manual_seed(0)
    h, w, d, c = 6, 7, 16, 3
    feats = [torch.randn(h, w, d) for _ in range(9)]
    labels = F.one_hot(torch.randint(0, c, (h, w)), c).permute(2, 0, 1).float()
    ours = list(propagate_labels(feats, labels, n_last, radius, topk))
    theirs = naive_propagation(feats, labels, n_last, radius, topk)
    assert len(ours) == 8
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_tiles_do_not_change_the_result(radius):
    torch.manual_seed(1)
    target = F.normalize(torch.randn(9, 5, 8), dim=-1)
    keys = F.normalize(torch.randn(3, 9, 5, 8), dim=-1)
    values = torch.rand(3, 2, 9, 5)
    whole = propagate_step(target, keys, values, radius, topk=5, tile=9)
    for tile in (1, 2, 4):
        tiled = propagate_step(target, keys, values, radius, topk=5, tile=tile)
        torch.testing.assert_close(whole, tiled)


def test_a_mask_moved_by_one_patch_is_propagated_exactly():
    """Each patch has its own random pixels; every next frame shows the picture moved one
    patch to the right (rolled, so that no unseen patch enters). With the pixels as features,
    identical wherever the picture is, the propagated labels are the moved mask, patch for
    patch, and the segmentation is what the reference's upsampling makes of the true mask."""
    p, gh, gw = 4, 6, 8
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (gh * p, gw * p, 3), dtype=np.uint8)
    grid = torch.zeros(gh, gw, dtype=torch.long)
    grid[1:4, 1:3] = 1
    grid[3:6, 3:6] = 2
    frames = [Image.fromarray(np.roll(picture, s * p, axis=1)) for s in range(5)]
    true_grids = [grid.roll(s, dims=1) for s in range(5)]
    first_mask = np.kron(grid.numpy(), np.ones((p, p), np.int64)).astype(np.uint8)

    feats = [pixel_features(frame_tensor(f, (gh * p, gw * p)), p) for f in frames]
    labels = first_frame_labels(first_mask, (gh, gw))
    for soft, truth in zip(propagate_labels(feats, labels), true_grids[1:], strict=True):
        assert torch.equal(soft.argmax(dim=0), truth)
        assert soft.max(dim=0).values.min() > 0.99  # the patch itself carries the weight

    out = segment_frames(frames, first_mask, lambda x: pixel_features(x, p), p, gh * p)
    for predicted, truth in zip(out, true_grids[1:], strict=True):
        one_hot = F.one_hot(truth, 3).permute(2, 0, 1).float()
        assert np.array_equal(predicted, label_map(one_hot, (gh * p, gw * p), (gh * p, gw * p)))


def test_frames_are_resized_as_the_reference_does():
    assert frame_size(480, 854, 480, 16) == (480, 832)  # DAVIS 480p, long side // 64 * 64
    assert frame_size(854, 480, 480, 8) == (832, 480)
    assert frame_size(500, 500, 480, 16) == (480, 448)  # square counts as landscape
    assert frame_size(96, 128, 96, 8) == (96, 128)
    assert frame_size(30, 40, 24, 8) == (24, 32)  # under 64: a multiple of the patch


def test_first_frame_labels_and_the_label_map():
    mask = np.zeros((8, 8), np.uint8)
    mask[:4, :4] = 2
    mask[6:, 6:] = 255  # void: background
    labels = first_frame_labels(mask, (2, 2))
    assert labels.shape == (3, 2, 2)
    assert labels.argmax(0).tolist() == [[2, 0], [0, 0]]
    soft = torch.tensor([[[0.9, 0.8], [0.7, 0.6]], [[0.1, 0.2], [0.3, 0.4]]])
    seg = label_map(soft, (4, 4), (6, 5))
    assert seg.shape == (6, 5) and seg.dtype == np.uint8 and seg[0, 0] == 0 and seg[-1, -1] == 1
    # A label whose map is constant and positive wins everywhere (the reference's NaN).
    constant = torch.stack((torch.full((2, 2), 0.5), torch.tensor([[1.0, 0.0], [0.0, 0.0]])))
    assert (label_map(constant, (4, 4), (4, 4)) == 0).all()


def test_vit_patch_features():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", patch_size=8, img_size=32, depth=2, embed_dim=48, num_heads=3)
    frame = torch.randn(3, 24, 40)
    feats = vit_patch_features(vit.eval(), frame)
    assert feats.shape == (3, 5, 48) and feats.dtype == torch.float32
    tokens = vit.get_intermediate_layers(frame[None], 1)[0][0, 1:]
    torch.testing.assert_close(feats.reshape(15, 48), tokens)
    with pytest.raises(ConfigError, match="ViT"):
        vit_patch_features(build_backbone("resnet18"), frame)
