"""The KL coefficient's controllers, by hand (Ziegler et al. 2019: beta *= 1 + clip(KL/target - 1, +-0.2) n / H)."""

from __future__ import annotations

import pytest

from harness.algos import kl_control


def test_fixed_keeps_beta():
    assert kl_control.fixed(0.05) == 0.05
    assert kl_control.next_coef(0.05, kl=123.0, target=None, n=64, horizon=100) == 0.05


@pytest.mark.parametrize(
    "kl, expected",
    [
        (6.6, 0.1 * (1 + 0.1 * 8 / 16)),  # KL / target - 1 = 0.1: raised by 0.1 * n / H = 5%
        (5.4, 0.1 * (1 - 0.1 * 8 / 16)),  # -0.1: lowered by 5%
        (60.0, 0.1 * (1 + 0.2 * 8 / 16)),  # 9.0, clipped at +0.2
        (0.0, 0.1 * (1 - 0.2 * 8 / 16)),  # -1.0, clipped at -0.2
        (6.0, 0.1),  # on target: unchanged
    ],
)
def test_adaptive_by_hand(kl, expected):
    # target 6 nats, batch n = 8, horizon 16
    assert kl_control.adaptive(0.1, kl, 6.0, 8, 16) == pytest.approx(expected, rel=1e-12)
    assert kl_control.next_coef(0.1, kl, 6.0, 8, 16) == pytest.approx(expected, rel=1e-12)


def test_adaptive_horizon_sets_the_step_and_repeated_updates_compound():
    beta = 1.0
    for _ in range(3):  # KL far above target every time: +0.2 * 32 / 64 = +10% each
        beta = kl_control.adaptive(beta, 100.0, 1.0, 32, 64)
    assert beta == pytest.approx(1.1**3)
    assert kl_control.adaptive(1.0, 100.0, 1.0, 32, 320) == pytest.approx(1.02)
