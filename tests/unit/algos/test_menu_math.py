"""Hand-computed values of the 2025-26 menu's math: REINFORCE++ as published, the policy-loss modes, the rollout
corrections and DAPO's shaping. Each test names the mistake it catches."""

from __future__ import annotations

import math

import pytest
import torch

from harness.algos import dapo
from harness.algos import losses as L
from harness.algos import math as M
from harness.algos import offpolicy as O
from harness.algos.estimators import reinforce_pp, returns_to_go, sequence_advantages, token_normalise


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def close(a, b, tol=1e-9):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol,
                          rtol=0), (a, b)


# ---- REINFORCE++ -------------------------------------------------------------------------------------------------

SCORES, KL, ONES = t([1.0, 0.0]), t([[0.5, 0.0], [0.0, 0.0]]), torch.ones(2, 2, dtype=torch.float64)


def test_reinforce_pp_minimal_example_openrlhf_n_convention():
    """B = 2, T = 2, scores [1, 0], kl [[0.5, 0], [0, 0]], beta 1: returns-to-go [[0.5, 1], [0, 0]], mean 0.375,
    biased var 0.6875 / 4 = 0.171875 -> [[0.302, 1.508], [-0.905, -0.905]] (OpenRLHF reinforce). The sequence-level
    return (today's reinforce_pp, now reinforce_pp_seq) gives [[1, 1], [-1, -1]]: catches the whole-KL-sum mistake."""
    sd = math.sqrt(0.171875)
    expected = t([[0.125, 0.625], [-0.375, -0.375]]) / sd
    A = reinforce_pp(SCORES, KL, ONES, 1.0)
    close(A, expected)
    close(A, [[0.3015113, 1.5075567], [-0.9045340, -0.9045340]], 1e-6)
    seq = sequence_advantages(M.sequence_return(SCORES, KL, 1.0), "reinforce_pp_seq")
    close(seq, [1.0, -1.0])


def test_reinforce_pp_minimal_example_verl_n_minus_one_convention():
    """The same with veRL's unbiased variance (n - 1 = 3): 0.6875 / 3 -> [[0.261, 1.306], [-0.783, -0.783]];
    the ratio of the two conventions is sqrt(4 / 3) (catches a swapped convention)."""
    sd = math.sqrt(0.6875 / 3)
    A = reinforce_pp(SCORES, KL, ONES, 1.0, unbiased=True)
    close(A, t([[0.125, 0.625], [-0.375, -0.375]]) / sd, 1e-7)  # veRL adds 1e-8 to the variance
    close(A, [[0.2611165, 1.3055824], [-0.7833494, -0.7833494]], 1e-6)
    close(reinforce_pp(SCORES, KL, ONES, 1.0) / A, torch.full((2, 2), math.sqrt(4 / 3), dtype=torch.float64), 1e-7)


