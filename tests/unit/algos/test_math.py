"""Unit tests for harness/algos/math.py: hand-computed tensors, independent routes
(naive loops, numpy, TRL's own helpers), masked vs unmasked, and autograd checks."""

from __future__ import annotations

import ast
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from harness.algos.math import (
    aggregate,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_penalty,
    masked_mean,
    masked_var,
    masked_whiten,
    missing_eos_score,
    policy_loss,
    scale_whiten,
    sequence_return,
    sequence_value_targets,
    token_rewards,
    value_loss,
)

AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def prefix_mask(lengths, T):
    """(B, T) float mask with ones on the first lengths[b] columns of row b."""
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).double()


# --------------------------------------------------------------------------- masked statistics


def test_masked_mean_by_hand():
    x = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = t([[1, 1, 0], [1, 0, 0]])
    assert_close(masked_mean(x, m), t(7.0 / 3.0))  # (1 + 2 + 4) / 3
    assert_close(masked_mean(x, m, dim=1), t([1.5, 4.0]))
    # column 2 has no masked element: 0 there, not NaN
    assert_close(masked_mean(x, m, dim=0), t([2.5, 2.0, 0.0]))
    assert_close(masked_mean(x, m.bool()), t(7.0 / 3.0))  # bool masks work too


def test_masked_mean_empty_mask_and_nonfinite_padding_are_safe():
    x = t([[1.0, float("inf")], [float("nan"), 2.0]], dtype=torch.float32).requires_grad_()
    m = t([[1, 0], [0, 1]], dtype=torch.float32)
    out = masked_mean(x, m)
    assert_close(out, torch.tensor(1.5))  # the inf / nan sit on padding
    out.backward()
    assert torch.isfinite(x.grad).all()
    assert_close(x.grad, torch.tensor([[0.5, 0.0], [0.0, 0.5]]))

    y = torch.ones(2, 3, requires_grad=True)
    empty = masked_mean(y, torch.zeros(2, 3))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.isfinite(y.grad).all()


def test_masked_var_by_hand_and_errors():
    x = t([1.0, 2.0, 3.0, 4.0])
    m = t([1, 1, 1, 0])
    # mean 2; squared deviations 1, 0, 1 -> biased 2/3, unbiased 2/2 = 1
    assert_close(masked_var(x, m, unbiased=False), t(2.0 / 3.0))
    assert_close(masked_var(x, m), t(1.0))
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, t([0, 1, 0, 0]))
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, torch.zeros(4))
    assert masked_var(x, torch.zeros(4), unbiased=False).item() == 0.0


def test_masked_whiten_by_hand():
    x = t([2.0, 4.0, 6.0, 100.0])
    m = t([1, 1, 1, 0])
    # mean 4, unbiased var (4 + 0 + 4) / 2 = 4 -> std 2; the masked 100 is mapped too (TRL semantics)
    s = 1.0 / math.sqrt(4.0 + 1e-8)
    assert_close(masked_whiten(x, m), t([-2 * s, 0.0, 2 * s, 96 * s]))
    assert_close(masked_whiten(x, m, shift_mean=False), t([4 - 2 * s, 4.0, 4 + 2 * s, 4 + 96 * s]))
    # whitened valid entries have mean 0 and unbiased variance 1
    w = masked_whiten(x, m)
    assert abs(masked_mean(w, m).item()) < 1e-12
    assert_close(masked_var(w, m), t(1.0), atol=1e-6, rtol=0)


def test_masked_whiten_matches_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3 + 1
    m = prefix_mask([7, 3, 1, 5, 2], 7)
    xn, mn = x.numpy(), m.numpy().astype(bool)
    mean, var = xn[mn].mean(), xn[mn].var(ddof=1)
    expected = (xn - mean) / np.sqrt(var + 1e-8)
    assert_close(masked_whiten(x, m), torch.from_numpy(expected))
    assert_close(masked_whiten(x, m, shift_mean=False), torch.from_numpy(expected + mean))
    assert_close(masked_var(x, m), torch.tensor(var, dtype=torch.float64))
    assert_close(masked_var(x, m, unbiased=False), torch.tensor(xn[mn].var(ddof=0), dtype=torch.float64))


