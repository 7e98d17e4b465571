"""The 2025-26 menu's options through the REAL loop and update: ``harness.ppo.loop.ppo_iteration`` on the tiny
cached models. Spies wrap the functions the loop and update call (and call the originals), so what is checked is
what a real iteration computed, recomputed here by an independent route. Each test names the wrong wiring it
catches.

Keys covered: ppo.loss_mode (+ sapo_tau_pos / neg, cov_ratio, clip_cov_lb / ub, kl_cov_coef), advantage.baseline
reinforce_pp / reinforce_pp_baseline, rollout.staleness, rollout.correction (+ correction_level, is_threshold,
is_threshold_low), rollout.filter_groups (+ filter_rounds), train.overlong_buffer / overlong_penalty.
"""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import pytest
import torch

import harness.algos.math as M
import harness.algos.offpolicy as O
import harness.ppo.loop as TR
from harness.algos import losses as L
from harness.algos.estimators import BASELINES
from harness.config import build_config
from harness.lm.forward import policy_forward
from harness.lm.rollout import make_score_fn
from harness.ppo.loop import init_state, ppo_iteration
from harness.warmstart.load import load_models
from tests.conftest import TINY

MOVING = {"ppo.epochs": 2, "ppo.minibatches": 1, "ppo.lr": 3e-3, "train.missing_eos_penalty": None}
SEQ = {"advantage.level": "sequence", "advantage.baseline": "group_norm"}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _arange_score(ro):
    return torch.arange(ro.size, dtype=torch.float32) / 4.0


def _setup(over: dict):
    cfg = build_config(None, {**TINY, **over})
    m = load_models(cfg)
    return cfg, m, init_state(cfg, m)


def _run(over: dict, iterations: int = 1, score_fn=None, before=None):
    cfg, m, st = _setup(over)
    score = score_fn or make_score_fn(m.reward, m.task.gold)
    hist = []
    for _ in range(iterations):
        if before is not None:
            before(m)
        hist.append(ppo_iteration(cfg, m, st, score))
    st.close()
    return cfg, m, hist


def _spy_fn(monkeypatch, module, name: str) -> list[dict]:
    orig = getattr(module, name)
    calls: list[dict] = []

    def wrapper(*a, **kw):
        out = orig(*a, **kw)
        calls.append({"args": [x.detach().clone() if torch.is_tensor(x) else x for x in a],
                      "kwargs": {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kw.items()},
                      "out": out})
        return out

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _spy_baseline(monkeypatch, name: str) -> list[dict]:
    """The calls of ``BASELINES[name].fn``, the function the loop calls for advantage.baseline=name."""
    entry = BASELINES[name]
    holder = SimpleNamespace(fn=entry.fn)
    calls = _spy_fn(monkeypatch, holder, "fn")
    monkeypatch.setitem(BASELINES._entries, name, dataclasses.replace(entry, fn=holder.fn))
    return calls


def _spy_mode(monkeypatch, mode: str) -> list[dict]:
    entry = L.POLICY_LOSSES[mode]
    calls: list[dict] = []

    def fn(*a, **kw):
        out = entry.fn(*a, **kw)
        calls.append({"args": [x.detach().clone() for x in a], "kwargs": dict(kw), "loss": float(out[0].detach()),
                      "stats": out[1]})
        return out

    monkeypatch.setitem(L.POLICY_LOSSES._entries, mode, dataclasses.replace(entry, fn=fn))
    return calls


def _row_of(row: torch.Tensor, table: torch.Tensor) -> int:
    """The index of ``row`` in ``table`` (rows of the batch, found again after the minibatch shuffle)."""
    hits = [i for i in range(table.shape[0]) if torch.equal(table[i], row)]
    assert len(hits) >= 1
    return hits[0]


# ---- ppo.loss_mode -----------------------------------------------------------------------------------------------

