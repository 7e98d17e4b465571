import math

import pytest
import torch

from harness.ppo.variance import gradient_stats


def test_gradient_stats_by_hand():
    # two estimates g1 = (1, 0), g2 = (0, 1): mean (0.5, 0.5), ||mean||^2 = 0.5
    # per-coordinate unbiased variance over K=2: ((1-.5)^2 + (0-.5)^2) / 1 = 0.5 -> trace 1.0
    s = gradient_stats(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert s["grad/variance"] == pytest.approx(1.0)
    assert s["grad/rel_variance"] == pytest.approx(2.0)
    assert s["grad/snr"] == pytest.approx(0.5 / (1.0 / 2))
    assert s["grad/cosine"] == pytest.approx(0.0)
    assert s["grad/mean_norm"] == pytest.approx(math.sqrt(0.5))


def test_identical_estimates_have_zero_variance_and_unit_cosine():
    g = torch.tensor([[3.0, -4.0]] * 4)
    s = gradient_stats(g)
    assert s["grad/variance"] == pytest.approx(0.0)
    assert s["grad/cosine"] == pytest.approx(1.0)
    assert s["grad/mean_norm"] == pytest.approx(5.0)


def test_three_estimates_against_numpy_route():
    import numpy as np

    g = torch.tensor([[1.0, 2.0, 0.0], [2.0, 0.0, 1.0], [0.0, 1.0, 3.0]])
    a = g.numpy()
    tr = np.cov(a.T, ddof=1).trace()
    mean = a.mean(0)
    cos = [a[i] @ a[j] / np.linalg.norm(a[i]) / np.linalg.norm(a[j]) for i in range(3) for j in range(3) if i != j]
    s = gradient_stats(g)
    assert s["grad/variance"] == pytest.approx(tr)
    assert s["grad/rel_variance"] == pytest.approx(tr / (mean @ mean))
    assert s["grad/cosine"] == pytest.approx(np.mean(cos))
