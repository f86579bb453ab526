import math

import numpy as np
import pytest
import torch

from dino.loss import DINOLoss, dino_cross_entropy, koleo, sinkhorn_knopp, teacher_temp_schedule


def naive_dino_loss(student, teacher, center, student_temp, teacher_temp, n_crops):
    """Direct transcription of the paper's sum over (teacher view, student view) pairs."""
    batch = teacher.shape[0] // 2
    total, pairs = 0.0, 0
    for i in range(2):
        for v in range(n_crops):
            if v == i:
                continue
            pair = 0.0
            for b in range(batch):
                t_logits = (teacher[i * batch + b] - center[0]) / teacher_temp
                p_t = [math.exp(x) for x in t_logits.tolist()]
                z_t = sum(p_t)
                s_logits = (student[v * batch + b] / student_temp).tolist()
                log_z = math.log(sum(math.exp(x) for x in s_logits))
                pair += -sum(pt / z_t * (s - log_z) for pt, s in zip(p_t, s_logits, strict=False))
            total += pair / batch
            pairs += 1
    return total / pairs


@pytest.mark.parametrize("n_crops", [2, 3, 6])
def test_loss_matches_naive_pair_loop(n_crops):
    torch.manual_seed(0)
    batch, k = 3, 7
    student = torch.randn(n_crops * batch, k, dtype=torch.float64)
    teacher = torch.randn(2 * batch, k, dtype=torch.float64)
    center = torch.randn(1, k, dtype=torch.float64) * 0.1
    loss_fn = DINOLoss(k, student_temp=0.1)
    loss_fn.center.copy_(center)
    got = loss_fn(student, teacher, teacher_temp=0.04).total.item()
    want = naive_dino_loss(student, teacher, center, 0.1, 0.04, n_crops)
    assert got == pytest.approx(want, rel=1e-5)


def test_loss_uses_center_before_update_and_updates_by_formula():
    torch.manual_seed(1)
    k = 5
    loss_fn = DINOLoss(k, center_momentum=0.9)
    c0 = torch.randn(1, k)
    loss_fn.center.copy_(c0)
    teacher = torch.randn(4, k)
    student = torch.randn(8, k)
    expected_loss = dino_cross_entropy(student, loss_fn.teacher_probs(teacher, 0.07), 0.1)
    loss = loss_fn(student, teacher, 0.07).total
    assert loss.item() == pytest.approx(expected_loss.item())
    torch.testing.assert_close(loss_fn.center, 0.9 * c0 + 0.1 * teacher.mean(0, keepdim=True))


def test_uniform_outputs_give_ln_k():
    k = 16
    loss = dino_cross_entropy(torch.zeros(8, k), torch.full((4, k), 1 / k), 0.1)
    assert loss.item() == pytest.approx(math.log(k), rel=1e-6)


def test_gradient_flows_to_student_only():
    student = torch.randn(6, 4, requires_grad=True)
    teacher = torch.randn(4, 4, requires_grad=True)
    DINOLoss(4)(student, teacher, 0.04).total.backward()
    assert student.grad is not None and teacher.grad is None


def test_teacher_temperature_schedule():
    sched = teacher_temp_schedule(0.04, 0.07, warmup_epochs=30, epochs=100)
    assert len(sched) == 100
    assert sched[0] == pytest.approx(0.04)
    assert sched[29] == pytest.approx(0.07)
    assert sched[15] == pytest.approx(0.04 + 15 * 0.03 / 29)
    assert np.all(sched[29:] == pytest.approx(0.07))
    assert np.all(teacher_temp_schedule(0.04, 0.04, 0, 10) == 0.04)


def naive_sinkhorn(logits, temp, iterations):
    """Sinkhorn-Knopp as SwAV states it, on a (B, K) matrix of plain Python floats."""
    b, k = len(logits), len(logits[0])
    q = [[math.exp(x / temp) for x in row] for row in logits]  # q[sample][prototype]
    total = sum(map(sum, q))
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        for j in range(k):  # each prototype's mass over the batch -> 1/K
            col = sum(q[i][j] for i in range(b))
            for i in range(b):
                q[i][j] /= col * k
        for i in range(b):  # each sample's mass over the prototypes -> 1/B
            row = sum(q[i])
            q[i] = [x / (row * b) for x in q[i]]
    return [[x * b for x in row] for row in q]