def _trl_masked_helpers():
    """TRL's own masked_mean / masked_var / masked_whiten (trl/experimental/ppo/ppo_trainer.py).

    Importing that module pulls in transformers (~5 s), so the three function
    definitions are taken verbatim from the installed file and executed with torch.
    Falls back to the real import if the file layout changes.
    """
    names = {"masked_mean", "masked_var", "masked_whiten"}
    spec = importlib.util.find_spec("trl")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "experimental" / "ppo" / "ppo_trainer.py"
        if path.exists():
            tree = ast.parse(path.read_text())
            defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
            if {d.name for d in defs} == names:
                ns = {"torch": torch}
                exec(compile(ast.Module(body=defs, type_ignores=[]), str(path), "exec"), ns)
                return ns
    mod = pytest.importorskip("trl.experimental.ppo.ppo_trainer")
    return {n: getattr(mod, n) for n in names}


def test_masked_helpers_match_trl():
    trl = _trl_masked_helpers()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 9, generator=g) * 2 - 0.5
    m = prefix_mask([9, 4, 1, 7, 2, 6], 9).float()
    assert_close(masked_mean(x, m), trl["masked_mean"](x, m))
    assert_close(masked_mean(x, m, dim=1), trl["masked_mean"](x, m, 1))
    assert_close(masked_mean(x, m, dim=0), trl["masked_mean"](x, m, 0))
    for unbiased in (True, False):
        assert_close(masked_var(x, m, unbiased), trl["masked_var"](x, m, unbiased))
    for shift in (True, False):
        # full tensors, padded positions included: same semantics there as TRL
        assert_close(masked_whiten(x, m, shift), trl["masked_whiten"](x, m, shift))


# --------------------------------------------------------------------------- KL estimators


def test_kl_estimators_by_hand():
    logp = t([-1.0, -2.0, -0.5])
    ref = t([-2.0, -1.0, -0.5])
    assert_close(kl_penalty(logp, ref, "k1"), t([1.0, -1.0, 0.0]))
    assert_close(kl_penalty(logp, ref, "k2"), t([0.5, 0.5, 0.0]))
    # k3 = exp(ref - logp) - 1 - (ref - logp): d = -1 -> e^-1; d = +1 -> e - 2
    assert_close(kl_penalty(logp, ref, "k3"), t([0.36787944117144233, 0.7182818284590451, 0.0]))


def test_kl_estimator_signs_on_random_tokens():
    g = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.float64):
        logp = -torch.rand(64, 33, generator=g).to(dtype) * 5
        ref = -torch.rand(64, 33, generator=g).to(dtype) * 5
        ref[0, :5] = logp[0, :5] + torch.tensor([1e-7, -1e-7, 1e-4, -1e-4, 0.0], dtype=dtype)  # near 0
        k1, k2, k3 = (kl_penalty(logp, ref, e) for e in ("k1", "k2", "k3"))
        assert (k1 < 0).any() and (k1 > 0).any()  # k1 is unbiased but not pointwise >= 0
        assert (k2 >= 0).all()
        assert (k3 >= 0).all()
        assert k1.shape == k2.shape == k3.shape == (64, 33)


def test_k1_and_k3_are_unbiased_for_the_true_kl():
    # exact expectation over a categorical: E_{x~p}[k] = sum_x p(x) k(x) must equal KL(p || q)
    p = t([0.1, 0.2, 0.3, 0.4])
    q = t([0.25, 0.25, 0.4, 0.1])
    true_kl = (p * (p / q).log()).sum()
    for est in ("k1", "k3"):
        assert_close((p * kl_penalty(p.log(), q.log(), est)).sum(), true_kl)
    k2 = (p * kl_penalty(p.log(), q.log(), "k2")).sum()
    assert not torch.isclose(k2, true_kl)  # k2 is biased


def test_kl_unknown_estimator():
    with pytest.raises(ValueError, match="'k4'"):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), "k4")


# --------------------------------------------------------------------------- scores, rewards, returns