def test_reinforce_pp_baseline_subtracts_the_group_mean_of_the_raw_score_then_the_kl_return_to_go():
    """B = 4 in groups of 2, scores [1, 0, 3, 3], kl only on row 0 token 0 (0.5), beta 1, mask with row 3 of one
    token: s - group mean = [0.5, -0.5, 0, 0]; returns-to-go [[0, 0.5], [-0.5, -0.5], [0, 0], [0, -]] (row 0 token 0:
    0.5 - 0.5). Normalised over the 7 tokens, biased. Catches the KL entering before the group mean (OpenRLHF
    subtracts the mean of the raw score) and normalisation over padding."""
    scores = t([1.0, 0.0, 3.0, 3.0])
    kl = t([[0.5, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    mask = t([[1, 1], [1, 1], [1, 1], [1, 0]])
    G = [0.0, 0.5, -0.5, -0.5, 0.0, 0.0, 0.0]
    mu = sum(G) / 7
    sd = math.sqrt(sum((g - mu) ** 2 for g in G) / 7)
    exp = t([[G[0], G[1]], [G[2], G[3]], [G[4], G[5]], [G[6], 0.0]])
    exp = (exp - mu) / sd * mask
    close(reinforce_pp(scores, kl, mask, 1.0, group_size=2, baseline=True), exp, 1e-9)
    with pytest.raises(ValueError, match="group_size"):
        reinforce_pp(scores, kl, mask, 1.0, group_size=1, baseline=True)


def test_returns_to_go_and_token_normalise_by_hand():
    """gamma 0.5: r = [1, 2, 4] -> [1 + 1 + 1, 2 + 2, 4] = [3, 4, 4]; padding stays 0 and does not enter the sum.
    token_normalise of [1, 3] (+ a padded 100): mean 2, biased sd 1 -> [-1, 1, 0]."""
    close(returns_to_go(t([[1.0, 2.0, 4.0]]), torch.ones(1, 3, dtype=torch.float64), 0.5), [[3.0, 4.0, 4.0]])
    close(returns_to_go(t([[1.0, 2.0, 9.0]]), t([[1, 1, 0]])), [[3.0, 2.0, 0.0]])
    close(token_normalise(t([[1.0, 3.0, 100.0]]), t([[1, 1, 0]])), [[-1.0, 1.0, 0.0]])


# ---- policy-loss modes --------------------------------------------------------------------------------------------

LOGP0 = t([[-1.0, -2.0, -0.5]])
OLD = t([[-1.0, -1.0, -1.0]])
ADV = t([[1.0, -1.0, 2.0]])
MASK = t([[1.0, 1.0, 1.0]])
KW = {"clip_eps": 0.2, "agg": "token-mean"}


def _leaf():
    return LOGP0.clone().requires_grad_(True)


def test_vanilla_mode_is_math_policy_loss_bit_for_bit():
    lp = _leaf()
    a, sa = L.policy_loss(lp, OLD, ADV, MASK, mode="vanilla", **KW, clip_eps_high=0.3)
    b, sb = M.policy_loss(lp, OLD, ADV, MASK, 0.2, "token-mean", clip_eps_high=0.3)
    assert float(a.detach()) == float(b.detach()) and sa.keys() == sb.keys()


def test_cispo_value_and_gradient_by_hand():
    """r = [1, e^-1, e^0.5] -> sg-clipped w = [1, 0.8, 1.2]; l = -w A logp = [1, -1.6, 1.2] / 3 (token-mean);
    d l / d logp = -w A / 3 = [-1/3, 0.8/3, -2.4/3]: every token keeps a gradient (PPO's clip would zero tokens 2
    and 3 here). Catches a ratio gradient (the clipped weight not detached) and a clip on A's sign."""
    lp = _leaf()
    loss, st = L.policy_loss(lp, OLD, ADV, MASK, mode="cispo", **KW)
    close(loss, (1.0 - 1.6 + 1.2) / 3)
    loss.backward()
    close(lp.grad, t([[-1.0, 0.8, -2.4]]) / 3)
    close(st["clipfrac"], 2 / 3)
    close(st["clipfrac_low"], 1 / 3)
    lp2 = _leaf()
    ppo, _ = M.policy_loss(lp2, OLD, ADV, MASK, 0.2, "token-mean")
    ppo.backward()
    close(lp2.grad[0, 1:], [0.0, 0.0])  # the contrast: PPO's clip cuts them


def test_geo_mean_value_by_hand():
    """log r = [-1, 0.8, 0.5], A = [1, -1, 2], eps 0.4 (log space). Sign-aware clip (PPO's pessimism per token):
    A > 0 takes min(lr, clip(lr)), A < 0 takes max(lr, clip(lr)): c = [-1, 0.8, 0.4] (sum 0.2); rho =
    exp(0.2 / 3); A_seq = 2 / 3; loss = -(2 / 3) exp(0.2 / 3). A plain clamp gives [-0.4, 0.4, 0.4] (sum 0.4) and the
    arithmetic mean of the ratios another value: both caught."""
    lr = t([[-1.0, 0.8, 0.5]])
    lp = _leaf()
    loss, st = L.policy_loss(lp, LOGP0 - lr, ADV, MASK, mode="geo_mean", clip_eps=0.4, agg="seq-mean-token-mean")
    close(loss, -(2 / 3) * math.exp(0.2 / 3))
    close(st["ratio_mean"], math.exp(0.2 / 3))
    # veRL's counts: log ratio outside [-eps, eps_high], split by A's sign (tokens 1 and 3 have A > 0)
    close(st["clipfrac_high"], 2 / 3)
    close(st["clipfrac_low"], 1 / 3)


def test_sapo_value_and_gradient_by_hand():
    """f(r) = sigmoid(tau (r - 1)) 4 / tau, tau = 1 (A > 0) / 1.05 (A <= 0); l = -f(r) A; at r = 1 the gradient
    d l / d logp = -A f'(1) r = -A (tau sigmoid' 4 / tau = 1): PPO's. Catches swapped temperatures."""
    lp = OLD.clone().requires_grad_(True)  # r = 1 everywhere
    loss, _ = L.policy_loss(lp, OLD, ADV, MASK, mode="sapo", **KW)
    f = [2.0, 2.0 / 1.05, 2.0]
    close(loss, -(f[0] * 1 - f[1] * 1 + f[2] * 2) / 3)
    loss.backward()
    close(lp.grad, -ADV / 3)
    lp = _leaf()
    loss, _ = L.policy_loss(lp, OLD, ADV, MASK, mode="sapo", **KW, sapo_tau_pos=2.0, sapo_tau_neg=3.0)

    def g(r, tau):
        return 4.0 / tau / (1.0 + math.exp(-tau * (r - 1.0)))

    close(loss, -(g(1.0, 2.0) * 1 - g(math.exp(-1), 3.0) + g(math.exp(0.5), 2.0) * 2) / 3)


def test_clip_cov_cuts_the_gradient_of_a_covariance_selected_unclipped_token():
    """4 tokens at r = 1 (none clipped), A = [2, -2, 0, 0], logp = [-1, -3, -2, -2]: cov = (A - 0)(logp + 2) =
    [2, 2, 0, 0]; with lb 1, ub 5 the candidates are tokens 0 and 1, cov_ratio 0.25 picks one of 4: its gradient is
    0, the other tokens keep -A / 4. Catches a selection outside [lb, ub] and a cut that leaves the gradient."""
    lp = t([[-1.0, -3.0, -2.0, -2.0]]).requires_grad_(True)
    old = lp.detach().clone()
    adv, mask = t([[2.0, -2.0, 0.0, 0.0]]), torch.ones(1, 4, dtype=torch.float64)
    loss, st = L.policy_loss(lp, old, adv, mask, mode="clip_cov", **KW, cov_ratio=0.25,
                             generator=torch.Generator().manual_seed(0))
    loss.backward()
    g = lp.grad[0]
    cut = [i for i in range(2) if float(g[i]) == 0.0]
    assert len(cut) == 1, g
    keep = 1 - cut[0]
    close(g[keep], -adv[0, keep] / 4)
    close(st["cov_frac"], 0.25)
    lp.grad = None
    loss, st = L.policy_loss(lp, old, adv, mask, mode="clip_cov", **KW, cov_ratio=0.25, clip_cov_lb=3.0)
    loss.backward()
    close(lp.grad[0], -adv[0] / 4)  # no candidate in (3, 5): nothing cut
    close(st["cov_frac"], 0.0)


def test_kl_cov_penalises_the_top_covariance_token_with_abs_log_ratio():
    """r = [e^0.1, e^-0.2, 1, 1], A = [2, 1, 0, 0], logp = [-1, -2, -3, -3] (old = logp - [0.1, -0.2, 0, 0]):
    cov = (A - 0.75)(logp + 2.25) = [1.5625, -0.0625, 0.5625, 0.5625] -> token 0 (cov_ratio 0.25, one of 4);
    l = -A r + 1 * |log r| on token 0 only, token-mean. Catches the penalty on the wrong token or with the sign."""
    lr = t([[0.1, -0.2, 0.0, 0.0]])
    lp = t([[-1.0, -2.0, -3.0, -3.0]])
    adv, mask = t([[2.0, 1.0, 0.0, 0.0]]), torch.ones(1, 4, dtype=torch.float64)
    loss, st = L.policy_loss(lp, lp - lr, adv, mask, mode="kl_cov", **KW, cov_ratio=0.25)
    r = torch.exp(lr)[0]
    close(loss, (-2 * r[0] + 0.1 - r[1]) / 4)
    close(st["cov_frac"], 0.25)


def test_weights_multiply_each_tokens_loss_in_every_mode():
    """weights = [2, 0, 1]: the token-mean loss is that of the per-token losses times the weights (the
    rollout correction enters every mode the same way). Catches a mode that drops ``weights``."""
    w = t([[2.0, 0.0, 1.0]])
    for mode in ("vanilla", "cispo", "sapo", "kl_cov"):
        extra = {"cov_ratio": 0.01} if mode == "kl_cov" else {}
        per_tok = []
        for j in range(3):
            one = torch.zeros_like(MASK)
            one[0, j] = 1.0
            lj, _ = L.policy_loss(_leaf(), OLD, ADV, one, mode=mode, **KW, **extra)
            per_tok.append(float(lj))
        if mode == "kl_cov":  # the one penalised token differs with the mask: compare without the penalty
            extra = {"kl_cov_coef": 0.0, "cov_ratio": 0.01}
            per_tok = [float(L.policy_loss(_leaf(), OLD, ADV, torch.eye(3, dtype=torch.float64)[j:j + 1], mode=mode,
                                           **KW, **extra)[0]) for j in range(3)]
        lw, _ = L.policy_loss(_leaf(), OLD, ADV, MASK, mode=mode, **KW, **extra, weights=w)
        close(lw, (2 * per_tok[0] + per_tok[2]) / 3, 1e-12)


# ---- rollout corrections ------------------------------------------------------------------------------------------


def test_importance_ratio_token_and_sequence_by_hand():
    """old - mu = [[0.5, -1], [2, pad]]: token rho = [[e^0.5, e^-1], [e^2, 1]]; sequence rho = exp of the row sums
    [[e^-0.5, e^-0.5], [e^2, 1]]. Catches the ratio's direction (mu / pi_old) and padding in the sequence sum."""
    old, mu, mask = t([[0.0, -1.0], [1.0, 5.0]]), t([[-0.5, 0.0], [-1.0, 0.0]]), t([[1, 1], [1, 0]])
    close(O.importance_ratio(old, mu, mask, "token"), [[math.exp(0.5), math.exp(-1)], [math.exp(2), 1.0]])
    close(O.importance_ratio(old, mu, mask, "sequence"), [[math.exp(-0.5)] * 2, [math.exp(2), 1.0]])


def test_tis_mis_icepop_by_hand():
    """rho = [0.3, 1.0, 2.5, 6.0]: tis (high 2) -> w [0.3, 1, 2, 2], all kept; mis (high 2) -> [0.3, 1, -, -] kept
    0 and 1; mis with low 0.5 -> also drops 0.3; icepop (defaults [0.5, 5]) -> keeps 1.0 and 2.5 with w = rho."""
    rho = t([0.3, 1.0, 2.5, 6.0])
    w, keep = O.correct("tis", rho)
    close(w, [0.3, 1.0, 2.0, 2.0])
    assert keep.all()
    w, keep = O.correct("mis", rho)
    assert keep.tolist() == [True, True, False, False]
    close(w, [0.3, 1.0, 0.0, 0.0])
    _, keep = O.correct("mis", rho, low=0.5)
    assert keep.tolist() == [False, True, False, False]
    w, keep = O.correct("icepop", rho)
    assert keep.tolist() == [False, True, True, False]
    close(w, [0.0, 1.0, 2.5, 0.0])
    w, keep = O.correct("none", rho)
    close(w, [1.0] * 4)


def test_mismatch_metrics_by_hand():
    """old - mu = [0.5, -0.5, 0] (and a padded token): k1 = mean(mu - old) = 0; k3 = mean(e^d - 1 - d) =
    (e^0.5 - 1.5 + e^-0.5 - 0.5) / 3; tis at 1.2 truncates token 0 (rho e^0.5 = 1.65) -> 1/3."""
    old, mu, mask = t([[0.5, -0.5, 0.0, 9.0]]), t([[0.0, 0.0, 0.0, 0.0]]), t([[1, 1, 1, 0]])
    rho = O.importance_ratio(old, mu, mask, "token")
    w, keep = O.correct("tis", rho, high=1.2)
    m = O.mismatch_metrics(old, mu, mask, rho, w, keep, "tis")
    assert m["offpolicy/kl_k1"] == pytest.approx(0.0, abs=1e-12)
    assert m["offpolicy/kl_k3"] == pytest.approx((math.exp(0.5) - 1.5 + math.exp(-0.5) - 0.5) / 3)
    assert m["offpolicy/is_max"] == pytest.approx(math.exp(0.5))
    assert m["offpolicy/is_mean"] == pytest.approx((math.exp(0.5) + math.exp(-0.5) + 1) / 3)
    assert m["offpolicy/is_truncated_frac"] == pytest.approx(1 / 3)
    assert m["offpolicy/is_masked_frac"] == 0.0
    w, keep = O.correct("none", rho)
    assert O.mismatch_metrics(old, mu, mask, rho, w, keep, "none")["offpolicy/is_truncated_frac"] == 0.0


# ---- DAPO ---------------------------------------------------------------------------------------------------------


def test_overlong_penalty_by_hand():
    """L_max 10, buffer 4, factor 1: lengths [5, 6, 7, 10] -> [0, 0, -0.25, -1] (DAPO eq. 13: linear from 0 at
    L_max - L_cache = 6 to -factor at L_max). Catches an off-by-one start and a missing division by the buffer."""
    close(dapo.overlong_penalty(t([5, 6, 7, 10]), 10, 4, 1.0), [0.0, 0.0, -0.25, -1.0])
    close(dapo.overlong_penalty(t([8]), 10, 4, 0.5), [-0.25])


def test_informative_groups_by_hand():
    assert dapo.informative_groups(t([1, 1, 0, 1, 2, 2]), 2).tolist() == [False, True, False]