MODES = {
    "cispo": {"ppo.clip_eps_high": 0.28},
    "geo_mean": {"loss.agg": "seq-mean-token-mean", "ppo.clip_eps": 0.4},
    "sapo": {"ppo.sapo_tau_pos": 2.0, "ppo.sapo_tau_neg": 3.0},
    "clip_cov": {"ppo.cov_ratio": 0.1, "ppo.clip_cov_lb": -50.0, "ppo.clip_cov_ub": 50.0},
    "kl_cov": {"ppo.cov_ratio": 0.1, "ppo.kl_cov_coef": 2.0},
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_loss_mode_reaches_every_optimiser_step_with_its_options(monkeypatch, mode):
    """ppo.loss_mode=X: every optimiser step calls X's registered function with the config's options (catches the
    update calling vanilla, or an option key not forwarded), the logged loss/policy_avg is the mean of the losses
    X returned (catches the loss computed and dropped), and the policy ends elsewhere than under vanilla."""
    calls = _spy_mode(monkeypatch, mode)
    over = {**MOVING, **SEQ, "ppo.loss_mode": mode, **MODES[mode]}
    cfg, m, hist = _run(over, score_fn=_arange_score)
    assert len(calls) == cfg.ppo.epochs * cfg.ppo.minibatches
    for key, value in MODES[mode].items():
        leaf = key.split(".")[1]
        if leaf in calls[0]["kwargs"]:
            assert all(c["kwargs"][leaf] == value for c in calls), leaf
    assert hist[0]["loss/policy_avg"] == pytest.approx(sum(c["loss"] for c in calls) / len(calls), rel=1e-6)
    if mode in ("clip_cov", "kl_cov"):
        assert hist[0]["policy/cov_frac"] > 0
    moved = sum(float(p.detach().double().sum()) for p in m.policy.parameters())
    monkeypatch.undo()
    _, m0, _ = _run({**MOVING, **SEQ, **({"loss.agg": "seq-mean-token-mean"} if mode == "geo_mean" else {})},
                    score_fn=_arange_score)
    assert moved != sum(float(p.detach().double().sum()) for p in m0.policy.parameters())


def test_cispo_loss_through_the_update_by_hand(monkeypatch):
    """The first CISPO step's loss recomputed from the tensors it was handed: -sg(clip(r, 0.8, 1.28)) A logp,
    token-mean over the mask (catches clip_eps_high not reaching it: with 1.2 the value differs once r moved)."""
    calls = _spy_mode(monkeypatch, "cispo")
    _run({**MOVING, **SEQ, "ppo.loss_mode": "cispo", "ppo.clip_eps_high": 0.28}, score_fn=_arange_score)
    for c in calls:
        lp, old, adv, mask = (x.double() for x in c["args"][:4])
        w = torch.exp(lp - old).clamp(0.8, 1.28)
        expected = float((-w * adv * lp * mask).sum() / mask.sum())
        assert c["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-7)


# ---- REINFORCE++ -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", ["reinforce_pp", "reinforce_pp_baseline"])
def test_reinforce_pp_advantages_reach_the_loss_as_published(monkeypatch, baseline):
    """advantage.baseline=reinforce_pp(_baseline) at kl.coef 0.5: the advantages the policy loss sees are, per token,
    s_i - 0.5 sum_{j >= t} k1_ij (s = score, minus the group mean for _baseline), normalised over the batch's tokens
    (biased variance), computed here by a Python loop over the rollout's own tensors. Catches the sequence-level
    variant (the whole KL sum on every token), the KL subtracted before the group mean, a missing normalisation."""
    ros = _spy_fn(monkeypatch, TR, "collect")
    pl = _spy_fn(monkeypatch, M, "policy_loss")
    over = {"advantage.level": "sequence", "advantage.baseline": baseline, "kl.coef": 0.5, "ppo.minibatches": 1,
            "train.missing_eos_penalty": None}
    _run(over, score_fn=_arange_score)
    ro = ros[0]["out"]
    B, T = ro.mask.shape
    s = ro.scores.double().tolist()
    if baseline == "reinforce_pp_baseline":
        s = [s[i] - (s[2 * (i // 2)] + s[2 * (i // 2) + 1]) / 2 for i in range(B)]
    kl = (ro.logprobs - ro.ref_logprobs).double() * ro.mask
    G = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        for t in range(T):
            G[i, t] = s[i] - 0.5 * float(kl[i, t:].sum())
    m = ro.mask.double()
    mu = float((G * m).sum() / m.sum())
    sd = float((((G - mu) ** 2) * m).sum() / m.sum()) ** 0.5
    expected = (G - mu) / sd * m
    adv, old = pl[0]["args"][2].double(), pl[0]["args"][1]
    for r in range(B):
        i = _row_of(old[r], ro.logprobs)
        assert torch.allclose(adv[r], expected[i], atol=1e-5), (r, adv[r], expected[i])


# ---- rollout.staleness and the correction ------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2])
def test_staleness_samples_with_the_policy_of_k_iterations_ago(monkeypatch, k):
    """rollout.staleness=k, 4 iterations with a fast-moving policy: iteration i's rollout logprobs are those of the
    policy as it was at the start of iteration max(1, i - k) (its training forward on the same tokens, to sampling
    rounding), and the update's pi_old is the current policy. Catches k ignored, an off-by-one, and pi_old left at
    the behaviour policy (then offpolicy/kl_k1 would read 0)."""
    snaps: list = []
    mm = _spy_fn(monkeypatch, O, "mismatch_metrics")
    ros = _spy_fn(monkeypatch, TR, "collect")
    cfg, m, hist = _run({**MOVING, "rollout.staleness": k, "ppo.lr_decay": False, "train.iterations": 4}, iterations=4,
                        score_fn=_arange_score,
                        before=lambda mod: snaps.append(copy.deepcopy(mod.policy).eval()))
    for i in range(4):
        ro, call = ros[i]["out"], mm[i]
        old, mu, mask = call["args"][:3]
        src = snaps[max(0, i - k)]
        with torch.no_grad():
            lp = policy_forward(src, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.mask, 1.0).logprobs
            now = policy_forward(snaps[i], ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.mask, 1.0).logprobs
        assert torch.allclose(mu * mask, lp * mask, atol=1e-4), i
        assert torch.allclose(old * mask, now * mask, atol=1e-5), i
        if i >= 1:  # the policy moved since its sampler's weights: a real gap
            other = snaps[max(0, i - k) + 1]  # one iteration newer than the right sampler
            with torch.no_grad():
                wrong = policy_forward(other, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.mask, 1.0).logprobs
            assert not torch.allclose(mu * mask, wrong * mask, atol=1e-3), i
            assert abs(hist[i]["offpolicy/kl_k1"]) > 1e-4


def test_mismatch_is_logged_at_staleness_0_and_is_small():
    """k = 0, no correction: offpolicy/* is logged every iteration (the sampling path vs the training forward), the
    weights stay within float rounding of 1, nothing is truncated or masked."""
    _, _, hist = _run({}, iterations=2)
    for h in hist:
        assert abs(h["offpolicy/kl_k1"]) < 1e-4 and 0 <= h["offpolicy/kl_k3"] < 1e-4
        assert abs(h["offpolicy/is_mean"] - 1) < 1e-3 and h["offpolicy/is_truncated_frac"] == 0.0
        assert h["offpolicy/is_masked_frac"] == 0.0


@pytest.mark.parametrize("correction, level", [("tis", "token"), ("tis", "sequence"), ("mis", "token"),
                                               ("mis", "sequence"), ("icepop", "token")])
def test_correction_weights_and_mask_reach_the_policy_loss(monkeypatch, correction, level):
    """staleness 1 and tight thresholds [0.98, 1.02]: the policy loss of every step gets, row
    for row, w = the correction of rho = exp(pi_old - pi_rollout) (token, or the row's sum at sequence level) as
    ``weights`` and its keep mask in ``mask``, recomputed here from the logged inputs. Catches weights not passed,
    the inverse ratio, the sequence level ignored, masked tokens left in the loss."""
    mm = _spy_fn(monkeypatch, O, "mismatch_metrics")
    pl = _spy_fn(monkeypatch, M, "policy_loss")
    lo, hi = 0.98, 1.02
    over = {**MOVING, "rollout.staleness": 1, "rollout.correction": correction, "rollout.correction_level": level,
            "rollout.is_threshold": hi, "rollout.is_threshold_low": lo, "ppo.lr_decay": False}
    _, _, hist = _run(over, iterations=3, score_fn=_arange_score)
    old, mu, mask = mm[-1]["args"][:3]
    d = (old - mu).double() * mask
    rho = torch.exp(d.sum(-1, keepdim=True).expand_as(d) if level == "sequence" else d)
    if correction == "tis":
        w, keep = rho.clamp(min=lo, max=hi), torch.ones_like(rho, dtype=torch.bool)
    else:
        keep = (rho <= hi) & (rho >= lo)
        w = torch.where(keep, rho, torch.zeros_like(rho))
    last = pl[-2:]  # iteration 3: ppo.epochs = 2 steps of one minibatch each
    changed = 0.0
    for c in last:
        got_w, got_mask, got_old = c["kwargs"]["weights"].double(), c["args"][3], c["args"][1]
        for r in range(got_old.shape[0]):
            i = _row_of(got_old[r], old)
            assert torch.allclose(got_w[r] * mask[i], (w[i] * mask[i]).to(got_w.dtype), atol=1e-6), (r, i)
            assert torch.equal(got_mask[r].bool(), (keep[i] & mask[i].bool())), (r, i)
        changed += float((rho != w).double().mul(mask).sum())
    assert changed > 0  # the thresholds bind: the check above discriminates
    frac = hist[-1]["offpolicy/is_truncated_frac"] + hist[-1]["offpolicy/is_masked_frac"]
    assert frac > 0


# ---- DAPO: dynamic sampling and the overlong punishment ----------------------------------------------------------


def _half_constant(ro):
    """Scores 0 on the first half of each drawn batch, i / 4 on the rest: groups in the first half have no variance."""
    s = torch.arange(ro.size, dtype=torch.float32) / 4.0
    s[: ro.size // 2] = 0.0
    return s


def test_filter_groups_refills_the_batch_with_informative_groups(monkeypatch):
    """B = 8, k = 2: draw 4 groups (2 flat), then 2 (1 flat), then 1 (informative): 7 groups drawn, 3 dropped ->
    rollout/filtered_frac 3/7, rollout/extra_gen_frac 3/4; every group the advantages see has two scores. Catches
    the filter off, the refill skipped, and the metrics counted over the kept batch."""
    adv = _spy_baseline(monkeypatch, SEQ["advantage.baseline"])
    _, _, hist = _run({"rollout.filter_groups": True, **SEQ, "train.missing_eos_penalty": None}, score_fn=_half_constant)
    assert hist[0]["rollout/filtered_frac"] == pytest.approx(3 / 7)
    assert hist[0]["rollout/extra_gen_frac"] == pytest.approx(3 / 4)
    R = adv[0]["args"][0].view(-1, 2)
    assert (R[:, 0] != R[:, 1]).all(), R


def test_filter_groups_tops_up_after_its_rounds():
    """Every score equal: no round finds an informative group; after rollout.filter_rounds = 2 extra rounds the batch
    is topped up with dropped groups (1 + 2 rounds x 4 groups drawn, all dropped: filtered 1, extra 2)."""
    _, _, hist = _run({"rollout.filter_groups": True, "rollout.filter_rounds": 2, **SEQ},
                      score_fn=lambda ro: torch.zeros(ro.size))
    assert hist[0]["rollout/filtered_frac"] == 1.0 and hist[0]["rollout/extra_gen_frac"] == 2.0


@pytest.mark.parametrize("buffer, penalty", [(3, 1.0), (4, 0.5)])
def test_overlong_penalty_is_added_to_the_score(monkeypatch, buffer, penalty):
    """Score 0 everywhere, response length 6: the returns the baseline sees are -penalty (L - (6 - buffer)) / buffer
    per completion, from its own length (catches the penalty not applied, applied at the wrong length)."""
    ret = _spy_fn(monkeypatch, M, "sequence_return")
    ros = _spy_fn(monkeypatch, TR, "collect")
    _run({"train.overlong_buffer": buffer, "train.overlong_penalty": penalty, **SEQ, "kl.coef": 0.0,
          "train.missing_eos_penalty": None}, score_fn=lambda ro: torch.zeros(ro.size))
    lengths = ros[0]["out"].mask.sum(1).tolist()
    expected = [-penalty * max(0.0, n - (6 - buffer)) / buffer for n in lengths]
    assert ret[0]["args"][0].tolist() == pytest.approx(expected)
    assert any(e != 0 for e in expected)