def test_missing_eos_score_replaces_not_subtracts():
    scores, has_eos = t([0.5, -2.0, 3.0]), torch.tensor([True, False, False])
    assert_close(missing_eos_score(scores, has_eos, -1.0), t([0.5, -1.0, -1.0]))  # TRL's s - p: -3.0, 2.0
    assert missing_eos_score(scores, has_eos, None) is scores
    # broadcast: one flag per row over (B, L, 1) scores (the TRL baseline's reward head)
    per_pos = t([[[1.0], [2.0]], [[3.0], [4.0]]])
    out = missing_eos_score(per_pos, torch.tensor([False, True])[:, None, None], 0.0)
    assert_close(out, t([[[0.0], [0.0]], [[3.0], [4.0]]]))


def test_token_rewards_by_hand():
    # row 0: 3 tokens (EOS at t=2); row 1: no EOS, all 4; row 2: empty mask -> score at t=0
    mask = prefix_mask([3, 4, 0], 4)
    kl = t([[0.1, 0.2, 0.3, 9.0], [0.4, -0.1, 0.0, 0.2], [7.0, 7.0, 7.0, 7.0]]) * mask
    r = token_rewards(kl, t([1.0, 2.0, 3.0]), mask, beta=0.5)
    assert_close(r, t([[-0.05, -0.1, -0.15 + 1.0, 0.0], [-0.2, 0.05, 0.0, -0.1 + 2.0], [3.0, 0.0, 0.0, 0.0]]))
    assert kl[0, 3] == 0 and r.data_ptr() != kl.data_ptr()  # kl is not written to
    # beta 0 (KL in the loss, or no penalty): only the score, on the last real token
    assert_close(token_rewards(kl, t([1.0, 2.0, 3.0]), mask, 0.0).sum(1), t([1.0, 2.0, 3.0]))


def test_sequence_return_by_hand():
    mask = prefix_mask([2, 3], 3)
    kl = t([[0.5, 1.5, 4.0], [0.2, 0.2, 0.6]]) * mask  # sums 2.0 and 1.0
    assert_close(sequence_return(t([1.0, 3.0]), kl, 0.1), t([1.0 - 0.2, 3.0 - 0.1]))
    assert_close(sequence_return(t([1.0, 3.0]), kl, 0.0), t([1.0, 3.0]))


