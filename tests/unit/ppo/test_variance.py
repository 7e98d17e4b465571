"""The gradient-noise probe: unbiased signal and noise on synthetic gradients, and on the real loop."""

import math

import numpy as np
import pytest
import torch

from harness.config import ConfigError, build_config
from harness.lm.rollout import make_score_fn
from harness.ppo.loop import init_state, ppo_iteration
from harness.ppo.variance import KEYS, gradient_stats
from harness.warmstart.load import load_models
from tests.conftest import TINY


def test_gradient_stats_by_hand():
    # two estimates g1 = (1, 0), g2 = (0, 1), each the mean of b = 3 samples:
    # mean (0.5, 0.5), ||mean||^2 = 0.5; unbiased per-coordinate variance over K = 2 is 0.5 -> trace 1.0
    # signal = 0.5 - 1.0 / 2 = 0: unresolved, so the ratios are NaN (never clamped into a number)
    s = gradient_stats(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), microbatch_size=3)
    assert s["grad/variance"] == pytest.approx(1.0)
    assert s["grad/signal"] == pytest.approx(0.0)
    assert math.isnan(s["grad/rel_variance"]) and math.isnan(s["grad/noise_scale"])
    assert s["grad/sample_variance"] == pytest.approx(3.0)  # b * tr(Cov_mb)
    assert s["grad/batch_variance"] == pytest.approx(3.0 / 6)  # tr(Sigma) / (K b)
    assert s["grad/cosine"] == pytest.approx(0.0)
    assert s["grad/mean_norm"] == pytest.approx(math.sqrt(0.5))
    assert set(s) == set(KEYS)


def test_three_estimates_against_numpy_route():
    g = torch.tensor([[3.0, 2.0, 0.0], [2.0, 1.0, 1.0], [4.0, 1.0, 2.0]])
    a = g.numpy().astype(float)
    tr = np.cov(a.T, ddof=1).trace()
    mean = a.mean(0)
    signal = mean @ mean - tr / 3
    cos = [a[i] @ a[j] / np.linalg.norm(a[i]) / np.linalg.norm(a[j]) for i in range(3) for j in range(3) if i != j]
    s = gradient_stats(g, microbatch_size=4)
    assert s["grad/variance"] == pytest.approx(tr)
    assert s["grad/signal"] == pytest.approx(signal)
    assert s["grad/rel_variance"] == pytest.approx(tr / signal)
    assert s["grad/noise_scale"] == pytest.approx(4 * tr / signal)
    assert s["grad/cosine"] == pytest.approx(np.mean(cos))


def _draws(mu: np.ndarray, sigma_diag: np.ndarray, K: int, b: int, n: int, seed: int) -> torch.Tensor:
    """n probes of K microbatch gradients, each the mean of b per-sample gradients ~ N(mu, diag(sigma))."""
    rng = np.random.default_rng(seed)
    per_sample = rng.normal(mu, np.sqrt(sigma_diag), size=(n, K, b, mu.size))
    return torch.from_numpy(per_sample.mean(2))  # (n, K, D)


def test_signal_and_noise_are_unbiased_where_the_naive_ratio_reads_K():
    # |G|^2 = 1 and tr(Sigma) = 180 per sample: the true relative variance of a b-sample
    # microbatch estimator is tr(Sigma) / (b |G|^2) = 180 / 4 = 45; B_simple = 180.
    D, K, b = 60, 4, 4
    mu = np.full(D, 1 / math.sqrt(D))  # ||mu||^2 = 1
    sigma = np.full(D, 180.0 / D)  # tr(Sigma) = 180
    grads = _draws(mu, sigma, K, b, n=4000, seed=0)
    stats = [gradient_stats(g, b) for g in grads]
    mean = {k: float(np.mean([s[k] for s in stats])) for k in ("grad/signal", "grad/sample_variance", "grad/variance")}
    assert mean["grad/signal"] == pytest.approx(1.0, rel=0.05)
    assert mean["grad/sample_variance"] == pytest.approx(180.0, rel=0.03)
    assert mean["grad/variance"] == pytest.approx(45.0, rel=0.03)
    # B_simple as a ratio of means (how the reports read it) recovers 180
    assert mean["grad/sample_variance"] / mean["grad/signal"] == pytest.approx(180.0, rel=0.06)
    # the old estimator tr(Cov) / ||g_bar||^2 reads about K (3.9) instead of 45
    naive = np.mean([float(g.double().var(0).sum() / g.double().mean(0).pow(2).sum()) for g in grads])
    assert 3.0 < naive < 4.0