def test_sinkhorn_matches_naive_form_and_balances_prototypes():
    torch.manual_seed(0)
    logits = torch.randn(12, 5, dtype=torch.float64) * 0.3
    got = sinkhorn_knopp(logits, 0.1, iterations=3)
    want = torch.tensor(naive_sinkhorn(logits.tolist(), 0.1, 3), dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(12, dtype=got.dtype))  # distributions
    # After many iterations every prototype carries 1/K of the batch's mass.
    balanced = sinkhorn_knopp(logits, 0.1, iterations=200)
    torch.testing.assert_close(balanced.mean(dim=0), torch.full((5,), 0.2, dtype=got.dtype))


def test_sinkhorn_keeps_images_apart_when_one_prototype_wins():
    """A teacher whose raw outputs all favour prototype 0 (the dominant-dimension collapse)
    still gives the batch distinct, balanced targets."""
    logits = torch.tensor([[1.0, 0.5, 0.4, 0.3], [1.0, 0.3, 0.5, 0.4], [1.0, 0.4, 0.3, 0.5]])
    q = sinkhorn_knopp(logits, 0.04, iterations=3)
    assert q.argmax(dim=1).tolist() != [0, 0, 0]
    assert q.mean(dim=0).max() < 0.5


def test_sinkhorn_is_shift_invariant_and_finite_for_large_logits():
    torch.manual_seed(1)
    logits = torch.randn(8, 6)
    q = sinkhorn_knopp(logits, 0.04)
    torch.testing.assert_close(sinkhorn_knopp(logits + 3.0, 0.04), q, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(sinkhorn_knopp(logits * 100, 0.04)).all()


def naive_koleo(x, eps=1e-8):
    """-mean_i log(min_{j != i} ||x_i - x_j|| + eps) on L2-normalised rows, by loops."""
    rows = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in x.tolist()]
    logs = []
    for i, a in enumerate(rows):
        nearest = min(math.dist(a, b) for j, b in enumerate(rows) if j != i)
        logs.append(math.log(nearest + eps))
    return -sum(logs) / len(logs)


def test_koleo_matches_naive_definition():
    torch.manual_seed(2)
    x = torch.randn(9, 4, dtype=torch.float64)
    assert koleo(x).item() == pytest.approx(naive_koleo(x), rel=1e-5)


def test_koleo_is_large_for_clustered_features_and_pushes_them_apart():
    spread = torch.eye(4)
    clustered = torch.ones(4, 4) + 0.01 * torch.eye(4)
    assert koleo(clustered) > koleo(spread) + 3
    x = clustered.clone().requires_grad_(True)
    koleo(x).backward()
    step = x.detach() - 0.1 * x.grad
    assert koleo(step) < koleo(clustered)


def test_loss_returns_named_terms_and_weighted_total():
    torch.manual_seed(3)
    b, k, d = 4, 8, 6
    student, teacher = torch.randn(4 * b, k), torch.randn(2 * b, k)
    cls = torch.randn(2 * b, d)
    loss_fn = DINOLoss(k, centering="sinkhorn", koleo_weight=0.1)
    out = loss_fn(student, teacher, 0.04, cls)
    assert set(out.terms) == {"dino", "koleo"}
    want_dino = dino_cross_entropy(student, sinkhorn_knopp(teacher, 0.04), 0.1)
    torch.testing.assert_close(out.terms["dino"], want_dino)
    torch.testing.assert_close(out.terms["koleo"], koleo(cls[:b]) + koleo(cls[b:]))
    torch.testing.assert_close(out.total, want_dino + 0.1 * out.terms["koleo"])
    with pytest.raises(ValueError, match="CLS"):
        loss_fn(student, teacher, 0.04)
    assert set(DINOLoss(k)(student, teacher, 0.04).terms) == {"dino"}


def test_koleo_of_a_single_sample_is_zero_with_a_finite_gradient():
    x = torch.randn(1, 4, requires_grad=True)
    value = koleo(x)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all()
