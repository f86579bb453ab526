import math

import pytest

from dino.schedules import cosine_schedule, scaled_lr


def test_warmup_then_cosine_closed_form():
    base, final, epochs, ipe, warm = 1.0, 0.1, 10, 5, 2
    s = cosine_schedule(base, final, epochs, ipe, warmup_epochs=warm)
    assert len(s) == epochs * ipe
    assert s[0] == 0.0
    assert s[4] == pytest.approx(base * 4 / 9)  # linspace(0, base, 10)
    assert s[9] == pytest.approx(base)
    t_total = (epochs - warm) * ipe
    for it in (10, 17, 30, 49):
        t = it - warm * ipe
        want = final + 0.5 * (base - final) * (1 + math.cos(math.pi * t / t_total))
        assert s[it] == pytest.approx(want)


def test_momentum_and_weight_decay_schedules_rise():
    m = cosine_schedule(0.996, 1.0, 100, 10)
    assert m[0] == pytest.approx(0.996)
    assert m[-1] == pytest.approx(1.0, abs=1e-6)
    assert all(a <= b for a, b in zip(m[:-1], m[1:], strict=False))
    wd = cosine_schedule(0.04, 0.4, 100, 10)
    assert wd[0] == pytest.approx(0.04) and wd[500] == pytest.approx(0.22)


def test_linear_scaling_rule():
    assert scaled_lr(0.0005, 1024) == pytest.approx(0.002)
    assert scaled_lr(0.0005, 64) == pytest.approx(0.000125)
