"""The properties the KL-estimator, aggregation and ratio-level registries state are true of their functions
(computed here by an independent route), math dispatches through the entries, and the TRL baselines refuse
exactly the values whose entries have no TRL name."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import baselines.trl_grpo as trl_grpo
import baselines.trl_ppo as trl_ppo
from harness.config import ConfigError, build_config
from harness.ppo import math as M
from harness.ppo.aggregations import AGGREGATIONS
from harness.ppo.kl_estimators import KL_ESTIMATORS
from harness.ppo.ratio_levels import RATIO_LEVELS

P = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)  # pi over four tokens
Q = torch.tensor([0.25, 0.25, 0.4, 0.1], dtype=torch.float64)  # pi_ref


@pytest.mark.parametrize("name", KL_ESTIMATORS.names())
def test_each_kl_estimator_is_what_its_entry_says(name):
    """unbiased: E_{x~pi}[k(x)] = KL(pi || ref) exactly over a categorical; non_negative: no token < 0 on random
    log-ratios; straight_through / value_of: the value of value_of, the gradient of k2; loss_gradient None:
    the expected gradient of the loss term is 0 (k1's score-function identity)."""
    props = KL_ESTIMATORS[name].props
    true_kl = float((P * (P / Q).log()).sum())
    mean = float((P * M.kl_penalty(P.log(), Q.log(), name)).sum())
    assert (abs(mean - true_kl) < 1e-12) is props["unbiased"], (name, mean, true_kl)
    lr = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)
    assert bool((M.kl_penalty(lr, torch.zeros_like(lr), name) >= 0).all()) is props["non_negative"]
    logits = P.log().clone().requires_grad_(True)
    logp = torch.log_softmax(logits, -1)
    est = M.kl_penalty(logp, Q.log(), name)
    assert_close(est.detach(), M.kl_penalty(P.log(), Q.log(), props["value_of"]))
    (grad,) = torch.autograd.grad((P * est).sum(), logits)  # E_{x~pi, fixed}[grad k(x)]
    if props["straight_through"]:
        logits2 = P.log().clone().requires_grad_(True)
        (g2,) = torch.autograd.grad((P * M.kl_penalty(torch.log_softmax(logits2, -1), Q.log(), "k2")).sum(), logits2)
        assert_close(grad, g2)
    assert (float(grad.abs().max()) < 1e-12) is (props["loss_gradient"] is None), (name, grad)


ROWS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
BY_HAND = {"token-mean": 21 / 6, "seq-mean-token-mean": (10 / 4 + 11 / 2) / 2, "seq-mean-token-sum": 21 / 2,
           "token-sum": 21.0, "seq-mean-token-sum-norm": 21 / (2 * 4)}


@pytest.mark.parametrize("name", AGGREGATIONS.names())
def test_each_aggregation_is_what_its_entry_says(name):
    """The value by hand; length_biased: a row's tokens weigh 1 / its own length (doubling a row's length with
    the same per-token loss leaves its term unchanged); reads_norm_length: norm_length changes the value."""
    props = AGGREGATIONS[name].props
    assert float(M.aggregate(ROWS, MASK, name)) == pytest.approx(BY_HAND[name])
    ones = torch.ones(2, 4)
    short = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    longer = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    same = float(M.aggregate(ones, short, name)) == pytest.approx(float(M.aggregate(ones, longer, name)))
    assert same is props["length_biased"] or name == "token-mean", name  # token-mean: mean 1 either way
    moved = float(M.aggregate(ROWS, MASK, name, 8)) != float(M.aggregate(ROWS, MASK, name))
    assert moved is props["reads_norm_length"]
    assert M.AGGREGATIONS[name].fn is AGGREGATIONS[name].fn


@pytest.mark.parametrize("name", RATIO_LEVELS.names())
def test_each_ratio_level_is_what_its_entry_says(name):
    """per_sequence: one value on every real token of a completion; max_clip: a clip range above it is refused,
    one at it accepted."""
    props = RATIO_LEVELS[name].props
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.2, -9.0]])
    old = torch.tensor([[-1.2, -1.5, -0.5], [-0.3, -0.4, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    r = M.importance_ratio(lp, old, mask, name)
    row0 = r[0]
    assert bool(torch.allclose(row0, row0[0].expand_as(row0))) is props["per_sequence"]
    cap = props["max_clip"]
    if cap is None:
        build_config(None, {"ppo.ratio_level": name, "ppo.clip_eps": 0.3})
    else:
        build_config(None, {"ppo.ratio_level": name, "ppo.clip_eps": cap})
        with pytest.raises(ConfigError) as e:
            build_config(None, {"ppo.ratio_level": name, "ppo.clip_eps": cap * 2})
        assert e.value.key == "ppo.clip_eps"


def test_the_trl_baselines_refuse_exactly_the_values_without_a_trl_name(tmp_path):
    """trl (PPOTrainer) offers the estimators whose entry names TRL's kl_estimator; trl-grpo the ratio levels whose
    entry names TRL's importance_sampling_level and the aggregations whose entry names a loss_type."""
    for name, e in KL_ESTIMATORS.items():
        cfg = build_config(None, {"kl.estimator": name, **({"kl.placement": "loss"} if name.endswith("+") else {})})
        refused = trl_ppo.REFUSED["kl.estimator"][0](cfg)
        assert refused is (e.trl is None), name
    grpo = {"advantage.level": "sequence", "advantage.baseline": "group_norm", "advantage.whiten": False,
            "kl.placement": "loss", "kl.estimator": "k3", "loss.agg": "seq-mean-token-mean"}
    for name, e in RATIO_LEVELS.items():
        clip = {"ppo.clip_eps": e.props["max_clip"]} if e.props["max_clip"] else {}
        cfg = build_config(None, {**grpo, "ppo.ratio_level": name, **clip})
        assert trl_grpo.REFUSED["ppo.ratio_level"][0](cfg) is (e.trl is None), name
        if e.trl:
            args = trl_grpo.trl_args(cfg, cfg.task.response_length, str(tmp_path))
            assert args.importance_sampling_level == name
    for name, e in AGGREGATIONS.items():
        cfg = build_config(None, {**grpo, "loss.agg": name})
        assert trl_grpo.REFUSED["loss.agg"][0](cfg) is (e.trl is None), name
