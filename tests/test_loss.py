import math

import numpy as np
import pytest
import torch

from dino.loss import DINOLoss, dino_cross_entropy, teacher_temp_schedule


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
    got = loss_fn(student, teacher, teacher_temp=0.04).item()
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
    loss = loss_fn(student, teacher, 0.07)
    assert loss.item() == pytest.approx(expected_loss.item())
    torch.testing.assert_close(loss_fn.center, 0.9 * c0 + 0.1 * teacher.mean(0, keepdim=True))


def test_uniform_outputs_give_ln_k():
    k = 16
    loss = dino_cross_entropy(torch.zeros(8, k), torch.full((4, k), 1 / k), 0.1)
    assert loss.item() == pytest.approx(math.log(k), rel=1e-6)


def test_gradient_flows_to_student_only():
    student = torch.randn(6, 4, requires_grad=True)
    teacher = torch.randn(4, 4, requires_grad=True)
    DINOLoss(4)(student, teacher, 0.04).backward()
    assert student.grad is not None and teacher.grad is None


def test_teacher_temperature_schedule():
    sched = teacher_temp_schedule(0.04, 0.07, warmup_epochs=30, epochs=100)
    assert len(sched) == 100
    assert sched[0] == pytest.approx(0.04)
    assert sched[29] == pytest.approx(0.07)
    assert sched[15] == pytest.approx(0.04 + 15 * 0.03 / 29)
    assert np.all(sched[29:] == pytest.approx(0.07))
    assert np.all(teacher_temp_schedule(0.04, 0.04, 0, 10) == 0.04)