def test_the_batch_variance_falls_like_one_over_B():
    # the old ratio saw a true 8x drop from batch 16 to 128 as 1.17x; the batch variance sees 8x
    D, K = 40, 4
    mu = np.full(D, 0.1)
    sigma = np.full(D, 2.0)
    means = {}
    for B in (16, 128):
        grads = _draws(mu, sigma, K, B // K, n=1500, seed=B)
        means[B] = np.mean([gradient_stats(g, B // K)["grad/batch_variance"] for g in grads])
    assert means[16] / means[128] == pytest.approx(8.0, rel=0.08)


def test_unresolved_signal_is_logged_as_it_is():
    g = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.5, 0.5], [-0.5, -0.5]])  # mean 0: signal < 0
    s = gradient_stats(g, 2)
    assert s["grad/signal"] < 0
    assert math.isnan(s["grad/noise_scale"]) and math.isnan(s["grad/rel_variance"])


def test_gradient_stats_refuses_one_estimate():
    with pytest.raises(ValueError, match="K >= 2"):
        gradient_stats(torch.ones(1, 3), 2)


def test_probe_microbatches_must_divide_the_batch():
    with pytest.raises(ConfigError, match="probe.microbatches.*does not divide"):
        build_config(None, {"rollout.batch_size": 12, "rollout.group_size": 2, "probe.every": 1, "probe.microbatches": 8})
    # K = B (per-completion gradients) is allowed
    assert build_config(None, {**TINY, "probe.every": 1, "probe.microbatches": 8}).probe.microbatches == 8


def _history(overrides: dict, iterations: int = 3):
    cfg = build_config(None, {**TINY, **overrides})
    m = load_models(cfg)
    st = init_state(cfg, m)
    score = make_score_fn(m.reward, m.task.gold)
    return [ppo_iteration(cfg, m, st, score) for _ in range(iterations)], m


def test_the_probe_leaves_the_training_trajectory_unchanged():
    off, m_off = _history({"seed": 5})
    on, m_on = _history({"seed": 5, "probe.every": 1, "probe.microbatches": 4})
    learn = lambda h: [{k: v for k, v in d.items() if not k.startswith("perf/") and k not in KEYS} for d in h]  # noqa: E731
    assert learn(on) == learn(off)
    for a, b in zip(m_on.policy.parameters(), m_off.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(set(KEYS) <= set(d) for d in on)
    assert not any(k in d for d in off for k in KEYS)


def test_the_probe_reads_per_completion_gradients_when_K_is_the_batch():
    hist, _ = _history({"probe.every": 2, "probe.microbatches": 8}, iterations=3)
    assert set(KEYS) <= set(hist[0]) and set(KEYS) <= set(hist[2]) and not set(KEYS) & set(hist[1])
    s = hist[0]
    assert s["grad/variance"] > 0
    # b = 1: the per-sample noise is the microbatch covariance itself; batch variance = tr / B
    assert s["grad/sample_variance"] == pytest.approx(s["grad/variance"])
    assert s["grad/batch_variance"] == pytest.approx(s["grad/variance"] / 8)



def test_per_completion_noise_does_not_grow_with_the_microbatch():
    """tr(Sigma) = b tr(Cov_mb) is the per-completion noise for every aggregation: its mean over random
    splits into K = 2 parts (b = 4) matches the K = 8 reading (b = 1, exact for any split). For a
    random partition E[b tr(Cov_mb)] is the rows' sample variance whatever K (the randomisation ANOVA
    identity), so only the splits' noise separates them; a sum over rows would read ~b = 4x larger."""
    from harness.ppo.loop import _rollout, _sequence_advantages
    from harness.ppo.math import AGGREGATIONS, sequence_return
    from harness.ppo.variance import probe_gradient_variance

    cfg = build_config(None, {**TINY, "advantage.level": "sequence", "advantage.baseline": "none", "seed": 3})
    m = load_models(cfg)
    ro, _ = _rollout(cfg, m, init_state(cfg, m), make_score_fn(m.reward, m.task.gold), None)
    kl = ro.mask * 0.0  # (B, T) no KL: the return is the score
    batch, _ = _sequence_advantages(cfg, ro, sequence_return(ro.scores, kl, 0.0), kl, 0.0)
    m.policy.train()
    assert ro.size == 8 and float(batch.adv.abs().sum()) > 0

    def read(agg: str, k: int, seed: int) -> float:
        g = torch.Generator().manual_seed(seed)
        return probe_gradient_variance(m.policy, batch.ro, batch.adv, 0.2, agg, 1.0, k, g,
                                       mask=batch.loss_mask)["grad/sample_variance"]

    ratios = {}
    for agg in AGGREGATIONS.names():
        exact = read(agg, 8, 0)
        assert exact > 0 and read(agg, 8, 1) == pytest.approx(exact, rel=1e-9)  # b = 1: any split
        ratios[agg] = np.mean([read(agg, 2, s) for s in range(16)]) / exact
    assert all(0.5 < r < 1.6 for r in ratios.values()), ratios


def test_throughput_and_update_time_leave_the_probe_out(monkeypatch):
    """perf/tokens_per_s and perf/update_s time training only: a probe made 5 s slower moves neither by 5 s
    (the tiny model's whole iteration takes well under that)."""
    import time

    import harness.ppo.loop as loop

    real = loop._probe

    def slow(*args, **kwargs):
        time.sleep(5.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_probe", slow)
    hist, _ = _history({"probe.every": 1, "probe.microbatches": 4}, iterations=1)
    m = hist[0]
    assert set(KEYS) <= set(m)
    tokens = m["response/length"] * 8  # batch of 8
    assert tokens / m["perf/tokens_per_s"] < 5.0 and m["perf/update_s"] < 5.0
    assert tokens / m["perf/tokens_per_s"] >= m["perf/rollout_s"]  # the rollout is still timed