def test_sequence_value_targets_are_r_at_the_prompt_state_only():
    mask = prefix_mask([2, 3], 4)
    targets, vmask = sequence_value_targets(t([1.5, -2.0]), mask)
    assert_close(targets, t([[1.5, 1.5, 0.0, 0.0], [-2.0, -2.0, -2.0, 0.0]]))
    assert_close(vmask, t([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    # the value loss on that mask: V at t = 0 against R, nothing else
    v = t([[1.0, 9.0, 9.0, 9.0], [0.0, 9.0, 9.0, 9.0]])
    loss, _ = value_loss(v, v, targets, vmask, None, "token-mean")
    assert_close(loss, t(0.5 * ((1.0 - 1.5) ** 2 + (0.0 + 2.0) ** 2) / 2))


def test_scale_whiten_scales_without_centring():
    a = t([1.0, 2.0, 3.0, 6.0])  # mean 3, unbiased var (4 + 1 + 0 + 9) / 3 = 14/3
    s = math.sqrt(14.0 / 3.0) + 1e-8
    out = scale_whiten(a)
    assert_close(out, a / s)
    assert float(out.mean()) == pytest.approx(3.0 / s)  # the mean is kept (not 0)
    assert torch.isfinite(scale_whiten(t([2.0, 2.0]))).all()  # constant: / 1e-8, finite


# --------------------------------------------------------------------------- GAE


def test_gae_by_hand():
    gamma, lam = 0.5, 0.5  # gamma * lam = 0.25
    rewards = t([[1.0, 0.0, 2.0], [0.0, 3.0, 9.0]])
    values = t([[0.5, 1.0, 1.0], [2.0, 1.0, 7.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])  # row 1: r=9, V=7 at t=2 are padding and must not count
    # row 0: t=2 delta = 2 + 0 - 1 = 1                       A2 = 1
    #        t=1 delta = 0 + .5*1 - 1 = -.5                  A1 = -.5 + .25*1 = -.25
    #        t=0 delta = 1 + .5*1 - .5 = 1                   A0 = 1 + .25*(-.25) = .9375
    # row 1: t=1 is the last real token -> V(s_2) = 0:
    #        t=1 delta = 3 + 0 - 1 = 2                       A1 = 2
    #        t=0 delta = 0 + .5*1 - 2 = -1.5                 A0 = -1.5 + .25*2 = -1
    adv, ret = gae(rewards, values, mask, gamma, lam)
    assert_close(adv, t([[0.9375, -0.25, 1.0], [-1.0, 2.0, 0.0]]))
    assert_close(ret, t([[1.4375, 0.75, 2.0], [1.0, 3.0, 0.0]]))  # A + V, 0 on padding


def test_gae_gamma_lam_one_is_reward_to_go_minus_value():
    rewards = t([[0.0, 0.0, 1.0, 5.0]])
    values = t([[0.2, 0.4, 0.6, 3.0]])
    mask = t([[1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    assert_close(ret, t([[1.0, 1.0, 1.0, 0.0]]))  # Monte Carlo return of the 3 real tokens
    assert_close(adv, t([[0.8, 0.6, 0.4, 0.0]]))


def _gae_reference(rewards, values, lengths, gamma, lam):
    """Naive per-row python loop over plain floats (the independent route)."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        L, last = lengths[b], 0.0
        for i in reversed(range(L)):
            next_v = values[b][i + 1] if i + 1 < L else 0.0
            delta = rewards[b][i] + gamma * next_v - values[b][i]
            last = delta + gamma * lam * last
            adv[b][i] = last
    ret = [[(adv[b][i] + values[b][i]) if i < lengths[b] else 0.0 for i in range(T)] for b in range(B)]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.0), (0.99, 1.0)])
def test_gae_loop_vs_vectorised(gamma, lam):
    g = torch.Generator().manual_seed(3)
    B, T = 8, 11
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, T + 1, (B,), generator=g).tolist()
    lengths[0], lengths[1] = 0, T  # always cover an empty and a full row
    adv, ret = gae(rewards, values, prefix_mask(lengths, T), gamma, lam)
    ref_adv, ref_ret = _gae_reference(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    assert_close(adv, t(ref_adv))
    assert_close(ret, t(ref_ret))


def test_gae_padded_batch_equals_unpadded_rows():
    g = torch.Generator().manual_seed(4)
    lengths, T = [5, 2, 7], 7
    rewards = torch.randn(3, T, generator=g, dtype=torch.float64)
    values = torch.randn(3, T, generator=g, dtype=torch.float64)
    mask = prefix_mask(lengths, T)
    adv, ret = gae(rewards, values, mask, 0.97, 0.9)
    # garbage on padding changes nothing
    noise = 1e3 * (1 - mask)
    adv2, ret2 = gae(rewards + noise, values - noise, mask, 0.97, 0.9)
    assert_close(adv, adv2)
    assert_close(ret, ret2)
    for b, L in enumerate(lengths):
        a_b, r_b = gae(rewards[b : b + 1, :L], values[b : b + 1, :L], torch.ones(1, L), 0.97, 0.9)
        assert_close(adv[b : b + 1, :L], a_b)
        assert_close(ret[b : b + 1, :L], r_b)
        assert (adv[b, L:] == 0).all() and (ret[b, L:] == 0).all()


# --------------------------------------------------------------------------- aggregation


def test_aggregate_by_hand():
    loss = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    assert_close(aggregate(loss, mask, "token-mean"), t(2.5))  # (1+2+3+4) / 4
    assert_close(aggregate(loss, mask, "seq-mean-token-mean"), t(3.0))  # (6/3 + 4/1) / 2
    assert_close(aggregate(loss, mask, "seq-mean-token-sum"), t(5.0))  # (6 + 4) / 2
    # an empty row counts as 0 in the seq-mean modes (divided by B = 2), never NaN
    empty_row = t([[1, 1, 1], [0, 0, 0]])
    assert_close(aggregate(loss, empty_row, "seq-mean-token-mean"), t(1.0))
    assert_close(aggregate(loss, empty_row, "seq-mean-token-sum"), t(3.0))
    with pytest.raises(ValueError, match="'token-max'"):  # token-sum is a mode of its own
        aggregate(loss, mask, "token-max")


def test_aggregate_padded_equals_unpadded():
    g = torch.Generator().manual_seed(6)
    lengths, T = [4, 1, 6, 3], 6
    loss = torch.randn(4, T, generator=g, dtype=torch.float64)
    mask = prefix_mask(lengths, T)
    padded = loss.masked_fill(mask == 0, float("inf"))  # non-finite padding must not leak
    rows = [loss[b : b + 1, :L] for b, L in enumerate(lengths)]
    flat = torch.cat(rows, dim=1)
    assert_close(aggregate(padded, mask, "token-mean"), aggregate(flat, torch.ones_like(flat), "token-mean"))
    for agg in ("seq-mean-token-mean", "seq-mean-token-sum"):
        per_row = torch.stack([aggregate(r, torch.ones_like(r), agg) for r in rows])
        assert_close(aggregate(padded, mask, agg), per_row.mean())


# --------------------------------------------------------------------------- policy loss


def _policy_case(dtype=torch.float64):
    # tokens: (A, ratio) = (+1, 1.5) (-1, 1.5) (+1, 0.5) (-1, 0.5) (+1, 1.1), then one padded token
    ratio = t([[1.5, 1.5, 0.5, 0.5, 1.1, 1.0]], dtype)
    adv = t([[1.0, -1.0, 1.0, -1.0, 1.0, 7.0]], dtype)
    mask = t([[1, 1, 1, 1, 1, 0]], dtype)
    old = t([[-1.0, -2.0, -0.5, -1.5, -3.0, -1.0]], dtype)
    logp = (old + ratio.log()).clone()
    logp[0, 5] = 1e4  # garbage padding: exp(1e4 - old) = inf must not poison loss or gradient
    return logp.requires_grad_(), old, adv, mask


def test_policy_loss_both_sides_of_the_clip():
    logp, old, adv, mask = _policy_case()
    loss, stats = policy_loss(logp, old, adv, mask, clip_eps=0.2, agg="token-mean")
    # per-token max(-A r, -A clip(r, .8, 1.2)):
    #   A=+1 r=1.5: max(-1.5, -1.2) = -1.2  clipped (no incentive to push r higher)
    #   A=-1 r=1.5: max( 1.5,  1.2) =  1.5  unclipped (pessimistic bound keeps the penalty)
    #   A=+1 r=0.5: max(-0.5, -0.8) = -0.5  unclipped
    #   A=-1 r=0.5: max( 0.5,  0.8) =  0.8  clipped
    #   A=+1 r=1.1: inside the clip range, -1.1
    assert_close(loss, t((-1.2 + 1.5 - 0.5 + 0.8 - 1.1) / 5))
    loss.backward()
    # d/dlogp of -A r = -A r where unclipped; exactly 0 where the clipped branch is active
    assert torch.isfinite(logp.grad).all()
    assert_close(logp.grad, t([[0.0, 1.5, -0.5, 0.0, -1.1, 0.0]]) / 5)
    assert_close(stats["clipfrac"], t(2 / 5))
    assert_close(stats["ratio_mean"], t((1.5 + 1.5 + 0.5 + 0.5 + 1.1) / 5))
    lr2 = 2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2 + math.log(1.1) ** 2
    assert_close(stats["approxkl"], t(0.5 * lr2 / 5))
    assert abs(stats["approxkl"].item() - 0.1298794) < 1e-6  # the same, written out
    assert all(not v.requires_grad for v in stats.values())


def test_policy_loss_on_policy_is_vanilla_policy_gradient():
    g = torch.Generator().manual_seed(7)
    old = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 3
    logp = old.clone().requires_grad_()
    adv_seq = t([[2.0], [-1.0], [0.5]])  # sequence-level advantages, broadcast over tokens
    mask = prefix_mask([5, 2, 4], 5)
    loss, stats = policy_loss(logp, old, adv_seq, mask, 0.2, "token-mean")
    n = mask.sum()
    assert_close(loss, -(adv_seq * mask).sum() / n)  # ratio = 1: L = -mean(A)
    loss.backward()
    assert_close(logp.grad, -adv_seq * mask / n)  # grad = -A / N on real tokens
    assert stats["clipfrac"].item() == 0.0 and stats["approxkl"].item() == 0.0
    loss2, _ = policy_loss(old.clone(), old, adv_seq.expand(3, 5), mask, 0.2, "token-mean")
    assert_close(loss.detach(), loss2)


@pytest.mark.parametrize("agg", AGGS)
def test_policy_loss_padded_equals_unpadded_rows(agg):
    g = torch.Generator().manual_seed(8)
    lengths, T = [3, 6, 1], 6
    old = -torch.rand(3, T, generator=g, dtype=torch.float64) * 2
    logp = old + 0.4 * torch.randn(3, T, generator=g, dtype=torch.float64)
    adv = torch.randn(3, T, generator=g, dtype=torch.float64)
    mask = prefix_mask(lengths, T)
    loss, _ = policy_loss(logp.masked_fill(mask == 0, 50.0), old, adv, mask, 0.2, agg)
    per_row = []
    for b, L in enumerate(lengths):
        row = (logp[b : b + 1, :L], old[b : b + 1, :L], adv[b : b + 1, :L], torch.ones(1, L))
        per_row.append(policy_loss(*row, clip_eps=0.2, agg=agg)[0])
    if agg == "token-mean":
        expected = sum(p * L for p, L in zip(per_row, lengths, strict=True)) / sum(lengths)
    else:
        expected = torch.stack(per_row).mean()
    assert_close(loss, expected)


# --------------------------------------------------------------------------- value loss


def test_value_loss_clipped_vs_unclipped():
    old = t([[0.0, 0.0, 0.0, 0.0]])
    returns = t([[1.0, 1.0, 0.3, 0.0]])
    mask = t([[1, 1, 1, 0]])
    # token 0: V=.5  unclipped (.5-1)^2=.25,  V_clipped=.2  (.2-1)^2=.64  -> .64 clipped branch
    # token 1: V=-.5 unclipped (-1.5)^2=2.25, V_clipped=-.2 (-1.2)^2=1.44 -> 2.25
    # token 2: V=.1  inside the clip, both (-.2)^2=.04
    # token 3: padding
    v = t([[0.5, -0.5, 0.1, 9.0]]).requires_grad_()
    loss, stats = value_loss(v, old, returns, mask, clip=0.2, agg="token-mean")
    assert_close(loss, t(0.5 * (0.64 + 2.25 + 0.04) / 3))
    loss.backward()
    # dL/dV = (V - R) / 3 on the unclipped branch, 0 where the clipped branch is active
    assert_close(v.grad, t([[0.0, -1.5, -0.2, 0.0]]) / 3)
    assert_close(stats["clipfrac"], t(1 / 3))
    assert_close(stats["value_mean"], t((0.5 - 0.5 + 0.1) / 3))

    v2 = v.detach().clone().requires_grad_()
    loss_u, stats_u = value_loss(v2, old, returns, mask, clip=None, agg="token-mean")
    assert_close(loss_u, t(0.5 * (0.25 + 2.25 + 0.04) / 3))
    loss_u.backward()
    assert_close(v2.grad, t([[-0.5, -1.5, -0.2, 0.0]]) / 3)
    assert stats_u["clipfrac"].item() == 0.0
    # a huge clip equals no clip
    assert_close(value_loss(v.detach(), old, returns, mask, 1e6, "token-mean")[0], loss_u.detach())
    with pytest.raises(ValueError):
        value_loss(v.detach(), old, returns, mask, -0.1, "token-mean")


@pytest.mark.parametrize("agg", AGGS)
def test_value_loss_aggregation_modes(agg):
    v = t([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    mask = t([[1, 1, 0], [1, 0, 0]])
    ret = torch.zeros(2, 3, dtype=torch.float64)
    loss, _ = value_loss(v, v, ret, mask, clip=None, agg=agg)
    # squared errors 1, 4 | 9 ; halved
    expected = {
        "token-mean": 0.5 * 14 / 3,  # all 3 tokens
        "seq-mean-token-mean": 0.5 * (2.5 + 9) / 2,  # row means 2.5 and 9
        "seq-mean-token-sum": 0.5 * 14 / 2,  # row sums 5 and 9
    }
    assert_close(loss, t(expected[agg]))


# --------------------------------------------------------------------------- diagnostics


def test_entropy_by_hand():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -float("inf"), -float("inf")]]])
    h = entropy_from_logits(logits)  # (1, 2, 4) -> (1, 2)
    # uniform over 4 -> ln 4; p = (1/4, 3/4) -> -(1/4 ln 1/4 + 3/4 ln 3/4)
    assert h.shape == (1, 2)
    assert_close(h, torch.tensor([[math.log(4.0), 0.5623351446188083]]))
    # -inf logits (masked vocabulary) give a finite gradient
    x = logits.clone().requires_grad_()
    entropy_from_logits(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_entropy_is_precise_for_large_logits():
    # float32 logits around 1e5 (ulp ~ 0.008): the unshifted lse - E[logits] would cancel two
    # numbers ~1e5 and lose ~1e-2; shifting by the max first keeps ~1e-6 precision.
    g = torch.Generator().manual_seed(10)
    logits = (torch.randn(4, 6, 9, generator=g, dtype=torch.float64) + 1e5).float()
    exact = torch.distributions.Categorical(logits=logits.double()).entropy()  # same inputs, float64
    assert_close(entropy_from_logits(logits).double(), exact, atol=1e-5, rtol=0)


def test_entropy_matches_categorical():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(3, 5, 17, generator=g, dtype=torch.float64) * 4
    expected = torch.distributions.Categorical(logits=logits).entropy()
    assert_close(entropy_from_logits(logits), expected)


def test_explained_variance_by_hand():
    r = t([[1.0, 2.0, 3.0, 4.0, 99.0]])
    mask = t([[1, 1, 1, 1, 0]])
    assert_close(explained_variance(r, r, mask), t(1.0))
    assert_close(explained_variance(torch.full_like(r, 7.0), r, mask), t(0.0))
    # residual (-1, 1, -1, 1): var 1; var(R) = 1.25 -> 1 - 1 / 1.25 = 0.2 (padding ignored)
    v = r + t([[1.0, -1.0, 1.0, -1.0, -50.0]])
    assert_close(explained_variance(v, r, mask), t(0.2))
    assert torch.isnan(explained_variance(r, torch.ones_like(r), mask))  # Var[R] = 0: undefined


# ---- KL in the loss: which gradient each estimator gives (exact expectation on a categorical)


def _expected_kl_loss_gradient(estimator: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """E_{a ~ pi}[grad_theta kl_estimator(a)] computed exactly over a 6-way categorical.

    As in the PPO loss, the tokens are on-policy samples (the sampling distribution is not
    differentiated): the gradient flows only through log pi(a) of the sampled token.
    Returns (expected gradient, grad KL(pi||ref), grad KL(ref||pi)), each (6,).
    """
    g = torch.Generator().manual_seed(7)
    theta = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.randn(6, generator=g, dtype=torch.float64), -1)
    logp = torch.log_softmax(theta, -1)
    pi = logp.exp().detach()
    per_token = kl_penalty(logp, ref_logp, estimator)  # (6,) the estimator at each possible token
    (expected,) = torch.autograd.grad((pi * per_token).sum(), theta, retain_graph=True)
    (fwd,) = torch.autograd.grad((logp.exp() * (logp - ref_logp)).sum(), theta, retain_graph=True)
    (rev,) = torch.autograd.grad((ref_logp.exp() * (ref_logp - logp)).sum(), theta)
    return expected, fwd, rev


def test_k1_in_the_loss_has_zero_expected_gradient():
    expected, fwd, _ = _expected_kl_loss_gradient("k1")
    assert fwd.abs().max() > 1e-2  # there is a KL to move
    assert_close(expected, torch.zeros_like(expected), atol=1e-12, rtol=0)


def test_k2_in_the_loss_is_the_gradient_of_the_forward_kl():
    expected, fwd, rev = _expected_kl_loss_gradient("k2")
    assert_close(expected, fwd)
    assert not torch.allclose(expected, rev)


def test_k3_in_the_loss_is_the_gradient_of_the_reverse_kl():
    expected, fwd, rev = _expected_kl_loss_gradient("k3")
    assert_close(expected, rev)
    assert not torch.allclose(expected, fwd)


def test_what_each_kl_placement_optimises_over_enumerated_two_token_sequences():
    """Over every two-token sequence of a small autoregressive categorical policy, exactly: k1 in the reward
    (policy gradient through the returns) is the gradient of the sequence KL that objective/kl reports;
    k2 in the loss is the per-token KL's gradient with prefixes held fixed, which is not (Tang and Munos
    2025). The README says so."""
    import itertools
    from pathlib import Path

    from harness.algos import math as M

    torch.manual_seed(0)
    V = 3
    l1, l2 = torch.randn(V, dtype=torch.float64, requires_grad=True), torch.randn(V, V, dtype=torch.float64, requires_grad=True)
    r1, r2 = torch.randn(V, dtype=torch.float64).log_softmax(-1), torch.randn(V, V, dtype=torch.float64).log_softmax(-1)
    lp1, lp2 = l1.log_softmax(-1), l2.log_softmax(-1)
    seqs = list(itertools.product(range(V), repeat=2))
    logp = torch.stack([torch.stack([lp1[a], lp2[a, b]]) for a, b in seqs])  # (S, 2) per-token log pi
    ref = torch.stack([torch.stack([r1[a], r2[a, b]]) for a, b in seqs])
    p = logp.sum(1).exp()  # (S,) sequence probabilities
    params = [l1, l2]

    def grad(x):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(x, params, retain_graph=True)])

    seq_kl = (p * (logp - ref).sum(1)).sum()
    g_seq = grad(seq_kl)
    w = p.detach()  # on-policy samples: the sampling distribution carries no gradient in a loss
    k1 = M.kl_penalty(logp, ref, "k1").detach().sum(1)  # reward: no gradient through the penalty's value
    g_reward_k1 = grad((w * logp.sum(1) * k1).sum())  # REINFORCE on -(-k1): the returns carry the whole KL
    assert torch.allclose(g_reward_k1, g_seq, atol=1e-12)
    g_loss_k2 = grad((w * M.kl_penalty(logp, ref, "k2").sum(1)).sum())
    # per-token KL at each prefix, prefixes held fixed: token 1's KL plus E_{a1}[KL(pi(.|a1) || ref(.|a1))]
    kl1 = (lp1.exp() * (lp1 - r1)).sum()
    kl2 = (lp1.exp().detach() * (lp2.exp() * (lp2 - r2)).sum(1)).sum()
    assert torch.allclose(g_loss_k2, grad(kl1 + kl2), atol=1e-12)
    assert (g_loss_k2 - g_seq).norm() > 0.05 * g_seq.norm()  # not the sequence KL's gradient
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    assert "the per-token KL's gradient, not the sequence KL's" in readme


def test_low_reward_length_by_hand():
    from harness.algos import math as M

    lengths = torch.tensor([3, 9, 5, 7, 4])
    gold = torch.tensor([0.2, 0.1, 0.9, 0.5, 0.6])  # mean 0.46: completions 0 and 1 are below it
    assert M.low_reward_length(lengths, gold) == pytest.approx(6.0)
    # right / wrong: the wrong ones, also when they are the majority (a median would miss them)
    assert M.low_reward_length(torch.tensor([2, 4, 6, 10]), torch.tensor([0.0, 0.0, 0.0, 1.0])) == pytest.approx(4.0)
    assert math.isnan(M.low_reward_length(lengths, torch.full((5,), 0.3)))  # every gold equal: nothing below
