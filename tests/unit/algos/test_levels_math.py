"""The ratio-level, clip and aggregation functions of harness/algos/math.py, by hand on small tensors: the sequence (GSPO) and
GSPO-token ratios, asymmetric and dual clip with their statistics, the token-sum and
seq-mean-token-sum-norm aggregations on ragged masks, the straight-through KL estimators and the
REINFORCE++ baselines."""

from __future__ import annotations

import math

import pytest
import torch

from harness.algos import estimators as E
from harness.algos import math as M


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def assert_close(a, b, **kw):
    torch.testing.assert_close(a, b if isinstance(b, torch.Tensor) else t(b), **kw)


def prefix_mask(lengths, T):
    return t([[1.0] * n + [0.0] * (T - n) for n in lengths])


# --------------------------------------------------------------------------- importance ratios


def _ratio_case():
    # row 0: log-ratios 0.2, -0.4 then padding (garbage logprob); row 1: 0.3 alone; row 2: empty
    old = t([[-1.0, -2.0, -1.0], [-0.5, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    logp = old + t([[0.2, -0.4, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0]])
    logp[0, 2] = 1e4
    logp[1, 1:] = float("inf")
    mask = t([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    return logp.requires_grad_(), old, mask


def test_token_ratio_is_exp_log_ratio_and_one_on_padding():
    logp, old, mask = _ratio_case()
    r = M.importance_ratio(logp, old, mask, "token")
    assert_close(r, t([[math.exp(0.2), math.exp(-0.4), 1.0], [math.exp(0.3), 1.0, 1.0], [1.0, 1.0, 1.0]]))


def test_sequence_ratio_is_the_geometric_mean_broadcast_with_its_gradient_through_the_mean():
    logp, old, mask = _ratio_case()
    s = M.importance_ratio(logp, old, mask, "sequence")
    s0, s1 = math.exp((0.2 - 0.4) / 2), math.exp(0.3)
    assert_close(s, t([[s0] * 3, [s1] * 3, [1.0] * 3]))  # an empty row: s = 1
    s[:, 0].sum().backward()  # d s_i / d logp_it = s_i / n_i on real tokens, 0 elsewhere
    assert torch.isfinite(logp.grad).all()
    assert_close(logp.grad, t([[s0 / 2, s0 / 2, 0.0], [s1, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_gspo_token_ratio_has_the_sequence_value_and_a_per_token_gradient():
    logp, old, mask = _ratio_case()
    st = M.importance_ratio(logp, old, mask, "sequence-token")
    s = M.importance_ratio(logp.detach(), old, mask, "sequence")
    assert_close(st, s)  # value: s_i on every token (padding included)
    w = t([[1.0, 3.0, 5.0], [2.0, 7.0, 7.0], [1.0, 1.0, 1.0]])
    (st * w * mask).sum().backward()
    s0, s1 = math.exp(-0.1), math.exp(0.3)
    # d/dlogp_it sum_t w_t s_it = w_t s_i: token t's own gradient only (GSPO would give s_i/n_i sum_t w_t)
    assert_close(logp.grad, t([[1.0 * s0, 3.0 * s0, 0.0], [2.0 * s1, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_unknown_ratio_level_is_refused():
    logp, old, mask = _ratio_case()
    with pytest.raises(ValueError, match="ratio level"):
        M.importance_ratio(logp, old, mask, "segment")


def test_gspo_and_gspo_token_losses_agree_in_value_and_with_per_sequence_advantages_in_gradient():
    # two rows, ratios inside the clip range: the gradients agree for A (B, 1), differ for A (B, T)
    old = t([[-1.0, -2.0, -1.5], [-0.5, -1.0, -1.0]])
    logp0 = old + t([[0.001, -0.002, 0.0], [0.0005, 0.0, 0.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    for adv, agree in ((t([[1.0], [-2.0]]), True), (t([[1.0, -1.0, 3.0], [-2.0, 0.0, 0.0]]), False)):
        out = {}
        for level in ("sequence", "sequence-token"):
            logp = logp0.clone().requires_grad_()
            loss, stats = M.policy_loss(logp, old, adv, mask, 0.01, "token-mean", ratio_level=level)
            loss.backward()
            out[level] = (loss.detach(), logp.grad)
        assert_close(out["sequence"][0], out["sequence-token"][0])
        same = torch.allclose(out["sequence"][1], out["sequence-token"][1])
        assert same is agree
    # by hand, A per token, GSPO-token: d/dlogp_it = -A_it s_i / N (N = 4 tokens)
    s = torch.exp(((logp0 - old) * mask).sum(1) / mask.sum(1))
    assert_close(out["sequence-token"][1], -adv * s[:, None] * mask / 4)
    # GSPO: each token of row i gets -(s_i / n_i) sum_t A_it / N
    assert_close(out["sequence"][1], -(s * (adv * mask).sum(1) / mask.sum(1))[:, None] * mask / 4)


# --------------------------------------------------------------------------- asymmetric and dual clip


def _clip_case():
    # tokens: (A, r) = (+1, 1.25) (+1, 1.35) (+1, 0.85) (-1, 1.25) (-1, 0.7) (-1, 4.0) (-2, 5.0) (+1, 4.0), padding
    r = t([[1.25, 1.35, 0.85, 1.25, 0.7, 4.0, 5.0, 4.0, 1.0]])
    adv = t([[1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -2.0, 1.0, 9.0]])
    mask = t([[1, 1, 1, 1, 1, 1, 1, 1, 0]])
    old = torch.linspace(-3.0, -0.5, 9, dtype=torch.float64)[None]
    logp = (old + r.log()).clone()
    logp[0, 8] = 1e4
    return logp.requires_grad_(), old, adv, mask


def test_clip_higher_by_hand():
    logp, old, adv, mask = _clip_case()
    loss, st = M.policy_loss(logp, old, adv, mask, 0.2, "token-sum", clip_eps_high=0.28)
    # max(-A r, -A clip(r, 0.8, 1.28)):
    #   +1 1.25 -> -1.25 (inside: clip-higher lets it through)   +1 1.35 -> -1.28 (upper clip)
    #   +1 0.85 -> -0.85   -1 1.25 -> 1.25   -1 0.7 -> 0.8 (lower clip)   -1 4.0 -> 4.0   -2 5.0 -> 10.0
    #   +1 4.0 -> -1.28 (upper clip)
    per = [-1.25, -1.28, -0.85, 1.25, 0.8, 4.0, 10.0, -1.28]
    assert_close(loss, sum(per))
    loss.backward()
    r = [1.25, 1.35, 0.85, 1.25, 0.7, 4.0, 5.0, 4.0]
    a = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -2.0, 1.0]
    clipped = [False, True, False, False, True, False, False, True]
    assert_close(logp.grad, t([[0.0 if c else -ai * ri for ai, ri, c in zip(a, r, clipped, strict=True)] + [0.0]]))
    assert_close(st["clipfrac_low"], 1 / 8)  # (-1, 0.7)
    assert_close(st["clipfrac_high"], 2 / 8)  # (+1, 1.35), (+1, 4.0)
    assert_close(st["clipfrac"], 3 / 8)
    _, sym = M.policy_loss(logp.detach(), old, adv, mask, 0.2, "token-sum")
    assert_close(sym["clipfrac_high"], 3 / 8)  # symmetric: (+1, 1.25) clipped at 1.2 too
    assert "dualclip_frac" not in sym


def test_dual_clip_by_hand():
    logp, old, adv, mask = _clip_case()
    loss, st = M.policy_loss(logp, old, adv, mask, 0.2, "token-sum", dual_clip=3.0)
    # for A < 0: min(max(-A r, -A clip(r)), -3 A): (-1, 4.0) -> 3.0, (-2, 5.0) -> 6.0; A > 0 unchanged
    per = [-1.2, -1.2, -0.85, 1.25, 0.8, 3.0, 6.0, -1.2]
    assert_close(loss, sum(per))
    loss.backward()
    g = logp.grad[0]
    assert g[5] == 0 and g[6] == 0  # the bound is a constant: no gradient
    assert_close(g[3], t(1.25))  # -A r with A = -1: d/dlogp = r
    assert_close(st["dualclip_frac"], 2 / 8)  # a share of all masked tokens (veRL pg_clipfrac_lower)
    assert_close(st["clipfrac_low"] + st["clipfrac_high"], st["clipfrac"])
    with pytest.raises(ValueError, match="dual_clip"):
        M.policy_loss(logp.detach(), old, adv, mask, 0.2, "token-sum", dual_clip=1.0)


def test_low_plus_high_is_the_clip_fraction_on_random_tensors():
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(4, 7, generator=g, dtype=torch.float64)
    logp = old + 0.5 * torch.randn(4, 7, generator=g, dtype=torch.float64)
    adv = torch.randn(4, 7, generator=g, dtype=torch.float64)
    mask = prefix_mask([7, 3, 5, 1], 7)
    for kw in ({}, {"clip_eps_high": 0.3}, {"dual_clip": 2.0}, {"ratio_level": "sequence"}):
        _, st = M.policy_loss(logp, old, adv, mask, 0.1, "token-mean", **kw)
        assert_close(st["clipfrac_low"] + st["clipfrac_high"], st["clipfrac"])
        assert st["clipfrac"] > 0
        if not kw:  # both bounds active somewhere: the identity is not 0 = 0 + 0
            assert st["clipfrac_low"] > 0 and st["clipfrac_high"] > 0


def test_defaults_are_bit_identical_to_the_explicit_symmetric_token_options():
    g = torch.Generator().manual_seed(5)
    old = -torch.rand(3, 6, generator=g)
    logp = (old + 0.3 * torch.randn(3, 6, generator=g)).requires_grad_()
    adv, mask = torch.randn(3, 6, generator=g), prefix_mask([6, 2, 4], 6).float()
    a, sa = M.policy_loss(logp, old, adv, mask, 0.2, "token-mean")
    (ga,) = torch.autograd.grad(a, logp)
    b, sb = M.policy_loss(logp, old, adv, mask, 0.2, "token-mean", ratio_level="token", clip_eps_high=0.2)
    (gb,) = torch.autograd.grad(b, logp)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- aggregation on ragged masks


RAGGED = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
RAGGED_MASK = t([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # lengths 2, 1, 0


@pytest.mark.parametrize(
    "agg, norm_length, expected",
    [
        ("token-mean", None, (1 + 2 + 4) / 3),
        ("seq-mean-token-mean", None, ((1 + 2) / 2 + 4 + 0) / 3),  # the empty row counts, as 0
        ("seq-mean-token-sum", None, (3 + 4 + 0) / 3),
        ("token-sum", None, 1 + 2 + 4),
        ("seq-mean-token-sum-norm", None, (1 + 2 + 4) / (3 * 3)),  # L = T = 3 (veRL's default)
        ("seq-mean-token-sum-norm", 10, (1 + 2 + 4) / (3 * 10)),  # L fixed (Dr. GRPO MAX_TOKENS)
    ],
)
def test_aggregate_by_hand_on_a_ragged_mask(agg, norm_length, expected):
    padded = RAGGED.masked_fill(RAGGED_MASK == 0, float("inf"))  # non-finite padding must not leak
    assert_close(M.aggregate(padded, RAGGED_MASK, agg, norm_length), expected)


def test_seq_mean_token_sum_norm_is_trls_dr_grpo_formula_and_independent_of_padding_width():
    g = torch.Generator().manual_seed(2)
    loss = torch.randn(4, 5, generator=g, dtype=torch.float64)
    mask = prefix_mask([5, 3, 1, 4], 5)
    L = 8
    trl = (loss * mask).sum() / (loss.size(0) * L)  # TRL 1.12 GRPOTrainer loss_type="dr_grpo"
    assert_close(M.aggregate(loss, mask, "seq-mean-token-sum-norm", L), trl)
    wider = torch.cat([loss, torch.full((4, 3), 7.0, dtype=torch.float64)], 1)
    wmask = torch.cat([mask, torch.zeros(4, 3, dtype=torch.float64)], 1)
    assert_close(M.aggregate(wider, wmask, "seq-mean-token-sum-norm", L), trl)  # fixed L: padding irrelevant
    assert_close(M.aggregate(wider, wmask, "token-sum"), (loss * mask).sum())
    with pytest.raises(ValueError, match="norm_length"):
        M.aggregate(loss, mask, "seq-mean-token-sum-norm", 0)


@pytest.mark.parametrize("agg", ["token-sum", "seq-mean-token-sum-norm"])
def test_new_aggs_in_the_policy_and_value_losses(agg):
    # on-policy (r = 1): the policy loss is agg(-A); the value loss 0.5 agg((V - R)^2)
    old = t([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    adv = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = t([[1, 1, 0], [1, 0, 0]])
    loss, _ = M.policy_loss(old.clone(), old, adv, mask, 0.2, agg, norm_length=4)
    total = -(1 + 2 + 4)
    assert_close(loss, total if agg == "token-sum" else total / (2 * 4))
    vl, _ = M.value_loss(adv, adv, adv - 1.0, mask, None, agg, norm_length=4)
    assert_close(vl, 0.5 * (3 if agg == "token-sum" else 3 / (2 * 4)))


def test_unknown_agg_is_refused():
    with pytest.raises(ValueError, match="loss aggregation"):
        M.aggregate(RAGGED, RAGGED_MASK, "token-max")


# --------------------------------------------------------------------------- straight-through KL


@pytest.mark.parametrize("plus, base", [("k3+", "k3"), ("k1+", "k1")])
def test_straight_through_kl_has_the_base_value_and_k2s_gradient(plus, base):
    lp0 = t([[-1.0, -0.2, -3.0], [-0.5, -2.5, -1.2]])
    ref = t([[-1.3, -0.9, -1.0], [-0.5, -2.0, -2.2]])
    grads = {}
    for est in (plus, base, "k2"):
        lp = lp0.clone().requires_grad_()
        value = M.kl_penalty(lp, ref, est)
        (value * t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])).sum().backward()
        grads[est] = (value.detach(), lp.grad)
    assert torch.equal(grads[plus][0], grads[base][0])  # the value of k1 / k3, exactly
    assert torch.equal(grads[plus][1], grads["k2"][1])  # the gradient of k2, exactly
    # k2's gradient by hand: d/dlogp 0.5 (logp - ref)^2 = logp - ref, times the weights
    assert_close(grads[plus][1], (lp0 - ref) * t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    assert not torch.allclose(grads[base][1], grads["k2"][1])  # discriminating


def test_k3_value_by_hand_and_unknown_estimator():
    lp, ref = t([[0.0]]), t([[math.log(2.0)]])  # ref/pi = 2: k3 = 2 - 1 - log 2
    assert_close(M.kl_penalty(lp, ref, "k3+"), t([[1.0 - math.log(2.0)]]))
    with pytest.raises(ValueError, match="KL estimator"):
        M.kl_penalty(lp, ref, "k2+")


# --------------------------------------------------------------------------- REINFORCE++ baselines


def test_reinforce_pp_is_global_batch_normalisation_by_hand():
    R = t([1.0, 2.0, 3.0, 6.0])
    # mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5
    assert_close(E.sequence_advantages(R, "reinforce_pp_seq"), (R - 3.0) / math.sqrt(3.5))
    # token-count weights (OpenRLHF normalises over tokens): w = 2, 1, 1, 0
    # mu = (2 + 2 + 3) / 4 = 1.75; var = (2 * 0.75^2 + 0.25^2 + 1.25^2) / 4 = 0.6875
    A = E.sequence_advantages(R, "reinforce_pp_seq", weights=t([2.0, 1.0, 1.0, 0.0]))
    assert_close(A, (R - 1.75) / math.sqrt(0.6875))


def test_reinforce_pp_baseline_subtracts_the_group_mean_then_renormalises_by_hand():
    R = t([1.0, 3.0, 2.0, 6.0])  # groups of 2: means 2 and 4 -> x = -1, 1, -2, 2
    # unweighted: mean 0, biased var (1 + 1 + 4 + 4) / 4 = 2.5
    assert_close(E.sequence_advantages(R, "reinforce_pp_baseline_seq", 2), t([-1.0, 1.0, -2.0, 2.0]) / math.sqrt(2.5))
    # weights 1, 1, 1, 3 re-centre it: mu = (-1 + 1 - 2 + 6) / 6 = 2/3; var = 138 / 54
    A = E.sequence_advantages(R, "reinforce_pp_baseline_seq", 2, weights=t([1.0, 1.0, 1.0, 3.0]))
    assert_close(A, (t([-1.0, 1.0, -2.0, 2.0]) - 2 / 3) / math.sqrt(138 / 54))
    with pytest.raises(ValueError, match="group_size >= 2"):
        E.sequence_advantages(R, "reinforce_pp_baseline_seq", 1)


def test_reinforce_pp_on_constant_returns_is_zero_and_finite():
    A = E.sequence_advantages(t([2.0, 2.0, 2.0, 2.0]), "reinforce_pp_seq")
    assert torch.equal(A, torch.zeros(4, dtype=torch.float64))


def test_group_mean_is_dr_grpo_without_std_division():
    R = t([1.0, 3.0, 2.0, 10.0])
    assert_close(E.sequence_advantages(R, "group_mean", 2), t([-1.0, 1.0, -4.0, 4.0]))
